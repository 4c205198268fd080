"""Dispatch: how fast the daemon turns a new evaluation into a submitted Job.

On the emulators, with the KubernetesBackend talking HTTP to the fake API server of the
tests (it timestamps every request):

1. latency, creation -> submission: evaluations are created one at a time (``pending``,
   inputs ready, as the API creates them) at random intervals while one daemon runs; the
   time from just before the create to the Job's POST arriving. Once with a Pub/Sub hint
   published after each create, once with polling only. Aim: p50 under 0.5 s with hints.
2. throughput: 1,000 pending evaluations across 10 accounts, admitted by one and by two
   daemon replicas (separate ``python -m daemon`` processes); the time from the first
   Job POST to the 1,000th, and from the processes' start to the 1,000th.

    .venv/bin/python bench/dispatch.py [--latency-n 40] [--poll-interval 5] [--admit-n 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "daemon"))

from fake_apiserver import FakeApiServer  # noqa: E402
from kubernetes import client as k8s  # noqa: E402

from daemon.context import Context  # noqa: E402
from daemon.environment import worker_environment  # noqa: E402
from daemon.kubernetes_backend import KubernetesBackend  # noqa: E402
from daemon.loop import Daemon  # noqa: E402
from daemon.settings import DaemonSettings  # noqa: E402
from devstack.emulators import Emulators  # noqa: E402
from shared.entities import (  # noqa: E402
    Dataset,
    Evaluation,
    InferenceConfig,
    Model,
    evaluation_fingerprint,
    evaluation_id,
)
from shared.pubsub import Hint, Hints  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import Storage  # noqa: E402
from shared.store import Store  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def inputs(store: Store, account: str) -> tuple[Model, Dataset]:
    model = Model(
        id=Model.new_id(),
        account=account,
        name="m",
        status="ready",
        declared_size=1,
        content_type="application/zip",
        upload_object="x",
    )
    dataset = Dataset(
        id=Dataset.new_id(),
        account=account,
        name="d",
        status="ready",
        declared_size=1,
        content_type="application/zip",
        upload_object="y",
        splits={"test": 1},
    )
    store.put(model)
    store.put(dataset)
    return model, dataset


def evaluation(model: Model, dataset: Dataset, n: int) -> Evaluation:
    config = InferenceConfig(top_k=1 + n % 100, batch_size=1 + n // 100)
    fp = evaluation_fingerprint(model_id=model.id, dataset_id=dataset.id, split=f"s{n}", config=config)
    return Evaluation(
        id=evaluation_id(account=model.account, fingerprint=fp),
        account=model.account,
        name="e",
        status="pending",
        model_id=model.id,
        dataset_id=dataset.id,
        split=f"s{n}",
        config=config,
        fingerprint=fp,
    )


def fresh_settings(emu: Emulators, tag: str) -> Settings:
    emu.reset_datastore()
    return Settings(
        project=emu.project,
        bucket=f"bench-{tag}",
        hint_topic=f"bench-{tag}",
        hint_subscription=f"bench-{tag}-daemon",
        datastore_emulator_host=emu.datastore_host,
        pubsub_emulator_host=emu.pubsub_host,
        storage_emulator_host=emu.storage_host,
    )


def kube_backend(server: FakeApiServer, daemon: DaemonSettings, settings: Settings) -> KubernetesBackend:
    configuration = k8s.Configuration(host=server.url)
    return KubernetesBackend(daemon, api_client=k8s.ApiClient(configuration), env=worker_environment(settings))


def post_times(server: FakeApiServer) -> dict[str, float]:
    return {r.body["metadata"]["name"]: r.received_at for r in server.requests_for("POST")}


def latency(emu: Emulators, *, hints_on: bool, n: int, poll_interval: float) -> list[float]:
    settings = fresh_settings(emu, f"lat-{'hints' if hints_on else 'poll'}-{os.getpid()}")
    store = Store.from_settings(settings)
    storage = Storage.from_settings(settings)
    storage.ensure_bucket()
    server = FakeApiServer().start()
    daemon_settings = DaemonSettings(
        replica_id="bench",
        poll_interval_s=poll_interval,
        global_concurrency=100_000,
        account_concurrency=100_000,
        health_file=None,
    )
    hints = Hints(settings) if hints_on else None
    daemon = Daemon(
        Context(settings, daemon_settings, store, storage, kube_backend(server, daemon_settings, settings)), hints=hints
    )
    publisher = Hints(settings)
    if hints_on:
        publisher.ensure()
    model, dataset = inputs(store, "acc_bench")
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    time.sleep(1.0)
    created: dict[str, float] = {}
    try:
        for i in range(n):
            time.sleep(random.uniform(0.3, 1.2))  # arrive at random points of the loop's sleep
            e = evaluation(model, dataset, i)
            started = time.monotonic()
            store.create(e)
            if hints_on:
                publisher.publish([Hint(kind="Evaluation", id=e.id, account=e.account)])
            created[e.id] = started
        deadline = time.monotonic() + poll_interval * 3 + 30
        while len(post_times(server)) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        daemon.stop()
        thread.join(timeout=30)
        server.stop()
    posted = post_times(server)
    out = []
    for entity_id, t0 in created.items():
        job = next((name for name in posted if entity_id.replace("_", "-") in name), None)
        if job is not None:
            out.append(posted[job] - t0)
    return out


def admit(emu: Emulators, *, replicas: int, n: int, tmp: Path) -> tuple[float, float, int]:
    settings = fresh_settings(emu, f"admit-{replicas}-{os.getpid()}")
    store = Store.from_settings(settings)
    Storage.from_settings(settings).ensure_bucket()
    accounts = [inputs(store, f"acc_{a:02d}") for a in range(10)]
    todo = [evaluation(*accounts[i % 10], i) for i in range(n)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(store.put, todo))

    server = FakeApiServer().start()
    kubeconfig = tmp / f"kubeconfig-{replicas}"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
                "users": [{"name": "me", "user": {"token": "t"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
            }
        )
    )
    env = {
        **os.environ,
        **worker_environment(settings),
        "ASSAY_DAEMON_BACKEND": "kubernetes",
        "ASSAY_DAEMON_KUBECONFIG": str(kubeconfig),
        "ASSAY_DAEMON_POLL_INTERVAL_S": "1",
        "ASSAY_DAEMON_GLOBAL_CONCURRENCY": "100000",
        "ASSAY_DAEMON_ACCOUNT_CONCURRENCY": "100000",
        "ASSAY_DAEMON_HEALTH_FILE": "",
        "ASSAY_DAEMON_LOG_LEVEL": "WARNING",
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "daemon"],
            cwd=ROOT,
            env={**env, "ASSAY_DAEMON_REPLICA_ID": f"r{r}"},
            stdout=open(tmp / f"admit-{replicas}-r{r}.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        for r in range(replicas)
    ]
    try:
        deadline = time.monotonic() + 600
        while len(post_times(server)) < n and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            p.wait(timeout=30)
        server.stop()
    posts = sorted(post_times(server).values())
    duplicates = len(server.requests_for("POST")) - len(posts)
    return posts[-1] - posts[0], posts[-1] - started, duplicates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-n", type=int, default=40)
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--admit-n", type=int, default=1000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    emu = Emulators(tmp / "emulators").start()
    try:
        print(f"== creation -> Job submission, {args.latency_n} evaluations, poll interval {args.poll_interval}s")
        for hints_on in (True, False):
            values = latency(emu, hints_on=hints_on, n=args.latency_n, poll_interval=args.poll_interval)
            print(
                f"  {'hints  ' if hints_on else 'polling'}: p50 {pct(values, 0.5):.3f}s  p95 {pct(values, 0.95):.3f}s  "
                f"mean {statistics.mean(values):.3f}s  ({len(values)}/{args.latency_n} submitted)"
            )
        print(f"== admitting {args.admit_n} pending evaluations (10 accounts)")
        for replicas in (1, 2):
            span, total, duplicates = admit(emu, replicas=replicas, n=args.admit_n, tmp=tmp)
            print(
                f"  {replicas} replica{'s' if replicas > 1 else ' '}: first->last submission {span:.2f}s "
                f"({args.admit_n / span:.0f}/s); from process start {total:.2f}s; duplicate POSTs {duplicates}"
            )
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
