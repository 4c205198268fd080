"""API latency: the API served by functions-framework on the emulators, 16 concurrent
clients each ordering an evaluation and reading it back; and, in the same run, the same
work done bare against the same emulator by 16 clients with google-cloud-datastore,
written by hand and independent of Assay's store (so that a faster store cannot make the
baseline faster too): a transaction (begin, get one entity, put one, commit), then a get
of the entity written.

The two sides carry the same workload, a write then a read-back per client, so each API
call is compared with its bare Datastore equivalent under the same load: create against
the transaction (the aim: create-evaluation p50 within 1.5x the bare transaction's p50),
get against the bare get.

This machine is shared and noisy (hypervisor steal, other work), so the two are measured
in alternating rounds, API and bare taking turns to go first, and the headline ratio is
the median of the rounds' ratios; the p50s and p95s over all rounds are printed too.
Nothing is timed until the emulator's JVM has finished compiling its hot code (``warm_up``).
The API's clients are ``http.client`` connections unless ``--client requests`` is given:
the load generator shares the box with what it measures, so it should cost it little.

    .venv/bin/python bench/api_latency.py [--clients 16] [--requests 16] [--rounds 9]
        [--client http.client|requests] [--warmup 40] [--warmup-limit-s 180]
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path

import requests
from google.cloud import datastore

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.emulators import Emulators, free_port  # noqa: E402
from shared.admin import create_account  # noqa: E402
from shared.entities import (  # noqa: E402
    Dataset,
    Evaluation,
    InferenceConfig,
    Model,
    evaluation_fingerprint,
    evaluation_id,
)
from shared.pubsub import Hints  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import Storage  # noqa: E402
from shared.store import Store  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_clients(clients: int, n: int, make_client) -> list[list[float]]:
    """``clients`` threads, each running ``step = make_client(c)`` for i < n; a step returns
    the seconds of each call it timed. The times of all clients, by call: [[first], ...]."""
    steps: list[tuple[float, ...]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        step = make_client(c)
        mine = [step(i) for i in range(n)]
        with lock:
            steps.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [list(by_call) for by_call in zip(*steps)]


def emulator_jvm(emulators: Emulators) -> int:
    """The pid of the Firestore emulator's JVM: a child of the launcher script we started."""
    (launcher,) = [p.popen.pid for p in emulators.processes if p.name == "datastore"]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == launcher:
            return int(stat.parent.name)
    raise RuntimeError("the Firestore emulator's JVM was not found")


def jit_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a HotSpot JVM's JIT compiler threads."""
    ticks = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().startswith(("C1 Compiler", "C2 Compiler")):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
        except OSError:
            continue  # the thread ended
    return ticks / os.sysconf("SC_CLK_TCK")


# The emulator's JIT counts as settled when its compiler threads used less than this share of
# a core over a whole warm-up pass.
JIT_SETTLED_CORES = 0.02


def warm_up(one_pass: Callable[[int], object], *, jvm: int, limit_s: float) -> tuple[int, float]:
    """Run unrecorded passes of both sides' work until the emulator's JIT has settled, or
    for ``limit_s`` at most. Returns the passes run and the share of a core the JIT
    compilers took in the last one.

    The Firestore emulator's JVM compiles for a long time: under this load its compiler
    threads took ~0.5 of a core for the first ~15 s and 0.05-0.15 until ~60 s, then ~0
    (measured 2026-12-01). Rounds timed before that share the box with the compiler, by
    chance more of one side than the other. Connections and caches warm up meanwhile.
    """
    start = time.monotonic()
    for passes in itertools.count(1):
        compiled, began = jit_cpu_s(jvm), time.monotonic()
        one_pass(passes)
        jit = (jit_cpu_s(jvm) - compiled) / max(time.monotonic() - began, 1e-6)
        if jit < JIT_SETTLED_CORES or time.monotonic() - start > limit_s:
            break
    settled = "settled" if jit < JIT_SETTLED_CORES else f"NOT settled (limit {limit_s:.0f} s)"
    print(
        f"warm-up: {passes} passes, {time.monotonic() - start:.0f} s; the emulator's JIT {settled}: "
        f"{jit:.3f} of a core in the last pass",
        flush=True,
    )
    return passes, jit


def ready_inputs(store: Store, account: str) -> tuple[str, str]:
    model = Model(
        id=Model.new_id(),
        account=account,
        name="bench-model",
        status="ready",
        declared_size=1,
        content_type="application/zip",
        upload_object="x",
    )
    dataset = Dataset(
        id=Dataset.new_id(),
        account=account,
        name="bench-data",
        status="ready",
        declared_size=1,
        content_type="application/zip",
        upload_object="y",
        splits={"test": 10},
    )
    store.put(model)
    store.put(dataset)
    return model.id, dataset.id


# The load generators the API's clients can be. The default is the cheapest: on this one box
# every millisecond of CPU the load generator spends is taken from the API and the emulator,
# which in production never share a machine with their clients (bench/README.md).
CLIENTS = ("http.client", "requests")


