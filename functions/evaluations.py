"""Ordering evaluations: one per split, found or made in one transaction.

An evaluation's id is derived from its account and fingerprint (model, dataset, split,
canonical inference config), so "has this been run?" is a transactional get, never a
query. Per split: a running or complete one (or one still queued) is reused, a failed or
cancelled one is restarted, a missing one is created — ``waiting`` while the model or the
dataset is not ready, ``pending`` otherwise.

Splits: a dataset's splits are known only after ingestion. When ``splits`` is omitted the
dataset's own splits are used, which requires the dataset to be ready; before that the
caller must name them (a split the dataset turns out not to have fails that evaluation
when the daemon admits it).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pydantic import ValidationError

from shared.api import CreateEvaluations, EvaluationOutcome
from shared.entities import (
    ArtifactStatus,
    Dataset,
    Evaluation,
    EvaluationStatus,
    Model,
    QueueReason,
    evaluation_fingerprint,
    evaluation_id,
    utcnow,
)
from shared.errors import Conflict, Invalid, NotFound, TransitionConflict
from shared.modeltasks import DEFAULT_TASK, SPECS, TaskConfig, spec_of
from shared.pubsub import Hint
from shared.store import Store, Txn
from shared.tasks import LIFECYCLES

log = logging.getLogger(__name__)

E = EvaluationStatus
REUSED = frozenset({E.waiting, E.pending, E.admitted, E.running, E.complete})
RESTARTED = frozenset({E.failed, E.cancelled})
# An input in one of these can never produce a result.
DEAD_INPUT = frozenset({ArtifactStatus.failed, ArtifactStatus.deleting, ArtifactStatus.gone})


def _usable(entity: Model | Dataset, field: str) -> None:
    if entity.status in DEAD_INPUT:
        raise Conflict(
            f"{entity.kind} {entity.id} is {entity.status}: it cannot be evaluated",
            code="input_unusable",
            details={"field": field, "id": entity.id, "status": str(entity.status), "reason": entity.reason},
        )


def _splits(request: CreateEvaluations, dataset: Dataset) -> list[str]:
    if request.splits is not None:
        splits = list(dict.fromkeys(request.splits))  # de-duplicated, order kept
        if dataset.status == ArtifactStatus.ready and dataset.splits is not None:
            unknown = [s for s in splits if s not in dataset.splits]
            if unknown:
                raise Invalid(
                    f"dataset {dataset.id} has no split {', '.join(unknown)}",
                    details={
                        "fields": [
                            {"path": "splits", "message": f"known splits: {sorted(dataset.splits)}", "type": "unknown_split"}
                        ]
                    },
                )
        return splits
    if dataset.status == ArtifactStatus.ready and dataset.splits:
        return sorted(dataset.splits)
    raise Invalid(
        f"dataset {dataset.id} is {dataset.status}: its splits are known once it is ready, so name them",
        details={"fields": [{"path": "splits", "message": "required until the dataset is ready", "type": "missing"}]},
    )


def task_config(task: str, values: dict[str, Any]) -> TaskConfig:
    """``values`` as ``task``'s config, defaults filled in. Raises Invalid, naming each field."""
    try:
        return spec_of(task).parse_config(values, strict=True)
    except ValidationError as e:
        fields = [
            {"path": ".".join(["config", *(str(p) for p in err["loc"])]), "message": err["msg"], "type": err["type"]}
            for err in e.errors()
        ]
        first = fields[0]
        raise Invalid(
            f"config is invalid for a {task} model: {first['path']}: {first['message']}"
            + (f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""),
            details={"fields": fields, "task": task},
        ) from None


def config_values(task: str, values: dict[str, Any], dataset: Dataset) -> dict[str, Any]:
    """The request's config for an evaluation of ``dataset``: a task whose datasets have
    shapes takes the shape from the dataset unless the request names it, and a request
    naming another shape is refused (Invalid ``shape_mismatch``)."""
    field = spec_of(task).shape_field
    if field is None or dataset.shape is None:
        return values
    if field not in values:
        return {**values, field: dataset.shape}
    if values[field] != dataset.shape:
        raise Invalid(
            f"config.{field} is {values[field]!r} but dataset {dataset.id} is a {dataset.shape} dataset",
            code="shape_mismatch",
            details={"fields": [{"path": f"config.{field}", "message": f"must be {dataset.shape!r}", "type": "shape_mismatch"}]},
        )
    return values


