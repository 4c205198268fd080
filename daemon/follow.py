"""Follow every claimed task's job, and retry or fail the ones that died.

The entity says what the worker reported; the backend says what became of the job. A task
is dead when its job ended without the worker reporting a final status, when its job is
gone after the worker had started, or when its lease expired (no heartbeat). A dead task
goes back to the queue for another attempt, or, after ``max_attempts``, to ``failed`` with
the last cause. Every move is a compare-and-set on the attempt number, so a worker that
reports at the same moment wins or loses cleanly, and a stale job can write nothing.

Entities are read before job states: a job that exists when an entity is read as claimed
shows up in the later job listing, so "missing" is never a listing race (and a missing job
is still checked once more by name before acting).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from daemon.backend import JOB_ENDED, JobState, JobStatus
from daemon.claims import submit
from daemon.context import Context, fields, for_each, log
from shared.entities import Artifact, Evaluation, utcnow
from shared.store import ANY_ACCOUNT
from shared.tasks import LIFECYCLES


def follow_active(ctx: Context) -> None:
    active: list[Artifact | Evaluation] = []
    for lifecycle in LIFECYCLES.values():
        for status in lifecycle.active:
            active += ctx.store.iterate(lifecycle.cls, account=ANY_ACCOUNT, filters={"status": status}, order=None)
    if not active:
        return
    jobs = ctx.backend.statuses()
    now = utcnow()
    for_each(active, lambda entity: follow_one(ctx, entity, jobs.get(entity.job_name or ""), now=now), what="follow")


def follow_one(ctx: Context, entity: Artifact | Evaluation, job: JobStatus | None, *, now: dt.datetime) -> None:
    if entity.job_name is None:
        retry_or_fail(ctx, entity, why="claimed without a job")
        return
    if job is None or job.state == JobState.missing:
        job = ctx.backend.status(entity.job_name)
    started = LIFECYCLES[entity.kind].started(entity)
    lease_expired = entity.lease_expires_at is None or entity.lease_expires_at <= now

    if job.state in JOB_ENDED:
        if job.state == JobState.succeeded:
            why = "the worker exited without reporting a result"
        else:
            why = f"the job failed ({job.message})" if job.message else "the job failed"
        retry_or_fail(ctx, entity, why=why)
    elif job.state == JobState.missing:
        if not started and not lease_expired:
            # Claimed, but the submit never happened or never took (a crash, a busy backend).
            submit(ctx, entity)
        else:
            retry_or_fail(ctx, entity, why="the job disappeared")
    elif lease_expired:
        if job.state == JobState.pending and not started:
            # The lease measures the worker's liveness, and the worker has not started yet
            # (no node, no GPU, image pulling): hold the claim. The Job's deadline bounds this.
            ctx.store.update(
                type(entity),
                entity.id,
                account=ANY_ACCOUNT,
                expected=str(entity.status),
                check=lambda current: current.attempts == entity.attempts,
                lease_expires_at=now + dt.timedelta(seconds=ctx.settings.lease_seconds),
            )
            log.info("job not started yet; lease extended", extra={**fields(entity), "job": entity.job_name})
        else:
            since = entity.heartbeat_at.isoformat() if entity.heartbeat_at else "the claim"
            retry_or_fail(ctx, entity, why=f"the lease expired: no heartbeat since {since}", cancel_job=True)


def retry_or_fail(ctx: Context, entity: Artifact | Evaluation, *, why: str, cancel_job: bool = False) -> None:
    """Put a dead attempt back in the queue, or fail the task after ``max_attempts``.

    Raises TransitionConflict when the worker (or another replica) changed it first.
    """
    cls = type(entity)
    lifecycle = LIFECYCLES[entity.kind]
    attempt = entity.attempts
    common: dict[str, Any] = dict(
        account=ANY_ACCOUNT,
        expected=[str(s) for s in lifecycle.active],
        check=lambda current: current.attempts == attempt and current.job_name == entity.job_name,
        lease_owner=None,
        lease_expires_at=None,
    )
    if attempt - entity.retry_base >= ctx.daemon.max_attempts:
        ctx.store.transition(
            cls,
            entity.id,
            to=lifecycle.failed,
            reason="attempts_exhausted",
            message=f"failed after {attempt - entity.retry_base} attempts; the last: {why}",
            finished_at=utcnow(),
            **common,
        )
        ctx.count("failed")
        log.warning("task failed for good", extra={**fields(entity), "attempt": attempt, "why": why})
    else:
        ctx.store.transition(
            cls,
            entity.id,
            to=lifecycle.queued,
            reason=lifecycle.requeue_reason,
            message=f"attempt {attempt} failed: {why}; it will be retried",
            **common,
        )
        ctx.count("retried")
        log.warning("task attempt died; requeued", extra={**fields(entity), "attempt": attempt, "why": why})
    if cancel_job and entity.job_name:
        ctx.backend.cancel(entity.job_name)
