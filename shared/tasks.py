"""The contract between the daemon and the workers: which task runs for which entity, and how.

The daemon claims an entity (owner + lease), records the attempt and a deterministic job
name, and starts ``python -m workers <task> <entity id> --attempt N``. The worker checks the
attempt is still current before each write, so a stale job can never overwrite a newer one.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum


class TaskName(StrEnum):
    verify_model = "verify-model"
    ingest_dataset = "ingest-dataset"
    evaluate = "evaluate"


TASK_FOR_KIND = {"Model": TaskName.verify_model, "Dataset": TaskName.ingest_dataset, "Evaluation": TaskName.evaluate}
KIND_FOR_TASK = {task: kind for kind, task in TASK_FOR_KIND.items()}


def worker_command(task: TaskName, entity_id: str, attempt: int) -> list[str]:
    """The argv (after the Python interpreter) that runs one task attempt."""
    return ["-m", "workers", str(task), entity_id, "--attempt", str(attempt)]


def job_name(task: TaskName, entity_id: str, attempt: int) -> str:
    """Deterministic per task attempt: a re-submit after a crash finds the same job.

    A valid Kubernetes name (DNS-1123 label, at most 63 characters).
    """
    short = hashlib.sha256(f"{task}:{entity_id}".encode()).hexdigest()[:8]
    return f"assay-{task}-{entity_id.replace('_', '-')}-{short}-a{attempt}"[:63].rstrip("-")
