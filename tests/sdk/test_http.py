"""The SDK's HTTP path against a real local HTTP server: retries, Retry-After, errors."""

from __future__ import annotations

import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from assay import config, packing
from assay.http import Http, ServerError, with_retries
from shared import errors


class Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next scripted (status, headers, body)."""

    script: list[tuple[int, dict, dict | None]] = []
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 — http.server's naming
        self.seen.append(self.headers.get("Authorization", ""))
        status, headers, body = self.script.pop(0)
        payload = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", **headers}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Scripted.seen = []
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "details": {"field": "x"}}}


def test_retries_503_and_429_honouring_retry_after_then_succeeds(server, monkeypatch):
    Scripted.script = [
        (503, {"Retry-After": "0.2"}, error("unavailable", "down")),
        (429, {"Retry-After": "0.1"}, error("rate_limited", "slow down")),
        (200, {}, {"ok": True}),
    ]
    slept: list[float] = []
    monkeypatch.setattr("assay.http.time.sleep", slept.append)
    http = Http(server, "assay_key")
    assert http.request("GET", "/v1/x") == {"ok": True}
    assert len(slept) == 2 and slept[0] >= 0.2 and slept[1] >= 0.1
    assert Scripted.seen == ["Bearer assay_key"] * 3


@pytest.mark.parametrize(
    "status,code,cls",
    [
        (400, "invalid_request", errors.InvalidRequest),
        (401, "unauthenticated", errors.Unauthenticated),
        (403, "forbidden", errors.Forbidden),
        (404, "not_found", errors.NotFound),
        (409, "conflict", errors.Conflict),
        (413, "too_large", errors.TooLarge),
        (422, "invalid", errors.Invalid),
        (500, "internal", ServerError),
    ],
)
def test_each_status_raises_its_error_class_keeping_the_servers_message(server, status, code, cls):
    Scripted.script = [(status, {"X-Request-Id": "req-1"}, error(code, "the server says why"))]
    with pytest.raises(cls) as info:
        Http(server, None).request("GET", "/v1/x")
    assert "the server says why" in info.value.message and "req-1" in info.value.message
    assert info.value.code == code and info.value.details == {"field": "x"}


def test_gives_up_after_max_attempts_with_the_last_error(server, monkeypatch):
    monkeypatch.setattr("assay.http.time.sleep", lambda s: None)
    Scripted.script = [(503, {}, error("unavailable", "still down"))] * 3
    with pytest.raises(errors.Unavailable, match="still down"):
        Http(server, None, max_attempts=3).request("GET", "/v1/x")


def test_connection_errors_are_retried_then_unavailable():
    calls = []

    def refuse():
        import requests

        calls.append(1)
        raise requests.ConnectionError("refused")

    with pytest.raises(errors.Unavailable):
        with_retries(refuse, max_attempts=3, sleep=lambda s: None)
    assert len(calls) == 3


def test_config_file_is_private_and_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ASSAY_CONFIG", str(tmp_path / "c" / "config.json"))
    monkeypatch.delenv("ASSAY_URL", raising=False)
    monkeypatch.delenv("ASSAY_API_KEY", raising=False)
    path = config.save("http://stored", "assay_stored")
    assert path.stat().st_mode & 0o777 == 0o600
    assert config.resolve(None, None) == ("http://stored", "assay_stored")
    monkeypatch.setenv("ASSAY_URL", "http://env")
    assert config.resolve(None, None) == ("http://env", "assay_stored")
    assert config.resolve("http://arg", "k")[0] == "http://arg"


def test_packing_zips_a_directory_without_links_and_detects_formats(tmp_path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "weights.safetensors").write_bytes(b"\0" * 10)
    (src / "link").symlink_to("/etc/passwd")
    archive = packing.pack_directory(src, into=tmp_path / "m.zip")
    assert sorted(zipfile.ZipFile(archive).namelist()) == ["config.json", "sub/weights.safetensors"]
    assert packing.dataset_format(archive) == "imagefolder-zip"
    assert packing.dataset_format(src) == "imagefolder-zip"
    (tmp_path / "d.parquet").write_bytes(b"PAR1....PAR1")
    assert packing.dataset_format(tmp_path / "d.parquet") == "parquet"
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(ValueError):
        packing.dataset_format(tmp_path / "junk.bin")
