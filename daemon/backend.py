"""What the daemon asks of a place that runs jobs, and the words it uses for their states.

Two backends implement it: ``KubernetesBackend`` (a batch/v1 Job per task attempt) and
``LocalBackend`` (a subprocess per task attempt). Both promise the same three things:

- ``submit`` is idempotent per job name: submitting a name that exists adopts that job;
- ``cancel`` of a job that does not exist succeeds;
- a job is found again by its name after the daemon restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from shared.errors import Invalid, Unavailable
from shared.tasks import KIND_FOR_TASK, TaskName, job_name


class JobState(StrEnum):
    pending = "pending"  # accepted, not started yet (e.g. waiting for a GPU node)
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    missing = "missing"  # no such job (never submitted, or removed)


JOB_ENDED = frozenset({JobState.succeeded, JobState.failed})


@dataclass(frozen=True)
class Task:
    """One attempt at one task: the unit a backend runs."""

    name: TaskName
    entity_id: str
    account: str
    attempt: int
    gpu: bool = False  # the job goes to the GPU pool (an evaluation whose model task wants one)

    @property
    def kind(self) -> str:
        return KIND_FOR_TASK[self.name]

    @property
    def job_name(self) -> str:
        return job_name(self.name, self.entity_id, self.attempt)


@dataclass(frozen=True)
class JobStatus:
    name: str
    state: JobState
    # Why it ended, when it ended badly: an exit code, a signal, a deadline.
    message: str | None = None

    @classmethod
    def missing(cls, name: str) -> JobStatus:
        return cls(name, JobState.missing)


class BackendBusy(Unavailable):
    """The backend has no room for another job now; the task stays claimed and is
    submitted again on a later turn."""

    code = "backend_busy"


class JobRejected(Invalid):
    """The backend refuses the job as specified; submitting it again will not help."""

    code = "job_rejected"


class Backend(Protocol):
    def submit(self, task: Task) -> None:
        """Start the task's job, or adopt it if a job of that name exists.

        Raises BackendBusy or Unavailable (try later), JobRejected (never).
        """

    def status(self, name: str) -> JobStatus: ...

    def statuses(self) -> dict[str, JobStatus]:
        """Every job this backend knows of, by name (one call, for a whole turn)."""

    def cancel(self, name: str) -> None:
        """Stop and remove the job; a missing job is success."""

    def free_slots(self) -> int | None:
        """How many more jobs it would start now; None when it queues without limit."""

    def close(self) -> None: ...
