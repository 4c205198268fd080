"""Datasets: register one (with an upload ticket), re-ticket, read, list, delete."""

from __future__ import annotations

from functions import artifacts
from functions.routes.views import history, labels_filter, view
from functions.routing import Router
from functions.services import Call
from shared.api import (
    CreateDataset,
    DatasetCreated,
    DatasetListQuery,
    DatasetPage,
    DatasetView,
    EventPage,
    PageQuery,
    UploadTicket,
)
from shared.entities import Dataset, Scope

router = Router("datasets", "Datasets: uploaded once through a signed URL, then ingested into the canonical format.")
ID = {"dataset_id": "dst"}


@router.post("/v1/datasets", scope=Scope.write, body=CreateDataset, response=DatasetCreated, status=201)
def create_dataset(call: Call, *, body: CreateDataset) -> DatasetCreated:
    """Register a dataset; PUT its file with the returned upload ticket."""
    dataset, ticket = artifacts.create(
        artifacts.DATASETS, body, account=call.account, store=call.store, storage=call.services.storage
    )
    return DatasetCreated(dataset=view(DatasetView, dataset), upload=ticket)


@router.post("/v1/datasets/{dataset_id}/upload-ticket", scope=Scope.write, response=UploadTicket, params=ID)
def dataset_upload_ticket(call: Call, *, dataset_id: str) -> UploadTicket:
    """A new upload ticket, while the dataset awaits its upload."""
    return artifacts.new_ticket(
        artifacts.DATASETS, dataset_id, account=call.account, store=call.store, storage=call.services.storage
    )


@router.get("/v1/datasets/{dataset_id}", scope=Scope.read, response=DatasetView, params=ID)
def get_dataset(call: Call, *, dataset_id: str) -> DatasetView:
    """One dataset."""
    return view(DatasetView, call.store.get(Dataset, dataset_id, account=call.account))


@router.get("/v1/datasets", scope=Scope.read, query=DatasetListQuery, response=DatasetPage)
def list_datasets(call: Call, *, query: DatasetListQuery) -> DatasetPage:
    """The account's datasets, newest first."""
    page = artifacts.listing(
        artifacts.DATASETS,
        account=call.account,
        store=call.store,
        status=query.status,
        name=query.name,
        labels=labels_filter(query.labels),
        limit=query.limit,
        page_token=query.page_token,
    )
    return DatasetPage(items=[view(DatasetView, d) for d in page.items], next_page_token=page.next_page_token)


@router.get("/v1/datasets/{dataset_id}/events", scope=Scope.read, query=PageQuery, response=EventPage, params=ID)
def dataset_events(call: Call, *, dataset_id: str, query: PageQuery) -> EventPage:
    """The dataset's status changes, oldest first."""
    return history(call, Dataset, dataset_id, query)


@router.delete("/v1/datasets/{dataset_id}", scope=Scope.write, response=DatasetView, status=202, params=ID)
def delete_dataset(call: Call, *, dataset_id: str) -> DatasetView:
    """Delete a dataset, its files and the evaluations that use it (carried out by the daemon)."""
    dataset, hints = artifacts.request_deletion(artifacts.DATASETS, dataset_id, account=call.account, store=call.store)
    call.services.hint(hints)
    return view(DatasetView, dataset)
