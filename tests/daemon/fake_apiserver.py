"""A small fake Kubernetes API server: batch/v1 Jobs in namespaces, over real HTTP.

No kube-apiserver can run here, so the KubernetesBackend is tested against this, as kopf
tests its operators: every request is recorded (method, path, query, JSON body), Jobs are
created (409 on a duplicate name), read, listed (label selector, ``limit``/``continue``
pages) and deleted (404 when missing), and tests set a Job's status by hand. Errors can be
injected for the next requests.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

JOBS = re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs(?:/(?P<name>[^/]+))?$")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    received_at: float = field(default_factory=time.monotonic)


@dataclass
class FakeApiServer:
    jobs: dict[tuple[str, str], dict] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    # (status, headers) answered to the next requests instead of serving them.
    errors: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    # Deleted Jobs linger (being deleted) for this many further reads, like foreground deletion.
    linger_reads: int = 0

    def __post_init__(self):
        self.lock = threading.Lock()
        self._versions = itertools.count(1)
        self._lingering: dict[tuple[str, str], int] = {}
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle --

    def start(self) -> FakeApiServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                server._handle(self, "GET")

            def do_POST(self):
                server._handle(self, "POST")

            def do_DELETE(self):
                server._handle(self, "DELETE")

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- what tests do --

    def set_status(self, name: str, namespace: str = "assay", **status: Any) -> None:
        with self.lock:
            self.jobs[(namespace, name)]["status"] = status

    def finish(self, name: str, *, succeeded: bool, reason: str = "BackoffLimitExceeded", namespace: str = "assay"):
        now = _now()
        if succeeded:
            status = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now}]}
        else:
            status = {
                "failed": 1,
                "conditions": [
                    {"type": "Failed", "status": "True", "reason": reason, "message": "Job has failed", "lastTransitionTime": now}
                ],
            }
        self.set_status(name, namespace, startTime=now, completionTime=now if succeeded else None, **status)

    def names(self, namespace: str = "assay") -> list[str]:
        with self.lock:
            return sorted(name for ns, name in self.jobs if ns == namespace)

    def requests_for(self, method: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == method]

    # -- serving --

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(handler.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with self.lock:
            self.requests.append(Request(method, url.path, query, body))
            if self.errors:
                status, headers = self.errors.pop(0)
                return _reply(handler, status, _status_body(status, "Injected", "injected error"), headers)
            match = JOBS.match(url.path)
            if match is None:
                return _reply(handler, 404, _status_body(404, "NotFound", f"no route {url.path}"))
            ns, name = match["ns"], match["name"]
            if method == "POST" and name is None:
                return self._create(handler, ns, body)
            if method == "GET" and name is None:
                return self._list(handler, ns, query)
            if method == "GET":
                return self._read(handler, ns, name)
            if method == "DELETE" and name is not None:
                return self._delete(handler, ns, name)
            return _reply(handler, 405, _status_body(405, "MethodNotAllowed", method))

    def _create(self, handler, ns: str, job: dict) -> None:
        name = job["metadata"]["name"]
        if (ns, name) in self.jobs:
            return _reply(handler, 409, _status_body(409, "AlreadyExists", f'jobs.batch "{name}" already exists'))
        stored = copy.deepcopy(job)
        stored["metadata"].update(
            namespace=ns, uid=str(uuid.uuid4()), resourceVersion=str(next(self._versions)), creationTimestamp=_now()
        )
        stored["status"] = {}
        self.jobs[(ns, name)] = stored
        _reply(handler, 201, stored)

    def _read(self, handler, ns: str, name: str) -> None:
        key = (ns, name)
        if key in self._lingering:
            self._lingering[key] -= 1
            if self._lingering[key] < 0:
                del self._lingering[key]
                self.jobs.pop(key, None)
        if key not in self.jobs:
            return _reply(handler, 404, _status_body(404, "NotFound", f'jobs.batch "{name}" not found'))
        _reply(handler, 200, self.jobs[key])

    def _list(self, handler, ns: str, query: dict[str, str]) -> None:
        wanted = dict(part.split("=", 1) for part in query.get("labelSelector", "").split(",") if part)
        items = [
            job
            for (job_ns, _), job in sorted(self.jobs.items())
            if job_ns == ns and all(job["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(items)
        page = items[start : start + limit]
        more = start + limit < len(items)
        _reply(
            handler,
            200,
            {
                "apiVersion": "batch/v1",
                "kind": "JobList",
                "metadata": {"continue": str(start + limit) if more else None},
                "items": page,
            },
        )

    def _delete(self, handler, ns: str, name: str) -> None:
        key = (ns, name)
        if key not in self.jobs or key in self._lingering:
            return _reply(handler, 404, _status_body(404, "NotFound", f'jobs.batch "{name}" not found'))
        job = self.jobs[key]
        if self.linger_reads:
            job["metadata"]["deletionTimestamp"] = _now()
            self._lingering[key] = self.linger_reads
        else:
            del self.jobs[key]
        _reply(handler, 200, job)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status_body(code: int, reason: str, message: str) -> dict:
    return {"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": message, "reason": reason, "code": code}


def _reply(handler: BaseHTTPRequestHandler, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(data)
