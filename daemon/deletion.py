"""Carry out deletions: stop the job, remove the stored objects, delete the dependents,
then the entity.

Events of the entity are deleted with it. Every step is idempotent, so a daemon that dies half-way simply does the rest on a later
turn: the entity stays ``deleting`` until its last step. The record itself is then removed
(not kept as a ``gone`` tombstone): afterwards the API answers 404, as for an id that never
existed, and lists need no filter for tombstones.

Deleting a model or a dataset deletes the evaluations made from it first; the artifact
is removed only once none is left.
"""

from __future__ import annotations

from daemon.cancels import job_stopped
from daemon.context import Context, fields, for_each, log
from shared.entities import Artifact, Entity, Evaluation, EvaluationStatus
from shared.events import Event
from shared.storage import prefixes_of
from shared.store import ANY_ACCOUNT, Txn
from shared.tasks import ARTIFACT_KINDS

DEPENDENT_FIELD = {"Model": "model_id", "Dataset": "dataset_id"}
# Every status but these may move to deleting.
NOT_DELETABLE = (EvaluationStatus.deleting, EvaluationStatus.gone)
EVENT_BATCH = 400  # deletions per transaction (Datastore allows 500 mutations)


def carry_out_deletions(ctx: Context) -> None:
    evaluations = ctx.store.iterate(Evaluation, account=ANY_ACCOUNT, filters={"status": EvaluationStatus.deleting}, order=None)
    for_each(evaluations, lambda e: delete_evaluation(ctx, e), what="delete")
    for cls in ARTIFACT_KINDS:
        artifacts = ctx.store.iterate(cls, account=ANY_ACCOUNT, filters={"status": "deleting"}, order=None)
        for_each(artifacts, lambda a: delete_artifact(ctx, a), what="delete")


def delete_evaluation(ctx: Context, evaluation: Evaluation) -> None:
    if not job_stopped(ctx, evaluation):
        return
    removed = sum(ctx.storage.delete_prefix(p) for p in prefixes_of(Evaluation.kind, evaluation.id))
    if _remove_record(ctx, evaluation):
        ctx.count("deleted")
        log.info("deleted", extra={**fields(evaluation), "objects": removed})


def delete_artifact(ctx: Context, artifact: Artifact) -> None:
    if not job_stopped(ctx, artifact):
        return
    dependents = _dependents(ctx, artifact)
    for evaluation in dependents:
        if evaluation.status not in NOT_DELETABLE:
            ctx.store.transition(
                Evaluation,
                evaluation.id,
                account=ANY_ACCOUNT,
                expected=evaluation.status,
                to=EvaluationStatus.deleting,
                reason="input_deleted",
                message=f"its {artifact.kind.lower()} {artifact.id} is being deleted",
            )
            evaluation = ctx.store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
        delete_evaluation(ctx, evaluation)
    if _dependents(ctx, artifact):
        log.info("dependents remain; deleting the rest on a later turn", extra=fields(artifact))
        return
    removed = sum(ctx.storage.delete_prefix(p) for p in prefixes_of(artifact.kind, artifact.id))
    if _remove_record(ctx, artifact):
        ctx.count("deleted")
        log.info("deleted", extra={**fields(artifact), "objects": removed})


def _dependents(ctx: Context, artifact: Artifact) -> list[Evaluation]:
    field = DEPENDENT_FIELD[artifact.kind]
    return list(ctx.store.iterate(Evaluation, account=ANY_ACCOUNT, filters={field: artifact.id}, order=None))


def _remove_record(ctx: Context, entity: Entity) -> bool:
    """Delete the record, and its events, if it is still ``deleting``; False if it is gone
    already. Events go first, a batch per transaction: a daemon that dies half-way finds
    the record still ``deleting`` and removes the rest on a later turn."""
    while True:
        batch = ctx.store.list(Event, account=ANY_ACCOUNT, filters={"entity_id": entity.id}, order=None, limit=EVENT_BATCH)
        if not batch.items:
            break

        def drop(txn: Txn, events: list[Event] = batch.items) -> None:
            for event in events:
                txn.delete(Event, event.id)

        ctx.store.run_in_transaction(drop)

    def remove(txn: Txn) -> bool:
        current = txn.find(type(entity), entity.id, account=ANY_ACCOUNT)
        if current is None or current.status != "deleting":
            return False
        txn.delete(type(entity), entity.id)
        return True

    return ctx.store.run_in_transaction(remove)
