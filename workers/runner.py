"""One task attempt's lifecycle: check it is still ours, start, heartbeat, finish by compare-and-set.

The daemon claimed the entity, set ``attempts=N`` and the working status (``verifying``
for artifacts, ``admitted`` for evaluations), and started ``python -m workers <task> <id>
--attempt N``. Every write here is a compare-and-set that also checks ``attempts == N``,
so a stale attempt can never overwrite a newer one. A heartbeat thread renews the lease
and writes progress at most once per ``heartbeat_seconds``; when a heartbeat finds the
task gone (cancelled, deleted, requeued) the work stops at its next checkpoint and the
attempt exits without writing.

Exit codes: 0 when the attempt recorded its outcome (``ready``/``complete`` or ``failed``
with a reason) or found the task no longer its own; 75 (``EX_TEMPFAIL``) on a temporary
outage, leaving the entity for the daemon to requeue; 1 when an unexpected error was
recorded as ``failed``/``internal_error``.

Only an outage is temporary (``TEMPORARY``: ``Unavailable``, ``RateLimited``). Everything
else ends the task on this attempt: a refusal of the input (``WorkerFailure``), a backend
refusing a request as it is (``Invalid`` from ``translated_google_errors``: an entity over
Datastore's size limit is the same on every attempt), and a bug.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from shared.entities import Entity, utcnow
from shared.errors import AssayError, RateLimited, TransitionConflict, Unavailable
from shared.settings import Settings
from shared.storage import Storage
from shared.store import ANY_ACCOUNT, Store
from shared.tasks import LIFECYCLE_OF_TASK, TaskName
from workers import jobs
from workers.failures import FailureReason, WorkerFailure
from workers.workdir import inside

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TEMPFAIL = 75
TEMPORARY = (Unavailable, RateLimited)
# The entity's message is for people and partly built from user data (label lists…):
# bounded, so the final write stays far below Datastore's entity size limit.
MAX_MESSAGE_CHARS = 2000


def bounded_message(message: str | None) -> str | None:
    if message is None or len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 1] + "…"


class TaskLost(Exception):
    """The entity is no longer this attempt's: cancelled, deleted or requeued."""


class Heartbeat:
    """Renews the lease and writes the latest progress every ``interval`` seconds, in a thread."""

    def __init__(self, runner: TaskRunner, interval: float):
        self.runner = runner
        self.interval = interval
        self.stopped = threading.Event()
        self.lost = threading.Event()
        self.progress: tuple[float, str] | None = None
        self.thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=self.interval + 30)

    def report(self, fraction: float, message: str) -> None:
        self.progress = (min(max(fraction, 0.0), 1.0), message)

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.beat()
            except TaskLost:
                self.lost.set()
                return
            except AssayError as e:  # an outage: the lease has slack, try again next beat
                log.warning("heartbeat failed", extra={**self.runner.fields, "error": str(e)})

    def beat(self) -> None:
        changes: dict[str, Any] = self.runner.lease_fields()
        if self.progress is not None:
            changes["progress"], changes["progress_message"] = self.progress
        self.runner.update(**changes)


