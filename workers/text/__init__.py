"""Text classification: a ``*ForSequenceClassification`` model with its tokenizer, evaluated
on datasets of texts (and optional text pairs) with class labels.

The three functions every task module exposes: ``verify_model_archive`` (``workers.verify``
with the text classifier's kind, ``workers.text.model``), ``ingest_dataset`` (Parquet,
JSON Lines or CSV into canonical shards, ``workers.text.dataset``) and ``evaluate``
(``workers.text.inference``).
"""

from __future__ import annotations

from pathlib import Path

from workers.archive import ArchiveLimits
from workers.text.dataset import ingest_dataset
from workers.text.inference import evaluate
from workers.text.model import TEXT_CLASSIFIER
from workers.verify import ModelReport, verify_model_archive as _verify_archive

__all__ = ["evaluate", "ingest_dataset", "verify_model_archive"]


def verify_model_archive(archive: Path, work_dir: Path, *, limits: ArchiveLimits | None = None) -> tuple[Path, ModelReport]:
    """Extract ``archive`` safely under ``work_dir`` and verify it as a text classifier.

    Returns the directory of verified files and the report. Raises ``WorkerFailure``.
    """
    return _verify_archive(archive, work_dir, limits=limits or ArchiveLimits(), kind=TEXT_CLASSIFIER)
