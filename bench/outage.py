"""Outage: the API served by functions-framework (as deployed: one process, THREADS=20)
while Datastore is down, under 16 concurrent clients, each alternating a request that needs
Datastore (list models, get a model, order an evaluation, whoami) with a GET /v1/health.

Two outages, in turn: the Datastore emulator paused with SIGSTOP (connections open, calls
hang: a stalled backend) and then stopped (connections refused). Each is measured on two
API processes side by side, against the same emulator:

- budgeted: this code's defaults (one Datastore budget per request, ASSAY_API_DATASTORE_
  DEADLINE_S, cut to ASSAY_API_DATASTORE_REFUSED_S once the connection is refused);
- before: the behaviour this replaced, every call retrying the backend for 10 s
  (budget 10 s, no shortcut when refused).

Printed per outage and side: /v1/health p50/p99/max (aim: p99 < 100 ms), and for the other
requests the statuses, whether each 503 carried Retry-After, p50/max (aim: every one a 503
within the budget)

    .venv/bin/python bench/outage.py [--clients 16] [--seconds 15]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from api_latency import pct, ready_inputs  # noqa: E402

from devstack.emulators import Emulators, free_port  # noqa: E402
from shared.admin import create_account  # noqa: E402
from shared.pubsub import Hints  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import Storage  # noqa: E402
from shared.store import Store  # noqa: E402

SIDES = {
    "budgeted": {},  # the defaults in shared/settings.py
    "before": {"ASSAY_API_DATASTORE_DEADLINE_S": "10", "ASSAY_API_DATASTORE_REFUSED_S": "10"},
}


def start_api(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(log_path, "wb")
    api = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "functions-framework"),
            "--target=api",
            "--source=functions/main.py",
            "--host=127.0.0.1",
            f"--port={port}",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{base}/v1/ready", timeout=5).ok:
                return api, base
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or api.poll() is not None:
            raise RuntimeError(f"the API did not start; see {log_path}")
        time.sleep(0.2)


def load(port: int, key: str, model_id: str, dataset_id: str, clients: int, seconds: float) -> dict[str, list]:
    """``clients`` threads for ``seconds``, each alternating a Datastore request with a
    health check. Returns the health latencies and (status, has Retry-After, latency) of
    the others."""
    auth = {"Authorization": f"Bearer {key}"}
    work = [
        ("GET", "/v1/models", None),
        ("GET", f"/v1/models/{model_id}", None),
        # Each order a new evaluation (a label mapping of its own): orders of one evaluation
        # at once contend for its lock, which is another benchmark (bench/api_latency.py).
        ("POST", "/v1/evaluations", {"model_id": model_id, "dataset_id": dataset_id, "splits": ["test"]}),
        ("GET", "/v1/whoami", None),
    ]
    out: dict[str, list] = {"health": [], "other": []}
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(c: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        health, other = [], []
        i = c
        while time.monotonic() < stop_at:
            method, path, body = work[i % len(work)]
            if body is not None:
                body = {**body, "config": {"label_mapping": {f"c{c}": f"n{i}"}}}
            i += 1
            started = time.monotonic()
            if body is None:
                connection.request(method, path, headers=auth)
            else:
                connection.request(method, path, json.dumps(body), {**auth, "Content-Type": "application/json"})
            reply = connection.getresponse()
            body = reply.read()
            if reply.status >= 500 and not errors:
                errors.append(f"{method} {path}: {body[:300]!r}")
            other.append((reply.status, reply.getheader("Retry-After") is not None, time.monotonic() - started))
            started = time.monotonic()
            connection.request("GET", "/v1/health")
            reply = connection.getresponse()
            reply.read()
            assert reply.status == 200, reply.status
            health.append(time.monotonic() - started)
        with lock:
            out["health"] += health
            out["other"] += other

    def prober() -> None:
        """Health every 20 ms besides the clients' own: enough samples for a p99 while the
        clients wait out their budgets."""
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        probes = []
        while time.monotonic() < stop_at:
            started = time.monotonic()
            connection.request("GET", "/v1/health")
            reply = connection.getresponse()
            reply.read()
            assert reply.status == 200, reply.status
            probes.append(time.monotonic() - started)
            time.sleep(0.02)
        with lock:
            out["health"] += probes

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)] + [threading.Thread(target=prober)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["errors"] = errors
    return out


def report(outage: str, side: str, budget_s: float, got: dict[str, list]) -> dict[str, float]:
    health, other = got["health"], got["other"]
    statuses = collections.Counter(status for status, _, _ in other)
    unavailable = [(s, ra, t) for s, ra, t in other if s == 503]
    times = [t for _, _, t in other]
    ms = lambda s: f"{s * 1000:8.1f} ms"  # noqa: E731
    print(
        f"{outage:8} {side:9} health n={len(health):5} p50 {ms(pct(health, 0.5))} p99 {ms(pct(health, 0.99))} "
        f"max {ms(max(health))}"
    )
    print(
        f"{'':8} {'':9} others n={len(other):5} statuses {dict(statuses)}; 503s with Retry-After "
        f"{sum(ra for _, ra, _ in unavailable)}/{len(unavailable)}; p50 {ms(pct(times, 0.5))} max {ms(max(times))} "
        f"(budget {budget_s:g} s: {'every one within it' if max(times) <= budget_s + 0.25 else 'NOT within it'})"
    )
    return {"health_p99": pct(health, 0.99), "other_p50": pct(times, 0.5), "other_max": max(times), "throughput": len(other)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15, help="load per outage and side")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="assay-bench-outage-"))
    emulators = Emulators(state).start()
    apis: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        settings = Settings(
            project=emulators.project,
            bucket="assay-bench",
            hint_topic="bench-hints",
            datastore_emulator_host=emulators.datastore_host,
            pubsub_emulator_host=emulators.pubsub_host,
            storage_emulator_host=emulators.storage_host,
        )
        Storage.from_settings(settings).ensure_bucket()
        Hints(settings).ensure()
        store = Store.from_settings(settings)
        account, key = create_account(store, "bench")
        model_id, dataset_id = ready_inputs(store, account.id)
        base_env = {
            **os.environ,
            **emulators.env(),
            "ASSAY_BUCKET": "assay-bench",
            "ASSAY_HINT_TOPIC": "bench-hints",
            "ASSAY_API_LOG_LEVEL": "WARNING",
            "WORKERS": "1",
            "THREADS": os.environ.get("THREADS", "20"),
        }
        budgets = {}
        for side, extra in SIDES.items():
            apis[side] = start_api({**base_env, **extra}, state / f"api-{side}.log")
            budgets[side] = float(extra.get("ASSAY_API_DATASTORE_DEADLINE_S", Settings().api_datastore_deadline_s))
        ports = {side: int(base.rsplit(":", 1)[1]) for side, (_, base) in apis.items()}
        for side in SIDES:  # up and serving, keys cached, the emulator's JIT warmer
            got = load(ports[side], key, model_id, dataset_id, args.clients, 5)
            print(f"warm-up {side}: {dict(collections.Counter(s for s, _, _ in got['other']))} {got['errors'][:1]}")

        print(f"{args.clients} concurrent clients, {args.seconds:g} s per outage and side; API THREADS={base_env['THREADS']}")
        datastore = emulators.processes[0]
        figures: dict[tuple[str, str], dict[str, float]] = {}
        os.killpg(datastore.popen.pid, signal.SIGSTOP)
        try:
            for side in SIDES:
                got = load(ports[side], key, model_id, dataset_id, args.clients, args.seconds)
                figures["hangs", side] = report("hangs", side, budgets[side], got)
        finally:
            os.killpg(datastore.popen.pid, signal.SIGCONT)
        datastore.stop()
        for side in SIDES:
            got = load(ports[side], key, model_id, dataset_id, args.clients, args.seconds)
            figures["refused", side] = report("refused", side, budgets[side], got)
        for outage in ("hangs", "refused"):
            b, a = figures[outage, "before"], figures[outage, "budgeted"]
            print(
                f"{outage:8} before/budgeted: other p50 {b['other_p50'] / a['other_p50']:.1f}x, "
                f"other max {b['other_max'] / a['other_max']:.1f}x, health p99 {b['health_p99'] / a['health_p99']:.2f}x, "
                f"requests answered {a['throughput'] / max(1, b['throughput']):.1f}x as many"
            )
        return 0
    finally:
        for api, _ in apis.values():
            if api.poll() is None:
                os.killpg(api.pid, signal.SIGTERM)
                api.wait(timeout=10)
        emulators.stop()
        if sys.exc_info()[0] is None:  # on a failure the logs stay for reading
            shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
