"""Models: register one (with an upload ticket), re-ticket, read, list, delete."""

from __future__ import annotations

from functions import artifacts
from functions.routes.views import history, labels_filter, view
from functions.routing import Router
from functions.services import Call
from shared.api import CreateModel, EventPage, ModelCreated, ModelListQuery, ModelPage, ModelView, PageQuery, UploadTicket
from shared.entities import Model, Scope

router = Router("models", "Models: uploaded once through a signed URL, then verified.")
ID = {"model_id": "mdl"}


@router.post("/v1/models", scope=Scope.write, body=CreateModel, response=ModelCreated, status=201)
def create_model(call: Call, *, body: CreateModel) -> ModelCreated:
    """Register a model; PUT its archive with the returned upload ticket."""
    model, ticket = artifacts.create(
        artifacts.MODELS, body, account=call.account, store=call.store, storage=call.services.storage
    )
    return ModelCreated(model=view(ModelView, model), upload=ticket)


@router.post("/v1/models/{model_id}/upload-ticket", scope=Scope.write, response=UploadTicket, params=ID)
def model_upload_ticket(call: Call, *, model_id: str) -> UploadTicket:
    """A new upload ticket, while the model awaits its upload."""
    return artifacts.new_ticket(artifacts.MODELS, model_id, account=call.account, store=call.store, storage=call.services.storage)


@router.get("/v1/models/{model_id}", scope=Scope.read, response=ModelView, params=ID)
def get_model(call: Call, *, model_id: str) -> ModelView:
    """One model."""
    return view(ModelView, call.store.get(Model, model_id, account=call.account))


@router.get("/v1/models", scope=Scope.read, query=ModelListQuery, response=ModelPage)
def list_models(call: Call, *, query: ModelListQuery) -> ModelPage:
    """The account's models, newest first."""
    page = artifacts.listing(
        artifacts.MODELS,
        account=call.account,
        store=call.store,
        status=query.status,
        name=query.name,
        labels=labels_filter(query.labels),
        limit=query.limit,
        page_token=query.page_token,
    )
    return ModelPage(items=[view(ModelView, m) for m in page.items], next_page_token=page.next_page_token)


@router.get("/v1/models/{model_id}/events", scope=Scope.read, query=PageQuery, response=EventPage, params=ID)
def model_events(call: Call, *, model_id: str, query: PageQuery) -> EventPage:
    """The model's status changes, oldest first."""
    return history(call, Model, model_id, query)


@router.delete("/v1/models/{model_id}", scope=Scope.write, response=ModelView, status=202, params=ID)
def delete_model(call: Call, *, model_id: str) -> ModelView:
    """Delete a model, its files and the evaluations that use it (carried out by the daemon)."""
    model, hints = artifacts.request_deletion(artifacts.MODELS, model_id, account=call.account, store=call.store)
    call.services.hint(hints)
    return view(ModelView, model)