class TaskRunner:
    def __init__(self, *, settings: Settings, store: Store, storage: Storage, task: TaskName, entity_id: str, attempt: int):
        self.settings = settings
        self.store = store
        self.storage = storage
        self.task = TaskName(task)
        self.entity_id = entity_id
        self.attempt = attempt
        self.life = LIFECYCLE_OF_TASK[self.task]
        self.fields = {"task": str(self.task), "entity_id": entity_id, "attempt": attempt}
        self.heartbeat: Heartbeat | None = None

    # -- compare-and-set helpers, all checking that the attempt is still ours --

    def _ours(self, entity: Entity) -> bool:
        return getattr(entity, "attempts", None) == self.attempt

    def lease_fields(self) -> dict[str, Any]:
        now = utcnow()
        return {"heartbeat_at": now, "lease_expires_at": now + dt.timedelta(seconds=self.settings.lease_seconds)}

    def update(self, **changes: Any) -> Entity:
        try:
            return self.store.update(
                self.life.cls, self.entity_id, account=ANY_ACCOUNT, expected=self.life.working, check=self._ours, **changes
            )
        except TransitionConflict as e:
            raise TaskLost(str(e)) from e

    def finish(self, to: str, *, reason: str | None = None, message: str | None = None, **changes: Any) -> bool:
        """The final compare-and-set; False when the task was no longer ours (a normal outcome)."""
        try:
            self.store.transition(
                self.life.cls,
                self.entity_id,
                account=ANY_ACCOUNT,
                expected=self.life.working,
                to=to,
                reason=reason,
                message=bounded_message(message),
                check=self._ours,
                finished_at=utcnow(),
                **changes,
            )
        except TransitionConflict as e:
            log.info("final status not written: the task is no longer ours", extra={**self.fields, "error": str(e)})
            return False
        log.info("task finished", extra={**self.fields, "status": str(to), "reason": reason})
        return True

    def checkpoint(self) -> None:
        if self.heartbeat is not None and self.heartbeat.lost.is_set():
            raise TaskLost("a heartbeat found the task gone")

    # -- the attempt --

    def begin(self) -> Entity | None:
        """Move to the working status (or stamp it); None when this attempt is stale."""
        entity = self.store.find(self.life.cls, self.entity_id, account=ANY_ACCOUNT)
        if entity is None or entity.status != self.life.start or not self._ours(entity):
            found = None if entity is None else (str(entity.status), getattr(entity, "attempts", None))
            log.info("stale attempt, nothing to do", extra={**self.fields, "found": found})
            return None
        try:
            if self.life.start != self.life.working:
                return self.store.transition(
                    self.life.cls,
                    self.entity_id,
                    account=ANY_ACCOUNT,
                    expected=self.life.start,
                    to=self.life.working,
                    check=self._ours,
                    started_at=utcnow(),
                    progress=0.0,
                    **self.lease_fields(),
                )
            return self.update(started_at=utcnow(), progress=0.0, **self.lease_fields())
        except (TransitionConflict, TaskLost) as e:
            log.info("lost the start to another writer", extra={**self.fields, "error": str(e)})
            return None

    def _body(self, ctx: jobs.JobContext, entity: Entity) -> dict[str, Any]:
        return jobs.BODIES[self.task](ctx, entity)

    def run(self) -> int:
        log.info("task attempt starting", extra=self.fields)
        entity = self.begin()
        if entity is None:
            return EXIT_OK
        cache_dir = Path(self.settings.cache_dir)
        work_root = inside(cache_dir, "work")
        work_root.mkdir(parents=True, exist_ok=True)
        work_dir = Path(tempfile.mkdtemp(prefix=f"{self.task}-{self.entity_id}-a{self.attempt}-", dir=work_root))
        try:
            with Heartbeat(self, self.settings.heartbeat_seconds) as heartbeat:
                self.heartbeat = heartbeat
                ctx = jobs.JobContext(self.store, self.storage, cache_dir, work_dir, heartbeat.report, self.checkpoint)
                try:
                    changes = self._body(ctx, entity)
                except WorkerFailure as e:
                    # ``message`` is a LogRecord attribute: the refusal's text goes as ``refusal``.
                    log.info("input refused", extra={**self.fields, "reason": str(e.reason), "refusal": e.message})
                    self.finish(self.life.failed, reason=str(e.reason), message=e.message)
                    return EXIT_OK
            message = changes.pop("message", None)
            self.finish(self.life.done, message=message, progress=1.0, progress_message="done", **changes)
            return EXIT_OK
        except TaskLost as e:
            log.info("task taken away; stopping without writing", extra={**self.fields, "error": str(e)})
            return EXIT_OK
        except TEMPORARY as e:
            log.warning("temporary failure; leaving the task to be requeued", extra={**self.fields, "error": str(e)})
            return EXIT_TEMPFAIL
        except AssayError as e:
            # Permanent: a backend refused a request as it is; another attempt would meet
            # the same refusal. Its message is ours (no traceback), so the entity keeps it.
            log.error("a backend refused the task's request", extra={**self.fields, "error": e.message, "code": e.code})
            self.finish(self.life.failed, reason=str(FailureReason.internal_error), message=e.message)
            return EXIT_ERROR
        except Exception as e:
            # A bug, not the input's fault: record it so the entity does not sit until its
            # lease expires, and keep the traceback in the log (never in the entity).
            log.exception("task attempt crashed", extra=self.fields)
            self.finish(
                self.life.failed, reason=str(FailureReason.internal_error), message=f"internal error ({type(e).__name__})"
            )
            return EXIT_ERROR
        finally:
            self.heartbeat = None
            shutil.rmtree(work_dir, ignore_errors=True)
