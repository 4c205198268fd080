"""The contract between the daemon and the workers: which task runs for which entity, and how.

The daemon claims an entity (owner + lease), records the attempt and a deterministic job
name, and starts ``python -m workers <task> <entity id> --attempt N``. The worker checks the
attempt is still current before each write, so a stale job can never overwrite a newer one.

``LIFECYCLES`` declares, once per entity kind, every fact of that contract the daemon,
the functions and the workers share: which status the daemon claims from and leaves the
entity in, what the worker moves it through, where an expired attempt goes back to and
which fields a new attempt (or a restart on request) clears.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from shared.entities import Artifact, ArtifactStatus, Dataset, Entity, Evaluation, EvaluationStatus, Model


class TaskName(StrEnum):
    verify_model = "verify-model"
    ingest_dataset = "ingest-dataset"
    evaluate = "evaluate"


# What every new attempt starts without: the last attempt's heartbeat and progress.
ATTEMPT_RESET: dict[str, Any] = {
    "heartbeat_at": None,
    "progress": None,
    "progress_message": None,
    "started_at": None,
    "finished_at": None,
}


@dataclass(frozen=True)
class Lifecycle:
    """One entity kind's task, as the daemon and the worker move it along."""

    cls: type[Artifact] | type[Evaluation]
    task: TaskName
    queued: str  # the daemon claims from here; an expired attempt goes back here
    start: str  # the status the daemon's claim leaves the entity in
    working: str  # the status while the worker runs
    done: str
    failed: str
    # Whether the job may take the GPU pool: only when the entity's model task wants one.
    may_use_gpu: bool = False
    requeue_reason: str = "retrying"  # the entity's reason while a retried attempt waits
    # Fields of this kind that a new attempt clears, beyond ATTEMPT_RESET.
    attempt_reset: dict[str, Any] = field(default_factory=dict)
    # And what a restart on request clears too (the result of the last run).
    restart_reset: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> tuple[str, ...]:
        """Statuses in which the entity has a claimed attempt whose job the daemon follows."""
        return tuple(dict.fromkeys((self.start, self.working)))

    def started(self, entity: Entity) -> bool:
        """Whether the worker of the current attempt has started (it has beaten or moved on)."""
        return getattr(entity, "heartbeat_at", None) is not None or (self.working != self.start and entity.status == self.working)

    def new_attempt(self) -> dict[str, Any]:
        return {**ATTEMPT_RESET, **self.attempt_reset}

    def restart(self) -> dict[str, Any]:
        """A restart on request: no lease, no job, no result; the retry budget starts over."""
        return {**self.new_attempt(), "lease_owner": None, "lease_expires_at": None, "job_name": None, **self.restart_reset}


LIFECYCLES: dict[str, Lifecycle] = {
    lifecycle.cls.kind: lifecycle
    for lifecycle in (
        Lifecycle(
            Model,
            TaskName.verify_model,
            ArtifactStatus.uploaded,
            ArtifactStatus.verifying,
            ArtifactStatus.verifying,
            ArtifactStatus.ready,
            ArtifactStatus.failed,
        ),
        Lifecycle(
            Dataset,
            TaskName.ingest_dataset,
            ArtifactStatus.uploaded,
            ArtifactStatus.verifying,
            ArtifactStatus.verifying,
            ArtifactStatus.ready,
            ArtifactStatus.failed,
        ),
        Lifecycle(
            Evaluation,
            TaskName.evaluate,
            EvaluationStatus.pending,
            EvaluationStatus.admitted,
            EvaluationStatus.running,
            EvaluationStatus.complete,
            EvaluationStatus.failed,
            may_use_gpu=True,
            requeue_reason="queued",
            attempt_reset={"queue_position": None},
            restart_reset={"summary": None},
        ),
    )
}
LIFECYCLE_OF_TASK: dict[TaskName, Lifecycle] = {lifecycle.task: lifecycle for lifecycle in LIFECYCLES.values()}
KIND_FOR_TASK: dict[TaskName, str] = {lifecycle.task: kind for kind, lifecycle in LIFECYCLES.items()}
# The kinds a worker verifies (uploaded once, then checked): models and datasets.
ARTIFACT_KINDS: tuple[type[Artifact], ...] = tuple(
    lifecycle.cls for lifecycle in LIFECYCLES.values() if issubclass(lifecycle.cls, Artifact)
)


def worker_command(task: TaskName, entity_id: str, attempt: int) -> list[str]:
    """The argv (after the Python interpreter) that runs one task attempt."""
    return ["-m", "workers", str(task), entity_id, "--attempt", str(attempt)]


def job_name(task: TaskName, entity_id: str, attempt: int) -> str:
    """Deterministic per task attempt: a re-submit after a crash finds the same job.

    A valid Kubernetes name (DNS-1123 label, at most 63 characters).
    """
    short = hashlib.sha256(f"{task}:{entity_id}".encode()).hexdigest()[:8]
    return f"assay-{task}-{entity_id.replace('_', '-')}-{short}-a{attempt}"[:63].rstrip("-")
