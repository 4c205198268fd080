"""Benchmark: Assay's results queries against pandas on a 1,000,000-row result set.

Generates a result set that follows ``shared/results.py`` (4 Parquet shards, 100 classes,
top-5) in a temporary folder, as the local cache holds it, then times three answers —
per-class metrics, the confusion matrix, the 50 least confident errors — with Assay's
query path (a locked DuckDB connection per request, as the API opens one) and with pandas
(its Parquet read included, as it has no other way to the data). Prints the median of
``--repeat`` runs, and the ratios.

    .venv/bin/python bench/results_query.py [--rows 1000000] [--repeat 5]

Aim (issue 6): the three Assay answers under 0.3 s together, and at least 5x pandas.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from functions.results import queries  # noqa: E402
from functions.results.resultset import opened  # noqa: E402
from shared.results import PREDICTION_SCHEMA  # noqa: E402
from shared.results_api import InstancesQuery  # noqa: E402

CLASSES, TOP_K, SHARDS = 100, 5, 4


def generate(folder: Path, rows: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, CLASSES, rows).astype(np.int32)
    prediction = np.where(rng.random(rows) < 0.8, label, rng.integers(0, CLASSES, rows)).astype(np.int32)
    confidence = rng.random(rows).astype(np.float32)
    others = rng.integers(0, CLASSES, (rows, TOP_K - 1))
    topk = np.concatenate([prediction[:, None], others], axis=1).astype(np.int32)
    scores = np.sort(rng.random((rows, TOP_K)).astype(np.float32), axis=1)[:, ::-1]
    offsets = pa.array(np.arange(0, rows * TOP_K + 1, TOP_K, dtype=np.int32))
    table = pa.table(
        {
            "instance_id": pa.array([f"img-{i:07d}" for i in rng.permutation(rows)]),
            "label": label,
            "prediction": prediction,
            "confidence": confidence,
            "label_score": confidence,
            "correct": label == prediction,
            "topk_ids": pa.ListArray.from_arrays(offsets, pa.array(topk.ravel())),
            "topk_scores": pa.ListArray.from_arrays(offsets, pa.array(scores.ravel().copy())),
        },
        schema=PREDICTION_SCHEMA,
    )
    for s in range(SHARDS):
        start, stop = s * rows // SHARDS, (s + 1) * rows // SHARDS
        pq.write_table(table.slice(start, stop - start), folder / f"part-{s:05d}.parquet", compression="zstd")
    return [f"class-{c}" for c in range(CLASSES)]


def assay(folder: Path, names: list[str]) -> dict[str, float]:
    """Each answer as a request would compute it: open the result set, query, close."""
    times = {}
    query = InstancesQuery(correct=False, order_by="confidence", limit=50)
    for name, run in (
        ("per-class", queries.classes),
        ("confusion", queries.confusion),
        ("50 least confident errors", lambda rs: queries.instances(rs, query)),
    ):
        started = time.perf_counter()
        with opened(folder, names) as rs:
            run(rs)
        times[name] = time.perf_counter() - started
    return times


def with_pandas(folder: Path) -> dict[str, float]:
    times = {}
    started = time.perf_counter()
    df = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("part-*.parquet"))], ignore_index=True)
    times["read"] = time.perf_counter() - started

    started = time.perf_counter()
    support = df.groupby("label").size()
    predicted = df.groupby("prediction").size()
    tp = df[df["label"] == df["prediction"]].groupby("label").size()
    per_class = pd.DataFrame({"support": support, "predicted": predicted, "tp": tp}).fillna(0)
    per_class["precision"] = per_class.tp / per_class.predicted.where(per_class.predicted > 0)
    per_class["recall"] = per_class.tp / per_class.support.where(per_class.support > 0)
    per_class["f1"] = 2 * per_class.tp / (per_class.support + per_class.predicted)
    times["per-class"] = time.perf_counter() - started

    started = time.perf_counter()
    pd.crosstab(df["label"], df["prediction"])
    times["confusion"] = time.perf_counter() - started

    started = time.perf_counter()
    df[~df["correct"]].sort_values(["confidence", "instance_id"]).head(50)
    times["50 least confident errors"] = time.perf_counter() - started
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="assay-bench-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        names = generate(folder, args.rows)
        size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        print(
            f"result set: {args.rows:,} rows, {SHARDS} files, {size:.1f} MB (generated in {time.perf_counter() - started:.1f} s)"
        )
        assay(folder, names)  # warm the page cache and DuckDB's first-use costs
        runs_a = [assay(folder, names) for _ in range(args.repeat)]
        runs_p = [with_pandas(folder) for _ in range(args.repeat)]
    median_a = {k: statistics.median(r[k] for r in runs_a) for k in runs_a[0]}
    median_p = {k: statistics.median(r[k] for r in runs_p) for k in runs_p[0]}
    total_a = statistics.median(sum(r.values()) for r in runs_a)
    total_p = statistics.median(sum(r.values()) for r in runs_p)
    print(f"\nmedian of {args.repeat} runs       assay (s)   pandas (s)   pandas/assay")
    print(f"  {'pandas read_parquet':26}  {'':>9}   {median_p['read']:>10.3f}")
    for key, value in median_a.items():
        print(f"  {key:26}  {value:>9.3f}   {median_p[key]:>10.3f}   {median_p[key] / value:>11.1f}x")
    print(f"  {'all three (pandas: + read)':26}  {total_a:>9.3f}   {total_p:>10.3f}   {total_p / total_a:>11.1f}x")
    meets = total_a < 0.3 and total_p / total_a >= 5
    print(f"\naim: under 0.300 s together and >= 5x pandas -> {'met' if meets else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
