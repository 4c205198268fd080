"""Text classification: a ``*ForSequenceClassification`` model with its tokenizer, evaluated
on datasets of texts (and optional text pairs) with class labels.

The three functions every task module exposes: ``verify_model_archive`` (``workers.verify``
with the text classifier's kind, ``workers.text.model``), ``ingest_dataset`` (Parquet,
JSON Lines or CSV into canonical shards, ``workers.text.dataset``) and ``evaluate``
(``workers.text.inference``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from workers.archive import ArchiveLimits
from workers.canonical import IngestLimits
from workers.evaluate import RunStats
from workers.text.dataset import ingest_dataset as _ingest
from workers.text.inference import TextOptions, evaluate as _evaluate
from workers.text.model import TEXT_CLASSIFIER
from workers.verify import ModelReport, verify_model_archive as _verify_archive

__all__ = ["evaluate", "ingest_dataset", "verify_model_archive"]


def verify_model_archive(archive: Path, work_dir: Path, *, limits: ArchiveLimits | None = None) -> tuple[Path, ModelReport]:
    """Extract ``archive`` safely under ``work_dir`` and verify it as a text classifier.

    Returns the directory of verified files and the report. Raises ``WorkerFailure``.
    """
    return _verify_archive(archive, work_dir, limits=limits or ArchiveLimits(), kind=TEXT_CLASSIFIER)


def ingest_dataset(
    source: Path, out_dir: Path, *, work_dir: Path, shape: str | None = None, limits: IngestLimits | None = None
) -> dict:
    """``workers.text.dataset.ingest_dataset``; a text classification dataset has one shape,
    so ``shape`` is None."""
    return _ingest(source, out_dir, work_dir=work_dir, limits=limits)


def evaluate(
    model_dir: Path,
    shards: list[Path],
    out_dir: Path,
    *,
    dataset_label_names: list[str],
    config,
    on_shard: Callable[[int, Path, RunStats], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    other_splits: Mapping[str, list[Path]] | None = None,
    options: TextOptions | None = None,
) -> dict:
    """``workers.text.inference.evaluate``; ``other_splits`` is unused: a text classification
    reads no split but the evaluated one."""
    return _evaluate(
        model_dir,
        shards,
        out_dir,
        dataset_label_names=dataset_label_names,
        config=config,
        on_shard=on_shard,
        on_batch=on_batch,
        options=options,
    )
