"""Language models evaluated as lm-evaluation-harness evaluates them (the ``text-generation``
task, ``shared.modeltasks.text_generation``).

``workers.lm.prompts`` builds prompts and draws few-shot examples, ``workers.lm.scoring``
computes log-likelihoods (all choices of an instance from one pass over its context),
``workers.lm.generation`` decodes greedily, and ``workers.lm.engine`` runs the three kinds
(``multiple_choice``, ``generate_answers``, ``perplexity``) and their metrics.

The three functions every task module exposes (``workers.modeltasks``) sit on top:
``verify_model_archive`` (``workers.verify`` with the causal language model's kind,
``workers.lm.model``), ``ingest_dataset`` (Parquet or JSON Lines of a declared shape,
``workers.lm.dataset``) and ``evaluate`` (``workers.lm.evaluation``).
"""

from __future__ import annotations

from pathlib import Path

from workers.archive import ArchiveLimits
from workers.lm.dataset import ingest_dataset
from workers.lm.evaluation import evaluate
from workers.lm.model import CAUSAL_LM
from workers.verify import ModelReport, verify_model_archive as _verify_archive

__all__ = ["evaluate", "ingest_dataset", "verify_model_archive"]


def verify_model_archive(archive: Path, work_dir: Path, *, limits: ArchiveLimits | None = None) -> tuple[Path, ModelReport]:
    """Extract ``archive`` safely under ``work_dir`` and verify it as a causal language model.

    Returns the directory of verified files and the report. Raises ``WorkerFailure``.
    """
    return _verify_archive(archive, work_dir, limits=limits or ArchiveLimits(), kind=CAUSAL_LM)
