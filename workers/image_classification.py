"""Image classification in the workers: the three functions ``workers.modeltasks`` calls,
over the image modules (``workers.verify``, ``workers.ingest``, ``workers.evaluate``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from shared.modeltasks.image_classification import SPEC, ImageClassificationConfig
from workers.evaluate import EvalOptions, RunStats, align_labels, evaluate_shards, summarize
from workers.ingest import IngestLimits, ingest_dataset as _ingest
from workers.verify import ModelReport, label_names, load_model, verify_model_archive as _verify_archive
from workers.workdir import inside

__all__ = ["SPEC", "verify_model_archive", "ingest_dataset", "evaluate"]


def verify_model_archive(archive: Path, work_dir: Path) -> tuple[Path, ModelReport]:
    return _verify_archive(archive, work_dir)


def ingest_dataset(
    source: Path, out_dir: Path, *, work_dir: Path, shape: str | None = None, limits: IngestLimits | None = None
) -> dict:
    """``workers.ingest.ingest_dataset``; an image dataset has one shape, so ``shape`` is None."""
    return _ingest(source, out_dir, work_dir=work_dir, limits=limits or IngestLimits())


def evaluate(
    model_dir: Path,
    shards: list[Path],
    out_dir: Path,
    *,
    dataset_label_names: list[str],
    config: ImageClassificationConfig,
    on_shard: Callable[[int, Path, RunStats], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    other_splits: Mapping[str, list[Path]] | None = None,
) -> dict:
    """Predictions and the summary (``workers.evaluate``); ``other_splits`` is unused: an
    image classification reads no split but the evaluated one."""
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    model, processor = load_model(model_dir)
    names = label_names(model)
    label_map = align_labels(dataset_label_names, names, config.label_mapping)
    timings["load_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    options = EvalOptions(batch_size=config.batch_size, top_k=config.top_k)
    stats = evaluate_shards(
        model, processor, shards, out_dir, label_map=label_map, options=options, on_shard=on_shard, on_batch=on_batch
    )
    timings["inference_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    summary = summarize([inside(out_dir, s.name) for s in shards], names, stats)
    timings["metrics_s"] = time.perf_counter() - tick
    summary["timings"] = timings
    return summary
