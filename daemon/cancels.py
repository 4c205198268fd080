"""Stop the jobs of cancelled evaluations.

The API moves an evaluation to ``cancelled`` with ``stopping`` set; here the daemon
cancels its job (a Kubernetes Job deleted with foreground propagation, so its Pods go
first; a local process group killed) and clears ``stopping`` once the job can no longer
run. A worker that is still running meanwhile cannot write a result: its compare-and-sets
expect a working status. Prediction shards it already published stay where they are, so
ordering the evaluation again resumes from them. Until ``stopping`` is cleared, admission
leaves a re-ordered evaluation waiting, so two jobs of one evaluation never overlap.
"""

from __future__ import annotations

from daemon.backend import JobState
from daemon.context import Context, fields, for_each, log
from shared.entities import Artifact, Evaluation
from shared.store import ANY_ACCOUNT


def stop_cancelled(ctx: Context) -> None:
    stopping = ctx.store.iterate(Evaluation, account=ANY_ACCOUNT, filters={"stopping": True}, order=None)
    for_each(stopping, lambda e: stop_one(ctx, e), what="stop")


def stop_one(ctx: Context, evaluation: Evaluation) -> None:
    if not job_stopped(ctx, evaluation):
        return
    ctx.store.update(
        Evaluation,
        evaluation.id,
        account=ANY_ACCOUNT,
        check=lambda current: current.stopping and current.job_name == evaluation.job_name,
        stopping=False,
    )
    ctx.count("stopped")
    log.info("cancelled evaluation's job stopped", extra={**fields(evaluation), "job": evaluation.job_name})


def job_stopped(ctx: Context, entity: Artifact | Evaluation) -> bool:
    """Cancel the entity's job; True once it can no longer run or write.

    A cancelled Kubernetes Job lingers until its Pods have stopped (foreground deletion),
    so this answers False until a later turn finds it gone.
    """
    if not entity.job_name:
        return True
    ctx.backend.cancel(entity.job_name)
    if ctx.backend.status(entity.job_name).state in (JobState.pending, JobState.running):
        log.info("waiting for the cancelled job to stop", extra={**fields(entity), "job": entity.job_name})
        return False
    return True
