"""Waiting evaluations: release them once their model and dataset are ready, or fail them
once an input failed or was deleted. Either way the evaluation says why."""

from __future__ import annotations

from daemon.context import Context, fields, for_each, log
from shared.entities import (
    Artifact,
    ArtifactStatus,
    Dataset,
    Evaluation,
    EvaluationStatus,
    Model,
    QueueReason,
)
from shared.store import ANY_ACCOUNT

GONE = (ArtifactStatus.deleting, ArtifactStatus.gone)


def gate_waiting(ctx: Context) -> None:
    waiting = list(
        ctx.store.iterate(Evaluation, account=ANY_ACCOUNT, filters={"status": EvaluationStatus.waiting}, order="created_at")
    )
    inputs: dict[tuple[str, str], Artifact | None] = {}  # one read per input per turn

    def lookup(cls: type[Artifact], entity_id: str, account: str) -> Artifact | None:
        key = (cls.kind, entity_id)
        if key not in inputs:
            inputs[key] = ctx.store.find(cls, entity_id, account=account)
        return inputs[key]

    def gate(evaluation: Evaluation) -> None:
        model = lookup(Model, evaluation.model_id, evaluation.account)
        dataset = lookup(Dataset, evaluation.dataset_id, evaluation.account)
        problem = input_problem(evaluation, model, dataset)
        if problem is not None:
            reason, message = problem
            ctx.store.transition(
                Evaluation,
                evaluation.id,
                account=ANY_ACCOUNT,
                expected=EvaluationStatus.waiting,
                to=EvaluationStatus.failed,
                reason=reason,
                message=message,
            )
            ctx.count("failed")
            log.info("evaluation cannot run", extra={**fields(evaluation), "reason": reason})
            return
        assert model is not None and dataset is not None  # input_problem reports a missing input
        if model.status == ArtifactStatus.ready and dataset.status == ArtifactStatus.ready:
            ctx.store.transition(
                Evaluation,
                evaluation.id,
                account=ANY_ACCOUNT,
                expected=EvaluationStatus.waiting,
                to=EvaluationStatus.pending,
                reason=QueueReason.queued,
                message="inputs ready; queued",
            )
            ctx.count("released")
        else:
            reason = QueueReason.waiting_for_model if model.status != ArtifactStatus.ready else QueueReason.waiting_for_dataset
            waiting_on = model if reason == QueueReason.waiting_for_model else dataset
            message = f"waiting for {waiting_on.kind.lower()} {waiting_on.id} ({waiting_on.status})"
            if evaluation.reason != reason or evaluation.message != message:
                ctx.store.update(
                    Evaluation,
                    evaluation.id,
                    account=ANY_ACCOUNT,
                    expected=EvaluationStatus.waiting,
                    reason=str(reason),
                    message=message,
                )

    for_each(waiting, gate, what="gate")


def input_problem(evaluation: Evaluation, model: Artifact | None, dataset: Artifact | None) -> tuple[str, str] | None:
    """(reason, message) when the evaluation can never run, else None."""
    for label, entity_id, artifact in (("model", evaluation.model_id, model), ("dataset", evaluation.dataset_id, dataset)):
        if artifact is None or artifact.status in GONE:
            return "input_deleted", f"the {label} {entity_id} was deleted"
        if artifact.status == ArtifactStatus.failed:
            detail = f": {artifact.message}" if artifact.message else ""
            return "input_failed", f"the {label} {entity_id} failed verification{detail}"
    if (
        isinstance(dataset, Dataset)
        and dataset.status == ArtifactStatus.ready
        and dataset.splits is not None
        and evaluation.split not in dataset.splits
    ):
        return "unknown_split", f"the dataset {dataset.id} has no split {evaluation.split!r} (it has {sorted(dataset.splits)})"
    return None
