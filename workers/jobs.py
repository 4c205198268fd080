"""The three task bodies: fetch inputs from Cloud Storage, run the model task's
implementation (``workers.modeltasks``), publish outputs.

Each body takes the entity as the runner read it and returns the fields to write with the
final status. It knows nothing of leases or statuses; it calls ``progress(fraction,
message)`` (cheap, the runner throttles the writes) and ``checkpoint()`` between units of
work, which raises when the task was taken away. Inputs that never change once verified
(a model's files, a dataset's shards) are cached on local disk keyed by their digest.
Every local path is built by ``workers.workdir.inside`` under the work or cache directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import storage as paths
from shared.entities import ArtifactStatus, Dataset, Evaluation, Model, check_split_name
from shared.errors import NotFound
from shared.modeltasks import spec_of
from shared.storage import Storage
from shared.store import Store
from shared.tasks import TaskName
from workers.failures import FailureReason, WorkerFailure
from workers.ingest import MANIFEST_NAME
from workers.modeltasks import implementation
from workers.workdir import inside

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
Checkpoint = Callable[[], None]


@dataclass
class JobContext:
    store: Store
    storage: Storage
    cache_dir: Path
    work_dir: Path  # fresh, private to this attempt, removed afterwards
    progress: Progress
    checkpoint: Checkpoint


def _download_upload(ctx: JobContext, entity: Model | Dataset) -> tuple[Path, str, int]:
    from workers.verify import sha256_file

    local = inside(ctx.work_dir, "upload")
    try:
        ctx.storage.download_file(entity.upload_object, local)
    except NotFound as e:
        raise WorkerFailure(FailureReason.input_not_ready, f"the upload {entity.upload_object} is missing") from e
    return local, sha256_file(local), local.stat().st_size


def _upload_tree(ctx: JobContext, root: Path, prefix: str, files: list[str]) -> None:
    for i, name in enumerate(files):
        ctx.storage.upload_file(prefix + name, inside(root, name))
        ctx.progress(0.5 + 0.5 * (i + 1) / len(files), f"published {i + 1}/{len(files)} files")


# --- verify-model ---------------------------------------------------------------------------


def verify_model(ctx: JobContext, model: Model) -> dict[str, Any]:
    ctx.progress(0.0, "downloading the upload")
    archive, digest, size = _download_upload(ctx, model)
    ctx.progress(0.2, "extracting and verifying")
    root, report = implementation(model.task).verify_model_archive(archive, inside(ctx.work_dir, "extracted"))
    ctx.checkpoint()
    manifest = {"digest": digest, **report.to_dict()}
    manifest_path = inside(ctx.work_dir, "manifest.json")
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    prefix = paths.model_prefix(model.id)
    _upload_tree(ctx, root, prefix, report.files)
    ctx.storage.upload_file(prefix + "manifest.json", manifest_path, content_type="application/json")
    return {
        "label_names": report.label_names,
        "parameter_count": report.parameter_count,
        "architecture": report.architecture,
        "digest": digest,
        "size": size,
        "message": ", ".join(
            [
                report.architecture,
                *([f"{len(report.label_names)} labels"] if report.label_names else []),
                f"{report.parameter_count:,} parameters",
                *(f"{key} {value}" for key, value in report.details.items()),
            ]
        ),
    }


# --- ingest-dataset -------------------------------------------------------------------------


def ingest_dataset(ctx: JobContext, dataset: Dataset) -> dict[str, Any]:
    ctx.progress(0.0, "downloading the upload")
    source, digest, size = _download_upload(ctx, dataset)
    ctx.progress(0.2, "decoding and sharding")
    out = inside(ctx.work_dir, "canonical")
    manifest = implementation(dataset.task).ingest_dataset(
        source, out, work_dir=inside(ctx.work_dir, "extracted"), shape=dataset.shape
    )
    manifest["source_digest"] = digest
    inside(out, MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    ctx.checkpoint()
    files = [f"{split}/{s['name']}" for split, v in manifest["splits"].items() for s in v["shards"]]
    prefix = paths.dataset_prefix(dataset.id)
    _upload_tree(ctx, out, prefix, files)
    ctx.storage.upload_file(paths.dataset_manifest(dataset.id), inside(out, MANIFEST_NAME), content_type="application/json")
    invalid = manifest["invalid_instances"]
    return {
        "splits": {split: v["instances"] for split, v in manifest["splits"].items()},
        "label_names": manifest["label_names"],
        "invalid_instances": invalid,
        "digest": digest,
        "size": size,
        "message": f"{manifest['instances']} instances" + (f", {invalid} invalid instances left out" if invalid else ""),
    }


# --- evaluate -------------------------------------------------------------------------------


def _cached(ctx: JobContext, key: str, fill: Callable[[Path], None]) -> Path:
    """``cache_dir/key``, filled once by ``fill(staging_dir)`` and renamed into place."""
    target = inside(ctx.cache_dir, key)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fill-", dir=target.parent))
    try:
        fill(staging)
        try:
            staging.rename(target)
        except OSError:  # filled concurrently by another worker on this machine: same bytes
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _fetch_prefix(ctx: JobContext, prefix: str, into: Path, *, only: Callable[[str], bool] = lambda _: True) -> None:
    for name, _ in ctx.storage.list(prefix):
        rel = name[len(prefix) :]
        if only(rel):
            ctx.storage.download_file(name, inside(into, rel))


def _inputs(ctx: JobContext, evaluation: Evaluation) -> tuple[Model, Dataset]:
    try:
        model = ctx.store.get(Model, evaluation.model_id, account=evaluation.account)
        dataset = ctx.store.get(Dataset, evaluation.dataset_id, account=evaluation.account)
    except NotFound as e:
        raise WorkerFailure(FailureReason.input_not_ready, e.message) from e
    if not model.task == dataset.task == evaluation.task:
        raise WorkerFailure(
            FailureReason.invalid_dataset,
            f"the model is for {model.task}, the dataset for {dataset.task}: they cannot be evaluated together",
        )
    return model, dataset


def evaluate(ctx: JobContext, evaluation: Evaluation) -> dict[str, Any]:
    model, dataset = _inputs(ctx, evaluation)
    task = implementation(evaluation.task)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    for what, entity in (("model", model), ("dataset", dataset)):
        if entity.status != ArtifactStatus.ready or not entity.digest:
            raise WorkerFailure(FailureReason.input_not_ready, f"{what} {entity.id} is {entity.status}, not ready")
    try:
        check_split_name(evaluation.split)  # it becomes a directory of the cache below
    except ValueError as e:
        raise WorkerFailure(FailureReason.invalid_dataset, str(e)) from e
    if evaluation.split not in (dataset.splits or {}):
        raise WorkerFailure(
            FailureReason.split_not_found,
            f"dataset {dataset.id} has no split {evaluation.split!r} (it has {sorted(dataset.splits or {})})",
        )
    config = evaluation.inference_config()
    split = evaluation.split
    others = config.other_splits(split)
    for other in others:
        if other not in (dataset.splits or {}):
            raise WorkerFailure(
                FailureReason.split_not_found,
                f"dataset {dataset.id} has no split {other!r} to draw few-shot examples from "
                f"(it has {sorted(dataset.splits or {})}); set fewshot_split to one of them",
            )
    ctx.progress(0.0, "fetching the model and the dataset")
    model_dir = _cached(ctx, f"models/{model.digest}", lambda d: _fetch_prefix(ctx, paths.model_prefix(model.id), d))
    shards, manifest = _split_shards(ctx, dataset, split)
    other_splits = {other: _split_shards(ctx, dataset, other)[0] for other in others}
    timings["fetch_s"] = time.perf_counter() - started

    # Resume: prediction shards already published by an earlier attempt are kept as they are.
    out = inside(ctx.work_dir, "predictions")
    prediction_prefix = paths.evaluation_prefix(evaluation.id) + "predictions/"
    _fetch_prefix(ctx, prediction_prefix, out, only=lambda rel: rel.endswith(".parquet"))

    shard_rows = {s["name"]: s["rows"] for s in manifest["splits"][split]["shards"]}
    total = max(1, sum(shard_rows.values()))
    done = sum(rows for name, rows in shard_rows.items() if inside(out, name).exists())  # resumed shards

    def on_batch(instances: int) -> None:
        nonlocal done
        done += instances
        ctx.progress(done / total, f"{done}/{total} instances")

    def on_shard(index: int, path: Path, stats) -> None:
        ctx.storage.upload_file(paths.prediction_shard(evaluation.id, index), path)
        ctx.checkpoint()

    tick = time.perf_counter()
    summary = task.evaluate(
        model_dir,
        shards,
        out,
        dataset_label_names=manifest["label_names"],
        config=config,
        on_shard=on_shard,
        on_batch=on_batch,
        other_splits=other_splits,
    )
    # The implementation may split its time (load, inference, metrics); else it is one figure.
    timings.update(summary.pop("timings", None) or {"evaluate_s": time.perf_counter() - tick})
    summary["model_id"], summary["dataset_id"], summary["split"] = model.id, dataset.id, split
    summary["config"] = config.model_dump()
    timings["total_s"] = time.perf_counter() - started
    summary["timings"] = timings
    ctx.storage.write_bytes(
        paths.evaluation_summary(evaluation.id), json.dumps(summary, indent=2).encode(), content_type="application/json"
    )
    return {
        "summary": entity_summary(summary),
        "result_prefix": paths.evaluation_prefix(evaluation.id),
        "timings": timings,
        "message": _headline(summary, spec_of(evaluation.task).headline(dataset.shape)),
    }


def _headline(summary: dict, metric: str) -> str:
    """The final message: the task's headline metric for the dataset's shape."""
    value = summary.get(metric)
    shown = f"{value:.4f}" if isinstance(value, int | float) else "undefined"
    return f"{metric} {shown} on {summary['instances']} instances"


def _split_shards(ctx: JobContext, dataset: Dataset, split: str) -> tuple[list[Path], dict]:
    """The canonical shards of one split (fetched once into the cache) and the manifest."""
    dataset_dir = _cached(
        ctx,
        f"datasets/{dataset.digest}/{split}",
        lambda d: _fetch_prefix(
            ctx, paths.dataset_prefix(dataset.id), d, only=lambda rel: rel.startswith(f"{split}/") or rel == "manifest.json"
        ),
    )
    manifest = json.loads(inside(dataset_dir, "manifest.json").read_text())
    return [inside(dataset_dir, split, s["name"]) for s in manifest["splits"][split]["shards"]], manifest


def entity_summary(summary: dict) -> dict:
    """What the entity keeps: every scalar metric and the efficiency, not the per-class
    tables or the confusion matrix, which grow with the label count (summary.json has them)."""
    return {k: v for k, v in summary.items() if k not in {"per_class", "confusion_matrix", "label_names", "config"}}


# The body of each task a worker runs, by its name in the daemon's lifecycle table.
BODIES: dict[TaskName, Callable[[JobContext, Any], dict[str, Any]]] = {
    TaskName.verify_model: verify_model,
    TaskName.ingest_dataset: ingest_dataset,
    TaskName.evaluate: evaluate,
}
