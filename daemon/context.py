"""What every phase of a turn works with, and the per-kind facts the phases share."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from daemon.backend import Backend, Task
from daemon.settings import DaemonSettings
from shared.entities import Artifact, Entity, Evaluation
from shared.errors import TransitionConflict, Unavailable
from shared.modeltasks import spec_of
from shared.settings import Settings
from shared.storage import Storage
from shared.store import Store
from shared.tasks import LIFECYCLES

log = logging.getLogger("daemon")

E = TypeVar("E", bound=Entity)


@dataclass
class Context:
    settings: Settings
    daemon: DaemonSettings
    store: Store
    storage: Storage
    backend: Backend
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def replica(self) -> str:
        return self.daemon.replica_id

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n


def task_of(entity: Artifact | Evaluation, *, attempt: int | None = None) -> Task:
    lifecycle = LIFECYCLES[entity.kind]
    return Task(
        name=lifecycle.task,
        entity_id=entity.id,
        account=entity.account,
        attempt=entity.attempts if attempt is None else attempt,
        gpu=lifecycle.may_use_gpu and spec_of(entity.task).gpu,
    )


def fields(entity: Entity) -> dict[str, Any]:
    """Structured log fields naming an entity."""
    return {"kind": entity.kind, "task_id": entity.id, "account": entity.account, "status": str(entity.status)}


def for_each(entities: Iterable[E], action: Callable[[E], None], *, what: str) -> None:
    """Apply ``action`` to each entity; a lost race or a passing outage skips only that one.

    Anything else is a bug and propagates: the turn fails, loudly.
    """
    for entity in entities:
        try:
            action(entity)
        except TransitionConflict as e:
            log.info(f"{what}: lost a race, moving on", extra={**fields(entity), "current": e.current})
        except Unavailable as e:
            log.warning(f"{what}: temporarily unavailable", extra={**fields(entity), "error": e.message})
