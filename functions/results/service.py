"""The results of an account's evaluations: what the routes call, with no flask in sight.

Each function checks ownership (another account's evaluation is a ``NotFound``) and state
(results exist only for a ``complete`` evaluation), takes the result set from the local
cache and runs one query family on it. What a result set holds follows from its
evaluation's task: classes and label names for classification, a kind's columns for a
language model (``resultset.Source``); queries that do not apply are a 422.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import ValidationError

from functions.results import compare as comparing, language_models, metrics as more_metrics, queries
from functions.results.cache import ResultCache
from functions.results.resultset import (
    ResultSet,
    ResultSetCorrupt,
    ResultSetMissing,
    ResultsNotReady,
    Source,
    open_result_sets,
    read_label_names,
)
from shared.api import decode_page_token, encode_page_token
from shared.entities import Dataset, Evaluation, EvaluationStatus, Model
from shared.errors import Invalid, InvalidRequest
from shared.metrics import CLASSIFICATION, LANGUAGE_MODEL
from shared.modeltasks import spec_of
from shared.results_api import (
    ClassesResult,
    CompareQuery,
    CompareResult,
    ConfusionResult,
    DownloadFile,
    DownloadResult,
    InstancesPage,
    InstancesQuery,
    LeaderboardEntry,
    LeaderboardPage,
    LeaderboardQuery,
    MetricsRequest,
    MetricsResult,
    SummaryResult,
    higher_is_better,
)
from shared.settings import Settings
from shared.storage import Storage, evaluation_prefix, evaluation_summary
from shared.store import Store

_caches: dict[tuple[str, str], ResultCache] = {}
_caches_lock = threading.Lock()


def cache_for(settings: Settings, storage: Storage) -> ResultCache:
    """The process's cache of result sets (one per cache folder and bucket)."""
    key = (str(Path(settings.cache_dir).resolve()), settings.bucket)
    with _caches_lock:
        if key not in _caches:
            _caches[key] = ResultCache(storage, settings.cache_dir, max_bytes=settings.results_cache_bytes)
        return _caches[key]


def complete_evaluation(store: Store, evaluation_id: str, *, account: str) -> Evaluation:
    """Raises NotFound (missing or another account's) or ResultsNotReady."""
    evaluation = store.get(Evaluation, evaluation_id, account=account)
    if evaluation.status != EvaluationStatus.complete:
        raise ResultsNotReady(
            f"evaluation {evaluation_id} is {evaluation.status}: results exist once it is complete",
            details={"status": str(evaluation.status)},
        )
    return evaluation


def _version(evaluation: Evaluation) -> str:
    return evaluation.status_changed_at.isoformat()


def _label_names(evaluation: Evaluation, directory: Path) -> list[str]:
    names = (evaluation.summary or {}).get("label_names") or read_label_names(directory)
    if not names:
        raise ResultSetCorrupt("the result set names no labels (summary.json has no label_names)")
    return list(names)


def _source(evaluation: Evaluation, directory: Path) -> Source:
    """What the evaluation's result set holds: label names (classification) or the kind
    its config names (a language model)."""
    family = spec_of(evaluation.task).family
    label_names = _label_names(evaluation, directory) if family == CLASSIFICATION else []
    kind = evaluation.config.get("kind") if family == LANGUAGE_MODEL else None
    return Source(directory, label_names, evaluation.task, kind if isinstance(kind, str) else None)


def _require_classes(evaluation: Evaluation) -> None:
    """Raises Invalid unless the evaluation's task has classes (per-class metrics, confusion)."""
    if spec_of(evaluation.task).family != CLASSIFICATION:
        raise Invalid(
            f"evaluation {evaluation.id} has no classes: a {evaluation.task} evaluation",
            details={"task": evaluation.task},
        )


@contextlib.contextmanager
def _opened(cache: ResultCache, evaluations: dict[str, Evaluation]) -> Iterator[dict[str, ResultSet]]:
    """The evaluations' result sets as views of one locked connection."""
    with contextlib.ExitStack() as stack:
        folders = {view: stack.enter_context(cache.open(e.id, version=_version(e))) for view, e in evaluations.items()}
        sets = open_result_sets({view: _source(e, folders[view]) for view, e in evaluations.items()})
        try:
            yield sets
        finally:
            next(iter(sets.values())).con.close()


@contextlib.contextmanager
def opened(store: Store, cache: ResultCache, evaluation_id: str, *, account: str) -> Iterator[ResultSet]:
    evaluation = complete_evaluation(store, evaluation_id, account=account)
    with _opened(cache, {"predictions": evaluation}) as sets:
        yield sets["predictions"]


def summary(store: Store, cache: ResultCache, evaluation_id: str, *, account: str) -> SummaryResult:
    """The summary metrics the evaluate worker wrote (on the entity, else summary.json).

    Raises:
        ResultSetCorrupt: summary.json is not a summary.
    """
    evaluation = complete_evaluation(store, evaluation_id, account=account)
    if evaluation.summary:
        return SummaryResult.model_validate({**evaluation.summary, "evaluation_id": evaluation.id})
    with cache.open(evaluation.id, version=_version(evaluation)) as folder:
        path = folder / "summary.json"
        if not path.exists():
            raise ResultSetMissing(f"evaluation {evaluation_id} has no summary", details={"evaluation_id": evaluation_id})
        try:
            found = json.loads(path.read_text())
        except ValueError as e:
            raise ResultSetCorrupt("summary.json is not JSON") from e
    if not isinstance(found, dict):
        raise ResultSetCorrupt("summary.json is not a JSON object")
    try:
        return SummaryResult.model_validate({**found, "evaluation_id": evaluation.id})
    except ValidationError as e:
        raise ResultSetCorrupt(f"summary.json is not a summary: {e.errors()[0]['msg']}") from e


