"""Routes of the results: summary, rows, per-class metrics, confusion, further metrics,
comparison, leaderboard and downloads. Each handler parses nothing (the router validated
its query or body) and calls one function of ``service``."""

from __future__ import annotations

from functions.results import service
from functions.results.cache import ResultCache
from functions.routing import Router
from functions.services import Call
from shared.entities import Scope
from shared.results_api import (
    ClassesResult,
    CompareQuery,
    CompareResult,
    ConfusionResult,
    DownloadResult,
    InstancesPage,
    InstancesQuery,
    LeaderboardPage,
    LeaderboardQuery,
    MetricsRequest,
    MetricsResult,
    SummaryResult,
)

router = Router("results", "Results of complete evaluations, queried from their stored predictions.")
ID = {"evaluation_id": "evl"}
RESULTS = "/v1/evaluations/{evaluation_id}/results"


def _cache(call: Call) -> ResultCache:
    return service.cache_for(call.services.settings, call.services.storage)


@router.get(RESULTS, scope=Scope.read, response=SummaryResult, params=ID)
def get_results(call: Call, *, evaluation_id: str) -> SummaryResult:
    """The summary metrics of a complete evaluation."""
    return service.summary(call.store, _cache(call), evaluation_id, account=call.account)


@router.get(RESULTS + "/instances", scope=Scope.read, query=InstancesQuery, response=InstancesPage, params=ID)
def list_instances(call: Call, *, evaluation_id: str, query: InstancesQuery) -> InstancesPage:
    """Per-instance predictions, filtered, ordered and paginated."""
    return service.instances(call.store, _cache(call), evaluation_id, query, account=call.account)


@router.get(RESULTS + "/classes", scope=Scope.read, response=ClassesResult, params=ID)
def get_classes(call: Call, *, evaluation_id: str) -> ClassesResult:
    """Precision, recall, F1 and support of every class."""
    return service.classes(call.store, _cache(call), evaluation_id, account=call.account)


@router.get(RESULTS + "/confusion", scope=Scope.read, response=ConfusionResult, params=ID)
def get_confusion(call: Call, *, evaluation_id: str) -> ConfusionResult:
    """The confusion matrix (rows: true label, columns: predicted label)."""
    return service.confusion(call.store, _cache(call), evaluation_id, account=call.account)


@router.post(RESULTS + "/metrics", scope=Scope.read, body=MetricsRequest, response=MetricsResult, params=ID)
def compute_metrics(call: Call, *, evaluation_id: str, body: MetricsRequest) -> MetricsResult:
    """Further metrics from the stored predictions (no new inference), with bootstrap intervals."""
    return service.metrics(call.store, _cache(call), evaluation_id, body, account=call.account)


@router.get(RESULTS + "/download", scope=Scope.read, response=DownloadResult, params=ID)
def download_results(call: Call, *, evaluation_id: str) -> DownloadResult:
    """Signed GET URLs for the result set's Parquet files and summary.json."""
    return service.download(call.store, call.services.storage, evaluation_id, account=call.account)


@router.get("/v1/evaluations/compare", scope=Scope.read, query=CompareQuery, response=CompareResult)
def compare_evaluations(call: Call, *, query: CompareQuery) -> CompareResult:
    """Two models on the same dataset split: agreement, discordant instances, McNemar's test."""
    return service.compare(call.store, _cache(call), query, account=call.account)


@router.get(
    "/v1/datasets/{dataset_id}/leaderboard",
    scope=Scope.read,
    query=LeaderboardQuery,
    response=LeaderboardPage,
    params={"dataset_id": "dst"},
)
def get_leaderboard(call: Call, *, dataset_id: str, query: LeaderboardQuery) -> LeaderboardPage:
    """The dataset's complete evaluations ranked by a summary metric."""
    return service.leaderboard(call.store, dataset_id, query, account=call.account)
