"""Evaluations: order (find or make, one per split), read, list, cancel and delete."""

from __future__ import annotations

from functions import evaluations
from functions.routes.views import history, labels_filter, view
from functions.routing import Router
from functions.services import Call
from shared.api import (
    CreateEvaluations,
    EvaluationListQuery,
    EvaluationOutcome,
    EvaluationPage,
    EvaluationsOrdered,
    EvaluationView,
    EventPage,
    OrderedEvaluation,
    PageQuery,
)
from shared.entities import Evaluation, Scope

router = Router("evaluations", "Evaluations of a model on a dataset split, reused whenever the same one was asked for.")
ID = {"evaluation_id": "evl"}


@router.post(
    "/v1/evaluations", scope=Scope.write, body=CreateEvaluations, response=EvaluationsOrdered, status=201, statuses=(200,)
)
def create_evaluations(call: Call, *, body: CreateEvaluations) -> tuple[EvaluationsOrdered, int]:
    """Order evaluations: 201 when any was created or restarted, 200 when all were reused."""
    results, hints = evaluations.order(call.store, body, account=call.account)
    call.services.hint(hints)
    reply = EvaluationsOrdered(evaluations=[OrderedEvaluation(outcome=o, evaluation=view(EvaluationView, e)) for o, e in results])
    fresh = any(o != EvaluationOutcome.reused for o, _ in results)
    return reply, 201 if fresh else 200


@router.get("/v1/evaluations/{evaluation_id}", scope=Scope.read, response=EvaluationView, params=ID)
def get_evaluation(call: Call, *, evaluation_id: str) -> EvaluationView:
    """One evaluation, with its progress and summary metrics."""
    return view(EvaluationView, call.store.get(Evaluation, evaluation_id, account=call.account))


@router.get("/v1/evaluations", scope=Scope.read, query=EvaluationListQuery, response=EvaluationPage)
def list_evaluations(call: Call, *, query: EvaluationListQuery) -> EvaluationPage:
    """The account's evaluations, newest first."""
    page = call.store.list(
        Evaluation,
        account=call.account,
        filters={"status": query.status, "name": query.name, "model_id": query.model_id, "dataset_id": query.dataset_id},
        labels=labels_filter(query.labels),
        limit=query.limit,
        page_token=query.page_token,
    )
    return EvaluationPage(items=[view(EvaluationView, e) for e in page.items], next_page_token=page.next_page_token)


@router.post("/v1/evaluations/{evaluation_id}/cancel", scope=Scope.write, response=EvaluationView, status=202, params=ID)
def cancel_evaluation(call: Call, *, evaluation_id: str) -> EvaluationView:
    """Cancel an evaluation: the daemon stops its job; its shards stay, so ordering it again resumes."""
    evaluation, hints = evaluations.cancel(call.store, evaluation_id, account=call.account)
    call.services.hint(hints)
    return view(EvaluationView, evaluation)


@router.get("/v1/evaluations/{evaluation_id}/events", scope=Scope.read, query=PageQuery, response=EventPage, params=ID)
def evaluation_events(call: Call, *, evaluation_id: str, query: PageQuery) -> EventPage:
    """The evaluation's status changes, oldest first."""
    return history(call, Evaluation, evaluation_id, query)


@router.delete("/v1/evaluations/{evaluation_id}", scope=Scope.write, response=EvaluationView, status=202, params=ID)
def delete_evaluation(call: Call, *, evaluation_id: str) -> EvaluationView:
    """Cancel an evaluation and delete it and its results (carried out by the daemon)."""
    evaluation, hints = evaluations.request_deletion(call.store, evaluation_id, account=call.account)
    call.services.hint(hints)
    return view(EvaluationView, evaluation)