def _check_other_splits(config: TaskConfig, splits: list[str], dataset: Dataset) -> None:
    """Raises Invalid when the config reads a split (few-shot examples) the ready dataset lacks."""
    if dataset.status != ArtifactStatus.ready or dataset.splits is None:
        return  # the evaluate job checks once the splits are known
    missing = sorted({other for split in splits for other in config.other_splits(split)} - set(dataset.splits))
    if missing:
        raise Invalid(
            f"dataset {dataset.id} has no split {', '.join(missing)}, which the config reads (fewshot_split)",
            details={
                "fields": [
                    {
                        "path": "config.fewshot_split",
                        "message": f"known splits: {sorted(dataset.splits)}",
                        "type": "unknown_split",
                    }
                ]
            },
        )


def _config_or_none(task: str, values: dict[str, Any]) -> TaskConfig | None:
    try:
        return task_config(task, values)
    except Invalid:
        return None


def _default_name(model: Model, dataset: Dataset, split: str) -> str:
    raw = f"{model.name}-{dataset.name}-{split}".lower()
    name = re.sub(r"[^a-z0-9.-]+", "-", raw)[:63].strip("-.")
    return name or "evaluation"


def order(
    store: Store, request: CreateEvaluations, *, account: str
) -> tuple[list[tuple[EvaluationOutcome, Evaluation]], list[Hint]]:
    """Find or make the requested evaluations in one transaction.

    Raises NotFound (model or dataset missing or another account's), Conflict (an input
    failed or is being deleted; an evaluation is being deleted), Invalid (splits).
    """

    identities: dict[tuple[str, str], tuple[str, str]] = {}  # (task, split) -> (fingerprint, id), each computed once
    # The config is the model's task's; until the model is read, the default task's is a
    # guess that, when right (and it is for every image model), saves a round trip. The
    # default task's datasets have one shape, so the request's config is the whole config.
    guess = DEFAULT_TASK if _config_or_none(DEFAULT_TASK, request.config) is not None else None
    values = request.config  # once the dataset is read: with its shape (config_values)

    def identity(task: str, split: str) -> tuple[str, str]:
        if (task, split) not in identities:
            fingerprint = evaluation_fingerprint(
                model_id=request.model_id, dataset_id=request.dataset_id, split=split, config=task_config(task, values)
            )
            identities[task, split] = fingerprint, evaluation_id(account=account, fingerprint=fingerprint)
        return identities[task, split]

    def ids_of(task: str | None, splits: list[str]) -> list[str]:
        return [identity(task, s)[1] for s in splits] if task is not None else []

    def work(txn: Txn) -> list[tuple[EvaluationOutcome, Evaluation]]:
        nonlocal values
        # One round trip when the splits are named (and the task guessed); otherwise the
        # model says which task and the dataset which splits.
        named = list(dict.fromkeys(request.splits)) if request.splits is not None else []
        wanted: list = [(Model, request.model_id), (Dataset, request.dataset_id)]
        found = txn.find_many(wanted + [(Evaluation, eid) for eid in ids_of(guess, named)], account=account)
        model, dataset = found[0], found[1]
        if model is None:
            if guess is None and not any(_config_or_none(task, request.config) for task in SPECS):
                task_config(DEFAULT_TASK, request.config)  # a config no task takes is a 422 first (raises)
            raise NotFound(f"Model {request.model_id} not found", details={"kind": "Model", "id": request.model_id})
        if dataset is None:
            raise NotFound(f"Dataset {request.dataset_id} not found", details={"kind": "Dataset", "id": request.dataset_id})
        _usable(model, "model_id")
        _usable(dataset, "dataset_id")
        if dataset.task != model.task:
            raise Invalid(
                f"model {model.id} is for {model.task} and dataset {dataset.id} for {dataset.task}: they cannot be evaluated together",
                code="task_mismatch",
                details={"model_task": model.task, "dataset_task": dataset.task},
            )
        task = model.task
        values = config_values(task, request.config, dataset)
        config = task_config(task, values)
        waiting_for = None
        if model.status != ArtifactStatus.ready:
            waiting_for = QueueReason.waiting_for_model
        elif dataset.status != ArtifactStatus.ready:
            waiting_for = QueueReason.waiting_for_dataset
        start = E.waiting if waiting_for else E.pending
        reason = str(waiting_for or QueueReason.queued)
        now = utcnow()
        splits = _splits(request, dataset)
        _check_other_splits(config, splits, dataset)
        if splits == named and task == guess:
            existing_by_split = dict(zip(named, found[2:]))
        else:
            existing_by_split = dict(zip(splits, txn.find_many([(Evaluation, e) for e in ids_of(task, splits)], account=account)))
        out = []
        for split in splits:
            fingerprint, eid = identity(task, split)
            existing = existing_by_split[split]
            if existing is not None and existing.status in REUSED:
                out.append((EvaluationOutcome.reused, existing))
                continue
            if existing is not None and existing.status == E.deleting:
                raise Conflict(
                    f"evaluation {eid} (split {split}) is being deleted; order it again once it is gone",
                    code="being_deleted",
                    details={"id": eid, "split": split},
                )
            if existing is not None and existing.status in RESTARTED:
                restarted = Evaluation.model_validate(
                    {
                        **existing.model_dump(),
                        "status": start,
                        "reason": reason,
                        "message": "restarted on request",
                        "updated_at": now,
                        "status_changed_at": now,
                        "retry_base": existing.attempts,
                        **LIFECYCLES[Evaluation.kind].restart(),
                        # A cancelled job the daemon has yet to stop keeps its name until it has.
                        "job_name": existing.job_name if existing.stopping else None,
                    }
                )
                txn.put(restarted)
                out.append((EvaluationOutcome.restarted, restarted))
                continue
            # Missing, or gone (deleted earlier): made anew under the same id.
            created = Evaluation(
                id=eid,
                account=account,
                name=request.name or _default_name(model, dataset, split),
                labels=request.labels,
                status=start,
                reason=reason,
                model_id=model.id,
                dataset_id=dataset.id,
                split=split,
                task=task,
                config=config.model_dump(),
                fingerprint=fingerprint,
                created_at=now,
                updated_at=now,
                status_changed_at=now,
            )
            txn.put(created)
            out.append((EvaluationOutcome.created, created))
        return out

    results = store.run_in_transaction(work)
    hints = [
        Hint(kind=Evaluation.kind, id=e.id, account=account) for outcome, e in results if outcome != EvaluationOutcome.reused
    ]
    log.info(
        "evaluations ordered",
        extra={"account": account, "outcomes": {e.id: str(o) for o, e in results}},
    )
    return results, hints