# Each family's per-instance rows.
_INSTANCES: dict[str, Callable[[ResultSet, InstancesQuery], InstancesPage]] = {
    CLASSIFICATION: queries.instances,
    LANGUAGE_MODEL: language_models.instances,
}


def instances(store: Store, cache: ResultCache, evaluation_id: str, query: InstancesQuery, *, account: str) -> InstancesPage:
    """Raises Invalid for a filter the evaluation's rows do not have."""
    with opened(store, cache, evaluation_id, account=account) as rs:
        return _INSTANCES[rs.family](rs, query)


def classes(store: Store, cache: ResultCache, evaluation_id: str, *, account: str) -> ClassesResult:
    """Raises Invalid for an evaluation without classes (a language model's)."""
    evaluation = complete_evaluation(store, evaluation_id, account=account)
    _require_classes(evaluation)
    with _opened(cache, {"predictions": evaluation}) as sets:
        return queries.classes(sets["predictions"])


def confusion(store: Store, cache: ResultCache, evaluation_id: str, *, account: str) -> ConfusionResult:
    """Raises Invalid for an evaluation without classes (a language model's)."""
    evaluation = complete_evaluation(store, evaluation_id, account=account)
    _require_classes(evaluation)
    with _opened(cache, {"predictions": evaluation}) as sets:
        return queries.confusion(sets["predictions"])


def metrics(store: Store, cache: ResultCache, evaluation_id: str, request: MetricsRequest, *, account: str) -> MetricsResult:
    with opened(store, cache, evaluation_id, account=account) as rs:
        return more_metrics.compute(rs, request)


def compare(store: Store, cache: ResultCache, query: CompareQuery, *, account: str) -> CompareResult:
    """Raises Invalid unless a and b are evaluations of the same dataset split and of one
    task family and kind with a verdict per instance (an evaluation compared with itself
    agrees everywhere: nothing discordant)."""
    a = complete_evaluation(store, query.a, account=account)
    b = complete_evaluation(store, query.b, account=account)
    if (a.dataset_id, a.split) != (b.dataset_id, b.split):
        raise Invalid(
            "a and b must evaluate the same dataset split",
            details={"a": {"dataset_id": a.dataset_id, "split": a.split}, "b": {"dataset_id": b.dataset_id, "split": b.split}},
        )
    with _opened(cache, {"a": a, "b": b}) as sets:
        figures = comparing.compare(sets["a"], sets["b"], limit=query.limit)
    return CompareResult(a=a.id, b=b.id, dataset_id=a.dataset_id, split=a.split, **figures)


def _offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        text = decode_page_token(token).decode()
        offset = int(text) if text.isdigit() and str(int(text)) == text else -1
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequest("invalid page_token", code="invalid_page_token") from e
    if offset < 1:
        raise InvalidRequest("invalid page_token", code="invalid_page_token")
    return offset


def leaderboard(store: Store, dataset_id: str, query: LeaderboardQuery, *, account: str) -> LeaderboardPage:
    """The dataset's complete evaluations ranked by ``query.metric`` (best first), by
    default the headline of the dataset's task for its shape.

    Raises NotFound when the dataset is missing or another account's.
    """
    dataset = store.get(Dataset, dataset_id, account=account)
    metric = query.metric or spec_of(dataset.task).headline(dataset.shape)
    filters = {"dataset_id": dataset_id, "status": EvaluationStatus.complete, "split": query.split}
    ranked = comparing.rank(store.iterate(Evaluation, account=account, filters=filters, order=None), metric)
    start = _offset(query.page_token)
    window = ranked[start : start + query.limit]
    models: dict[str, Model | None] = {}
    for evaluation, _ in window:
        if evaluation.model_id not in models:
            models[evaluation.model_id] = store.find(Model, evaluation.model_id, account=account)
    items = [
        LeaderboardEntry(
            rank=start + i + 1,
            evaluation_id=evaluation.id,
            evaluation_name=evaluation.name,
            model_id=evaluation.model_id,
            model_name=m.name if (m := models[evaluation.model_id]) else None,
            split=evaluation.split,
            value=value,
            instances=n if isinstance(n := (evaluation.summary or {}).get("instances"), int) else None,
        )
        for i, (evaluation, value) in enumerate(window)
    ]
    end = start + len(window)
    token = encode_page_token(str(end).encode()) if end < len(ranked) else None
    return LeaderboardPage(
        dataset_id=dataset_id,
        metric=metric,
        higher_is_better=higher_is_better(metric),
        items=items,
        next_page_token=token,
    )


def download(store: Store, storage: Storage, evaluation_id: str, *, account: str) -> DownloadResult:
    """Signed GET URLs for the result set's Parquet files and its summary.json."""
    evaluation = complete_evaluation(store, evaluation_id, account=account)
    prefix = evaluation_prefix(evaluation.id)
    objects = [(name, size) for name, size in storage.list(prefix + "predictions/") if name.endswith(".parquet")]
    if not objects:
        raise ResultSetMissing(f"evaluation {evaluation_id} is complete but its result set is missing")
    summary_size = storage.size(evaluation_summary(evaluation.id))
    if summary_size is not None:
        objects.append((evaluation_summary(evaluation.id), summary_size))
    files = []
    for name, size in objects:
        signed = storage.signed_get(name)
        files.append(
            DownloadFile(
                name=name[len(prefix) :],
                size=size,
                url=signed.url,
                method=signed.method,
                expires_at=signed.expires_at.isoformat(),
            )
        )
    return DownloadResult(files=files)
