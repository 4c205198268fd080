"""Benchmark: the console's evaluation page on a 1,000,000-row result set, once cached.

Starts the emulators, stores a complete evaluation whose result set is ``results_query``'s
generated one (1M rows, 100 classes, 4 files) in fake-gcs-server, signs in to the console
and times, through the app's test client (no HTTP server, so both sides pay the same):

- the evaluation page (summary, per-class table, 100x100 heatmap, reliability diagram, one
  gallery page of 24), plain and with the gallery filtered to the least confident errors;
- the JSON routes the page composes, called one after the other as a script would: the
  evaluation, its summary, per-class metrics, the confusion matrix, one instances page.

The first request fills the local cache and is not counted. Prints p50 of ``--repeat``
requests and the ratios.

    .venv/bin/python bench/console_page.py [--rows 1000000] [--repeat 15]

Aim (issue 18): the page under 0.5 s p50 once the result set is cached.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from results_query import generate  # noqa: E402

from devstack.emulators import Emulators  # noqa: E402
from functions.app import create_app  # noqa: E402
from functions.services import Services  # noqa: E402
from shared.admin import create_account  # noqa: E402
from shared.entities import Dataset, Evaluation, Model  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import evaluation_summary, prediction_shard  # noqa: E402


def stored(services: Services, folder: Path, rows: int) -> tuple[str, str]:
    """A complete evaluation of ``rows`` instances; (its id, an admin key)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = generate(folder, rows)
    store, storage = services.store, services.storage
    account, key = create_account(store, "bench")
    common = {
        "account": account.id,
        "status": "ready",
        "declared_size": 1,
        "content_type": "application/zip",
        "upload_object": "uploads/x/y",
        "label_names": names,
    }
    model = Model(id=Model.new_id(), name="bench-model", **common)
    dataset = Dataset(id=Dataset.new_id(), name="bench-data", splits={"test": rows}, **common)
    store.put(model)
    store.put(dataset)
    summary = {
        "label_names": names,
        "instances": rows,
        "accuracy": 0.8,
        "f1_macro": 0.8,
        "ece_bins": 10,
        "efficiency": {"instances_per_second": 5000.0},
    }
    evaluation = Evaluation(
        id=Evaluation.new_id(),
        account=account.id,
        name="bench",
        model_id=model.id,
        dataset_id=dataset.id,
        split="test",
        fingerprint="f",
        status="complete",
        summary=summary,
    )
    store.put(evaluation)
    for i, path in enumerate(sorted(folder.glob("part-*.parquet"))):
        storage.upload_file(prediction_shard(evaluation.id, i), path)
    storage.write_bytes(evaluation_summary(evaluation.id), b'{"label_names": []}')
    return evaluation.id, key


def timed(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="assay-bench-"))
    emulators = Emulators(state).start()
    try:
        settings = Settings(
            project=emulators.project,
            bucket="assay-bench",
            datastore_emulator_host=emulators.datastore_host,
            pubsub_emulator_host=emulators.pubsub_host,
            storage_emulator_host=emulators.storage_host,
            cache_dir=str(state / "cache"),
            api_auth_cache_s=10,
        )
        services = Services.from_settings(settings)
        services.storage.ensure_bucket()
        evaluation_id, key = stored(services, state / "results", args.rows)
        client = create_app(services=services).test_client()
        form = client.get("/ui/sign-in").get_data(as_text=True)
        nonce = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
        assert client.post("/ui/sign-in", data={"api_key": key, "csrf": nonce}).status_code == 303
        headers = {"Authorization": f"Bearer {key}"}
        page = f"/ui/evaluations/{evaluation_id}"
        mistakes = page + "?errors=1&order=confidence"
        base = f"/v1/evaluations/{evaluation_id}"
        routes = [
            base,
            base + "/results",
            base + "/results/classes",
            base + "/results/confusion",
            base + "/results/instances?limit=24",
        ]

        def get(path: str, **kw) -> None:
            response = client.get(path, **kw)
            assert response.status_code == 200, (path, response.status_code, response.get_data(as_text=True)[:300])

        started = time.perf_counter()
        get(page)  # fetches the result set into the local cache
        print(f"result set: {args.rows:,} rows; first page view (cache fill) {time.perf_counter() - started:.2f} s")
        get(mistakes)
        for route in routes:
            get(route, headers=headers)
        page_s = timed(lambda: get(page), args.repeat)
        mistakes_s = timed(lambda: get(mistakes), args.repeat)
        json_s = timed(lambda: [get(r, headers=headers) for r in routes], args.repeat)
        print(f"\np50 of {args.repeat} requests                     seconds   page / JSON routes")
        print(f"  evaluation page                           {page_s:>7.3f}   {page_s / json_s:>6.2f}x")
        print(f"  evaluation page, least confident errors   {mistakes_s:>7.3f}   {mistakes_s / json_s:>6.2f}x")
        print(f"  the 5 JSON routes it composes, in turn    {json_s:>7.3f}")
        print(f"\naim: the page under 0.500 s p50 -> {'met' if page_s < 0.5 and mistakes_s < 0.5 else 'NOT met'}")
    finally:
        emulators.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