DELETABLE = [s for s in EvaluationStatus if E.deleting in Evaluation.transitions[s]]
CANCELLABLE = [s for s in EvaluationStatus if E.cancelled in Evaluation.transitions[s]]


def cancel(store: Store, evaluation_id_: str, *, account: str) -> tuple[Evaluation, list[Hint]]:
    """Move a waiting, pending, admitted or running evaluation to ``cancelled``; the daemon
    then stops its job (``stopping`` until it has). Its prediction shards are kept, so
    ordering it again resumes from them. Idempotent: an already cancelled one is returned
    as it is. Raises NotFound, or Conflict when it has finished or is being deleted.
    """
    try:
        evaluation = store.transition(
            Evaluation,
            evaluation_id_,
            account=account,
            expected=CANCELLABLE,
            to=E.cancelled,
            reason="cancel_requested",
            message="cancelled by the owner",
            stopping=True,
            lease_owner=None,
            lease_expires_at=None,
            finished_at=utcnow(),
            queue_position=None,
        )
    except TransitionConflict as e:
        if e.current is None:
            raise NotFound(
                f"Evaluation {evaluation_id_} not found", details={"kind": "Evaluation", "id": evaluation_id_}
            ) from None
        if e.current == E.cancelled:
            return store.get(Evaluation, evaluation_id_, account=account), []
        raise Conflict(
            f"evaluation {evaluation_id_} is {e.current}: only a waiting, pending, admitted or running one can be cancelled",
            code="not_cancellable",
            details={"id": evaluation_id_, "status": e.current, "cancellable": [str(s) for s in CANCELLABLE]},
        ) from None
    log.info("evaluation cancelled", extra={"account": account, "task_id": evaluation.id})
    return evaluation, [Hint(kind=Evaluation.kind, id=evaluation.id, account=account)]


def request_deletion(store: Store, evaluation_id_: str, *, account: str) -> tuple[Evaluation, list[Hint]]:
    """Cancel (if running) and delete: the evaluation becomes ``deleting``; the daemon stops
    its job and removes its results. Idempotent; raises NotFound."""
    try:
        evaluation = store.transition(
            Evaluation,
            evaluation_id_,
            account=account,
            expected=DELETABLE,
            to=E.deleting,
            reason="deletion_requested",
            message="cancelled and deleted by the owner",
        )
    except TransitionConflict as e:
        if e.current is None:
            raise NotFound(
                f"Evaluation {evaluation_id_} not found", details={"kind": "Evaluation", "id": evaluation_id_}
            ) from None
        return store.get(Evaluation, evaluation_id_, account=account), []
    return evaluation, [Hint(kind=Evaluation.kind, id=evaluation.id, account=account)]
