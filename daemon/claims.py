"""Claim a task (a compare-and-set that records owner, lease and attempt) and submit its job.

The claim commits before the submit. A daemon that dies between the two leaves a claimed
entity whose job does not exist; ``follow`` finds it and submits it (the job name is the
same, so a job that did get created is adopted, never doubled). A daemon that dies after
the submit leaves a job that ``follow`` simply keeps following.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from daemon.backend import BackendBusy, JobRejected
from daemon.context import Context, fields, log, task_of
from shared.entities import Artifact, Evaluation, utcnow
from shared.errors import TransitionConflict, Unavailable
from shared.store import ANY_ACCOUNT
from shared.tasks import ARTIFACT_KINDS, LIFECYCLES, job_name


def claim(ctx: Context, entity: Artifact | Evaluation, *, expected: str, to: str) -> Artifact | Evaluation:
    """Claim ``entity`` for its next attempt. Raises TransitionConflict when someone else
    claimed it first or it changed since it was read."""
    cls = type(entity)
    attempt = entity.attempts + 1
    task = task_of(entity, attempt=attempt)
    changes: dict[str, Any] = dict(
        LIFECYCLES[entity.kind].new_attempt(),
        attempts=attempt,
        lease_owner=ctx.replica,
        lease_expires_at=utcnow() + dt.timedelta(seconds=ctx.settings.lease_seconds),
        job_name=job_name(task.name, entity.id, attempt),
    )
    return ctx.store.transition(
        cls,
        entity.id,
        account=ANY_ACCOUNT,
        expected=expected,
        to=to,
        check=lambda current: current.attempts == entity.attempts,
        **changes,
    )


def submit(ctx: Context, entity: Artifact | Evaluation) -> bool:
    """Submit the job of ``entity``'s current attempt. True when the backend has it.

    A busy or unreachable backend leaves the claim in place (``follow`` submits again); a
    job the backend refuses outright fails the task, since no retry can change that.
    """
    task = task_of(entity)
    try:
        ctx.backend.submit(task)
    except BackendBusy:
        log.info("backend busy; will submit later", extra={**fields(entity), "job": task.job_name})
        return False
    except JobRejected as e:
        log.error("job rejected; failing the task", extra={**fields(entity), "job": task.job_name, "error": e.message})
        ctx.store.transition(
            type(entity),
            entity.id,
            account=ANY_ACCOUNT,
            expected=str(entity.status),
            to=LIFECYCLES[entity.kind].failed,
            reason="job_rejected",
            message=e.message,
            check=lambda current: current.attempts == task.attempt,
            lease_owner=None,
            lease_expires_at=None,
            finished_at=utcnow(),
        )
        return False
    except Unavailable as e:
        log.warning("backend unavailable; will submit later", extra={**fields(entity), "error": e.message})
        return False
    ctx.count("submitted")
    return True


def claim_and_submit(ctx: Context, entity: Artifact | Evaluation, *, expected: str, to: str) -> bool:
    try:
        claimed = claim(ctx, entity, expected=expected, to=to)
    except TransitionConflict as e:
        log.info("claim lost to another replica or a change", extra={**fields(entity), "current": e.current})
        return False
    ctx.count("claimed")
    log.info("claimed", extra={**fields(claimed), "attempt": claimed.attempts, "job": claimed.job_name})
    submit(ctx, claimed)
    return True


def claim_all(ctx: Context, entities: Iterable[Artifact | Evaluation], *, expected: str, to: str) -> int:
    """Claim and submit each, ``claim_threads`` at a time. Returns how many were claimed."""
    entities = list(entities)
    if not entities:
        return 0

    def one(entity):
        try:
            return claim_and_submit(ctx, entity, expected=expected, to=to)
        except Unavailable as e:
            log.warning("claim failed; will retry", extra={**fields(entity), "error": e.message})
            return False

    if len(entities) == 1 or ctx.daemon.claim_threads == 1:
        return sum(one(e) for e in entities)
    with ThreadPoolExecutor(max_workers=min(ctx.daemon.claim_threads, len(entities))) as pool:
        return sum(pool.map(one, entities))


def dispatch_uploaded(ctx: Context) -> None:
    """Uploaded models and datasets, oldest first: claim each for verification/ingestion."""
    room = ctx.backend.free_slots()
    for cls in ARTIFACT_KINDS:
        if room is not None and room <= 0:
            return
        uploaded = list(
            ctx.store.iterate(cls, account=ANY_ACCOUNT, filters={"status": LIFECYCLES[cls.kind].queued}, order="created_at")
        )
        if room is not None:
            uploaded = uploaded[:room]
        lifecycle = LIFECYCLES[cls.kind]
        claimed = claim_all(ctx, uploaded, expected=lifecycle.queued, to=lifecycle.start)
        if room is not None:
            room -= claimed


def claim_evaluations(ctx: Context, evaluations: list[Evaluation]) -> int:
    lifecycle = LIFECYCLES[Evaluation.kind]
    return claim_all(ctx, evaluations, expected=lifecycle.queued, to=lifecycle.start)