def connect(base: str, key: str, client: str) -> Callable[..., tuple[int, bytes]]:
    """One client's kept-alive connection to the API: ``call(method, path, body=None)``
    returns the status and the body of the reply, read whole."""
    auth = {"Authorization": f"Bearer {key}"}
    if client == "requests":
        session = requests.Session()
        # Loopback, no proxy: without this, requests scans the whole environment for proxy
        # settings on every request (~0.3 ms of the load generator's CPU, on the same box).
        session.trust_env = False
        session.headers.update(auth)

        def call_requests(method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
            reply = session.request(method, base + path, json=body, timeout=30)
            return reply.status_code, reply.content

        return call_requests
    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)

    def call_http_client(method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        if body is None:
            connection.request(method, path, headers=auth)
        else:
            connection.request(method, path, json.dumps(body), {**auth, "Content-Type": "application/json"})
        reply = connection.getresponse()
        return reply.status, reply.read()

    return call_http_client


def bench_api(
    base: str, key: str, model_id: str, dataset_id: str, clients: int, n: int, *, tag: str, client: str = CLIENTS[0]
) -> list[list[float]]:
    """Seconds per create and per get: each client orders an evaluation, then reads it back."""

    def make_client(c: int):
        call = connect(base, key, client)

        def step(i: int) -> tuple[float, float]:
            body = {
                "model_id": model_id,
                "dataset_id": dataset_id,
                "splits": ["test"],
                "config": {"label_mapping": {"bench": f"{tag}-c{c}-{i}"}},
            }
            t0 = time.perf_counter()
            status, reply = call("POST", "/v1/evaluations", body)
            t1 = time.perf_counter()
            assert status == 201, reply
            eid = json.loads(reply)["evaluations"][0]["evaluation"]["id"]
            t2 = time.perf_counter()
            status, reply = call("GET", f"/v1/evaluations/{eid}")
            t3 = time.perf_counter()
            assert status == 200, reply
            return t1 - t0, t3 - t2

        return step

    return time_clients(clients, n, make_client)


# What a create writes, spelled out by hand: an evaluation-sized entity (30 properties),
# the same 9 of them indexed.
BARE_INDEXED = ("account", "name", "status", "created_at", "label_pairs", "model_id", "dataset_id", "split", "fingerprint")


def bare_properties(account: str, n: int) -> dict:
    now = datetime.datetime.now(datetime.UTC)
    return {
        "id": f"bare-{n}",
        "account": account,
        "name": "bare",
        "labels": "{}",
        "label_pairs": [],
        "created_at": now,
        "updated_at": now,
        "status": "pending",
        "reason": "queued",
        "message": None,
        "status_changed_at": now,
        "attempts": 0,
        "retry_base": 0,
        "lease_owner": None,
        "lease_expires_at": None,
        "heartbeat_at": None,
        "job_name": None,
        "progress": None,
        "progress_message": None,
        "started_at": None,
        "finished_at": None,
        "model_id": "mdl_bare",
        "dataset_id": "dst_bare",
        "split": "test",
        "config": json.dumps({"top_k": 5, "label_mapping": {"bench": f"bare-{n}"}, "batch_size": 64}),
        "fingerprint": f"{n:064x}",
        "queue_position": None,
        "timings": "{}",
        "summary": "null",
        "result_prefix": None,
    }


def bench_bare(client: datastore.Client, account: str, clients: int, n: int) -> list[list[float]]:
    """Seconds per bare transaction and per bare get: each client runs begin, get one
    entity (the key about to be written), put one, commit — the least a create can cost,
    with the official client and nothing of Assay's — then gets the entity it wrote back,
    as the API's clients read their evaluation back."""
    unindexed = tuple(name for name in bare_properties(account, 0) if name not in BARE_INDEXED)

    def make_client(c: int):
        def step(i: int) -> tuple[float, float]:
            key = client.key("BareTransaction", uuid.uuid4().hex)
            properties = bare_properties(account, c * n + i)
            t0 = time.perf_counter()
            with client.transaction() as transaction:
                client.get(key, transaction=transaction)
                entity = datastore.Entity(key, exclude_from_indexes=unindexed)
                entity.update(properties)
                transaction.put(entity)
            t1 = time.perf_counter()
            found = client.get(key)
            t2 = time.perf_counter()
            assert found is not None
            return t1 - t0, t2 - t1

        return step

    return time_clients(clients, n, make_client)


def bench_create_transaction(store: Store, account: str, model_id: str, dataset_id: str, clients: int, n: int) -> list[float]:
    """The create's own Datastore work through Assay's store, without HTTP: one lookup of
    the model, the dataset and the evaluation's key, then a put of the new evaluation.
    Tells how much of a create is the transaction itself and how much the API around it."""

    def make_client(c: int):
        def step(i: int) -> tuple[float]:
            config = InferenceConfig(label_mapping={"bench": f"txn-c{c}-{i}"})
            fp = evaluation_fingerprint(model_id=model_id, dataset_id=dataset_id, split="test", config=config)
            evaluation = Evaluation(
                id=evaluation_id(account=account, fingerprint=fp),
                account=account,
                name="bench",
                model_id=model_id,
                dataset_id=dataset_id,
                split="test",
                config=config,
                fingerprint=fp,
            )

            def txn_fn(txn):
                txn.find_many([(Model, model_id), (Dataset, dataset_id), (Evaluation, evaluation.id)], account=account)
                txn.put(evaluation)

            t0 = time.perf_counter()
            store.run_in_transaction(txn_fn)
            return (time.perf_counter() - t0,)

        return step

    return time_clients(clients, n, make_client)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=16, help="evaluations each client orders per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--client", choices=CLIENTS, default=CLIENTS[0], help="the API's load generator")
    parser.add_argument("--warmup", type=int, default=40, help="unrecorded requests per client on each side in a warm-up pass")
    parser.add_argument(
        "--warmup-limit-s", type=float, default=180, help="warm up until the emulator's JIT settles, or for this long at most"
    )
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="assay-bench-"))
    emulators = Emulators(state).start()
    api = None
    try:
        # Served as deployed (cloudbuild.yaml): one process, as many threads as its concurrency.
        env = {
            **os.environ,
            **emulators.env(),
            "ASSAY_BUCKET": "assay-bench",
            "ASSAY_HINT_TOPIC": "bench-hints",
            "WORKERS": os.environ.get("WORKERS", "1"),
            "THREADS": os.environ.get("THREADS", "20"),
        }
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

        port = free_port()
        log = open(state / "api.log", "wb")
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
                if requests.get(f"{base}/v1/health", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or api.poll() is not None:
                raise RuntimeError(f"the API did not start; see {state / 'api.log'}")
            time.sleep(0.2)

        # The documented way to point google-cloud-datastore at an emulator.
        os.environ["DATASTORE_EMULATOR_HOST"] = emulators.datastore_host
        by_hand = datastore.Client(project=emulators.project)
        warm_up(
            lambda w: (
                bench_api(base, key, model_id, dataset_id, args.clients, args.warmup, tag=f"warm{w}", client=args.client),
                bench_bare(by_hand, account.id, args.clients, args.warmup),
            ),
            jvm=emulator_jvm(emulators),
            limit_s=args.warmup_limit_s,
        )

        api_times: list[list[float]] = [[], []]  # creates, gets
        bare_times: list[list[float]] = [[], []]  # transactions, gets
        ratios: list[tuple[float, float]] = []  # per round: create / transaction, get / get
        for r in range(args.rounds):  # API first in even rounds, bare first in odd ones
            if r % 2:
                bare_round = bench_bare(by_hand, account.id, args.clients, args.requests)
                api_round = bench_api(
                    base, key, model_id, dataset_id, args.clients, args.requests, tag=f"r{r}", client=args.client
                )
            else:
                api_round = bench_api(
                    base, key, model_id, dataset_id, args.clients, args.requests, tag=f"r{r}", client=args.client
                )
                bare_round = bench_bare(by_hand, account.id, args.clients, args.requests)
            for total, got in zip(api_times + bare_times, api_round + bare_round):
                total.extend(got)
            ratios.append(tuple(statistics.median(a) / statistics.median(b) for a, b in zip(api_round, bare_round)))
        create_txn = bench_create_transaction(store, account.id, model_id, dataset_id, args.clients, args.requests)

        creates, reads = api_times
        bare, bare_reads = bare_times
        ms = lambda s: f"{s * 1000:7.1f} ms"  # noqa: E731
        print(
            f"{args.clients} concurrent clients ({args.client}), {args.rounds} rounds: {len(creates)} evaluations "
            f"ordered and read back; {len(bare)} bare transactions, each entity read back"
        )
        print(f"create evaluation  p50 {ms(pct(creates, 0.5))}  p95 {ms(pct(creates, 0.95))}")
        print(f"bare transaction   p50 {ms(pct(bare, 0.5))}  p95 {ms(pct(bare, 0.95))}")
        print(f"get evaluation     p50 {ms(pct(reads, 0.5))}  p95 {ms(pct(reads, 0.95))}")
        print(f"bare get           p50 {ms(pct(bare_reads, 0.5))}  p95 {ms(pct(bare_reads, 0.95))}")
        print(f"create's own txn   p50 {ms(pct(create_txn, 0.5))}  p95 {ms(pct(create_txn, 0.95))}  (no HTTP; for diagnosis)")
        print("create p50 / bare transaction p50 by round: " + " ".join(f"{c:.2f}" for c, _ in ratios))
        print(f"get p50 / bare get p50 = {statistics.median(g for _, g in ratios):.2f} (median of rounds)")
        print(
            f"create p50 / bare transaction p50 = {statistics.median(c for c, _ in ratios):.2f} (median of rounds; "
            f"over all rounds {statistics.median(creates) / statistics.median(bare):.2f}; aim: <= 1.5)"
        )
        return 0
    finally:
        if api is not None and api.poll() is None:
            os.killpg(api.pid, 15)
            api.wait(timeout=10)
        emulators.stop()
        if sys.exc_info()[0] is None:  # on a failure the logs stay for reading
            shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
