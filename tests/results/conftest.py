"""Generated result sets that follow ``shared/results.py``, with the arrays they came from,
so every figure can be checked against scikit-learn or SciPy on the same data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.results import PREDICTION_SCHEMA


@dataclass
class Generated:
    directory: Path
    instance_ids: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    scores: np.ndarray  # (n, classes) probabilities
    label_names: list[str]
    top_k: int


def prediction_table(instance_ids, labels, scores, top_k: int) -> pa.Table:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    top_scores = np.take_along_axis(scores, order, axis=1)
    predictions = order[:, 0]
    n = len(labels)
    offsets = pa.array(np.arange(0, n * top_k + 1, top_k, dtype=np.int32))
    return pa.table(
        {
            "instance_id": pa.array(instance_ids, pa.string()),
            "label": pa.array(labels, pa.int32()),
            "prediction": pa.array(predictions, pa.int32()),
            "confidence": pa.array(top_scores[:, 0], pa.float32()),
            "label_score": pa.array(scores[np.arange(n), labels], pa.float32()),
            "correct": pa.array(labels == predictions, pa.bool_()),
            "topk_ids": pa.ListArray.from_arrays(offsets, pa.array(order.reshape(-1), pa.int32())),
            "topk_scores": pa.ListArray.from_arrays(offsets, pa.array(top_scores.reshape(-1), pa.float32())),
        },
        schema=PREDICTION_SCHEMA,
    )


def generate(
    directory: Path,
    *,
    n: int = 2000,
    classes: int = 7,
    top_k: int = 5,
    shards: int = 3,
    seed: int = 0,
    skill: float = 1.5,
    labels: np.ndarray | None = None,
    instance_ids: np.ndarray | None = None,
) -> Generated:
    """A result set of ``n`` instances in ``shards`` files plus summary.json."""
    rng = np.random.default_rng(seed)
    top_k = min(top_k, classes)
    if labels is None:
        labels = rng.integers(0, classes, n)
    if instance_ids is None:
        instance_ids = np.array([f"img-{i:06d}" for i in rng.permutation(n)])
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += skill
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    scores = scores.astype(np.float32).astype(np.float64)  # what the file holds
    names = [f"class-{c}" for c in range(classes)]
    table = prediction_table(instance_ids, labels, scores, top_k)
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for s in range(shards):
        pq.write_table(table.slice(bounds[s], bounds[s + 1] - bounds[s]), directory / f"part-{s:05d}.parquet")
    (directory / "summary.json").write_text(json.dumps({"label_names": names, "instances": n}))
    predictions = np.argsort(-scores, axis=1, kind="stable")[:, 0]
    return Generated(directory, instance_ids, labels, predictions, scores, names, top_k)


@pytest.fixture
def generated(tmp_path) -> Generated:
    return generate(tmp_path / "results")


# --- stored evaluations on the emulators ----------------------------------------------------


def upload_result_set(storage, evaluation_id: str, directory: Path) -> None:
    """Put a local result set where the evaluate worker writes it."""
    from shared.storage import evaluation_summary, prediction_shard

    for i, path in enumerate(sorted(directory.glob("part-*.parquet"))):
        storage.upload_file(prediction_shard(evaluation_id, i), path)
    if (directory / "summary.json").exists():
        storage.upload_file(evaluation_summary(evaluation_id), directory / "summary.json")


def stored_evaluation(
    store,
    *,
    account: str,
    model_id: str = "mdl_00000000000000000000",
    dataset_id: str = "dst_00000000000000000000",
    split: str = "test",
    status: str = "complete",
    summary: dict | None = None,
    name: str = "eval",
):
    from shared.entities import Evaluation

    evaluation = Evaluation(
        id=Evaluation.new_id(),
        account=account,
        name=name,
        model_id=model_id,
        dataset_id=dataset_id,
        split=split,
        fingerprint=Evaluation.new_id(),
        status=status,
        summary=summary,
    )
    store.put(evaluation)
    return evaluation
