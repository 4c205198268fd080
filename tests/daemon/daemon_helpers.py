"""Helpers for the daemon tests: entities in given states, the LocalBackend running the
stand-in worker, and turning the loop until a condition holds."""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from daemon.backend import JobState, JobStatus
from daemon.environment import worker_environment
from daemon.local_backend import LocalBackend
from daemon.loop import Daemon
from daemon.settings import DaemonSettings
from shared.entities import (
    ArtifactStatus,
    Dataset,
    Evaluation,
    EvaluationStatus,
    InferenceConfig,
    Model,
    evaluation_fingerprint,
    evaluation_id,
)
from shared.settings import Settings

STAND_IN = Path(__file__).with_name("stand_in_worker.py")


def make_model(account: str = "acc_a", status=ArtifactStatus.ready, **kw) -> Model:
    mid = kw.pop("id", None) or Model.new_id()
    return Model(
        id=mid,
        account=account,
        name=kw.pop("name", "m"),
        status=status,
        declared_size=10,
        content_type="application/zip",
        upload_object=f"uploads/models/{mid}/model.zip",
        **kw,
    )


def make_dataset(account: str = "acc_a", status=ArtifactStatus.ready, **kw) -> Dataset:
    did = kw.pop("id", None) or Dataset.new_id()
    kw.setdefault("splits", {"test": 10} if status == ArtifactStatus.ready else None)
    return Dataset(
        id=did,
        account=account,
        name=kw.pop("name", "d"),
        status=status,
        declared_size=10,
        content_type="application/zip",
        upload_object=f"uploads/datasets/{did}/data.zip",
        **kw,
    )


def make_evaluation(
    model: Model,
    dataset: Dataset,
    *,
    status=EvaluationStatus.pending,
    split: str = "test",
    created_at: dt.datetime | None = None,
    top_k: int = 5,
    **kw,
) -> Evaluation:
    config = InferenceConfig(top_k=top_k)
    fp = evaluation_fingerprint(model_id=model.id, dataset_id=dataset.id, split=split, config=config)
    extra = {"created_at": created_at} if created_at else {}
    return Evaluation(
        id=evaluation_id(account=model.account, fingerprint=fp),
        account=model.account,
        name=kw.pop("name", "e"),
        status=status,
        model_id=model.id,
        dataset_id=dataset.id,
        split=split,
        config=config,
        fingerprint=fp,
        **extra,
        **kw,
    )


def local_backend(settings: Settings, daemon_settings: DaemonSettings, runs_dir: Path) -> LocalBackend:
    return LocalBackend(
        state_dir=daemon_settings.local_state_dir,
        command=[sys.executable, str(STAND_IN)],
        env={**os.environ, **worker_environment(settings), "STANDIN_RUNS": str(runs_dir)},
        max_processes=daemon_settings.local_max_processes,
        ttl_s=daemon_settings.job_ttl_s,
    )


def turn_until(daemon: Daemon, condition: Callable[[], bool], *, timeout: float = 30.0, pause: float = 0.1) -> None:
    """Turn the loop until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        daemon.turn()
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met after {timeout}s")
        time.sleep(pause)


def runs(runs_dir: Path, entity_id: str) -> list[str]:
    path = runs_dir / entity_id
    return path.read_text().splitlines() if path.exists() else []


class MemoryBackend:
    """A backend that only records: jobs stay ``pending`` until a test says otherwise."""

    def __init__(self, free: int | None = None):
        self.free = free
        self.jobs: dict[str, JobState] = {}
        self.submits: list[str] = []
        self.cancels: list[str] = []

    def submit(self, task) -> None:
        self.submits.append(task.job_name)
        self.jobs.setdefault(task.job_name, JobState.pending)

    def status(self, name):
        return JobStatus(name, self.jobs.get(name, JobState.missing))

    def statuses(self):
        return {name: self.status(name) for name in self.jobs}

    def cancel(self, name) -> None:
        self.cancels.append(name)
        self.jobs.pop(name, None)

    def free_slots(self):
        return self.free

    def close(self) -> None:
        pass
