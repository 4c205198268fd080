"""The Assay Python SDK.

``Client`` holds one HTTP session; its resources (``models``, ``datasets``,
``evaluations``, ``api_keys``, ``webhooks``) return the same pydantic views the server answers with
(``shared.api``). Lists are iterators that page by themselves; long operations (uploads,
waits) show progress bars unless ``progress=False``.
"""

from __future__ import annotations

import functools
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from pydantic import BaseModel
from tqdm.auto import tqdm

from assay import config as _config
from assay.http import Http, raise_for_status, with_retries
from assay.packing import dataset_format, pack_directory
from shared import api, results_api
from shared.entities import ARTIFACT_TERMINAL, EVALUATION_TERMINAL
from shared.errors import AssayError


class WaitTimeout(AssayError):
    code = "wait_timeout"


class Client:
    """``Client(url=None, api_key=None)``: falls back to ``ASSAY_URL``/``ASSAY_API_KEY``,
    then the config file ``assay login`` writes."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout_s: float = 30.0, progress: bool = True):
        url, api_key = _config.resolve(url, api_key)
        self.http = Http(url, api_key, timeout_s=timeout_s)
        self.progress = progress
        self.models = Models(self)
        self.datasets = Datasets(self)
        self.evaluations = Evaluations(self)
        self.api_keys = ApiKeys(self)
        self.webhooks = Webhooks(self)

    def tasks(self) -> list[api.TaskInfo]:
        """The model tasks the service evaluates: accepted models and datasets, config, metrics."""
        return api.TaskList.model_validate(self.http.request("GET", "/v1/tasks")).tasks

    def whoami(self) -> api.Whoami:
        return api.Whoami.model_validate(self.http.request("GET", "/v1/whoami"))

    def events(self, entity_id: str, *, page_size: int = 100) -> Iterator[api.EventView]:
        """The status changes of a model, dataset or evaluation (by its id), oldest first."""
        resource = {"mdl": self.models, "dst": self.datasets, "evl": self.evaluations}.get(entity_id.split("_", 1)[0])
        if resource is None:
            raise ValueError(f"{entity_id!r} is not a model, dataset or evaluation id")
        return resource.events(entity_id, page_size=page_size)


def _paginate(http: Http, path: str, params: dict[str, Any], view: type[BaseModel], page_size: int) -> Iterator[Any]:
    token = None
    while True:
        body = http.request("GET", path, params={**params, "limit": page_size, "page_token": token})
        for item in body["items"]:
            yield view.model_validate(item)
        token = body.get("next_page_token")
        if not token:
            return


def _selector(labels: dict[str, str] | None) -> str | None:
    return ",".join(f"{k}={v}" for k, v in labels.items()) if labels else None


class _Resource:
    path: str
    view: type[BaseModel]

    def __init__(self, client: Client):
        self.client = client
        self.http = client.http

    def get(self, entity_id: str):
        return self.view.model_validate(self.http.request("GET", f"{self.path}/{entity_id}"))

    def list(
        self,
        *,
        status: str | None = None,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        page_size: int = 100,
        **filters: Any,
    ) -> Iterator[Any]:
        params = {"status": status, "name": name, "labels": _selector(labels), **filters}
        return _paginate(self.http, self.path, params, self.view, page_size)

    def delete(self, entity_id: str):
        """Ask for deletion (the daemon stops jobs and removes stored data)."""
        return self.view.model_validate(self.http.request("DELETE", f"{self.path}/{entity_id}"))

    def events(self, entity_id: str, *, page_size: int = 100) -> Iterator[api.EventView]:
        """Its status changes, oldest first: from, to, reason, message, attempt, who, when."""
        return _paginate(self.http, f"{self.path}/{entity_id}/events", {}, api.EventView, page_size)

    def _terminal(self, entity) -> bool:
        raise NotImplementedError

    def wait(self, entity_id: str, *, timeout_s: float | None = None, poll_s: float = 1.0, progress: bool | None = None):
        """Poll until the entity reaches a terminal status; returns it (``failed`` included).

        Raises WaitTimeout after ``timeout_s``; NotFound if it is deleted meanwhile.
        """
        show = self.client.progress if progress is None else progress
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        bar = tqdm(total=100, desc=entity_id, unit="%", disable=not show, leave=True)
        try:
            while True:
                entity = self.get(entity_id)
                fraction = 1.0 if self._terminal(entity) else (getattr(entity, "progress", None) or 0.0)
                bar.n = round(100 * fraction)
                bar.set_postfix_str(str(entity.status) + (f" ({entity.reason})" if entity.reason else ""))
                bar.refresh()
                if self._terminal(entity):
                    return entity
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"{entity_id} still {entity.status} after {timeout_s}s")
                time.sleep(poll_s)
        finally:
            bar.close()


class _Uploadable(_Resource):
    kind: str  # the key of the created entity in the reply ("model", "dataset")
    created: type[api.ModelCreated] | type[api.DatasetCreated]

    def _terminal(self, entity) -> bool:
        return entity.status in ARTIFACT_TERMINAL

    def new_upload_ticket(self, entity_id: str) -> api.UploadTicket:
        body = self.http.request("POST", f"{self.path}/{entity_id}/upload-ticket")
        return api.UploadTicket.model_validate(body.get("upload", body))

    def _put(self, ticket: api.UploadTicket, path: Path, progress: bool) -> None:
        size = path.stat().st_size
        with (
            open(path, "rb") as f,
            tqdm(total=size, unit="B", unit_scale=True, desc=f"upload {path.name}", disable=not progress) as bar,
        ):

            def send() -> requests.Response:
                f.seek(0)
                bar.reset(total=size)
                return requests.request(
                    ticket.method, ticket.url, data=_ProgressReader(f, bar, size), headers=ticket.headers, timeout=600
                )

            response = with_retries(send)
        raise_for_status(response)

    def _format_fields(self, path: Path, archive: Path) -> dict[str, str]:
        """The request fields that say what kind of file ``archive`` is."""
        raise NotImplementedError

    def upload(
        self,
        path: str | os.PathLike,
        *,
        name: str,
        labels: dict[str, str] | None = None,
        task: str | None = None,
        shape: str | None = None,
        wait: bool = False,
        progress: bool | None = None,
    ):
        """Register, PUT the bytes with a progress bar, and (``wait=True``) wait until verified.

        ``task`` is the model task (``client.tasks()``; the service's default when omitted:
        image-classification). ``shape`` is what a dataset holds, for a task with several
        (text-generation: ``multiple_choice``, ``generate`` or ``perplexity``). A directory
        is zipped first (into a temporary file, removed afterwards).
        """
        path = Path(path)
        show = self.client.progress if progress is None else progress
        archive = pack_directory(path) if path.is_dir() else path
        try:
            body = {
                "name": name,
                "labels": labels or {},
                "size": archive.stat().st_size,
                **self._format_fields(path, archive),
                **({"task": task} if task is not None else {}),
                **({"shape": shape} if shape is not None else {}),
            }
            reply = self.created.model_validate(self.http.request("POST", self.path, json=body))
            entity = getattr(reply, self.kind)
            self._put(reply.upload, archive, show)
        finally:
            if archive != path:
                archive.unlink(missing_ok=True)
        return self.wait(entity.id, progress=show) if wait else self.get(entity.id)


class _ProgressReader(io.RawIOBase):
    """A file wrapper that advances a progress bar as requests reads it."""

    def __init__(self, f, bar, size: int):
        self.f, self.bar, self.size = f, bar, size

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        chunk = self.f.read(n if n and n > 0 else 1 << 20)
        self.bar.update(len(chunk))
        return chunk


class Models(_Uploadable):
    path = "/v1/models"
    view = api.ModelView
    kind = "model"
    created = api.ModelCreated

    def create(
        self, *, name: str, size: int, labels: dict[str, str] | None = None, archive_format: str = "zip"
    ) -> api.ModelCreated:
        body = {"name": name, "labels": labels or {}, "archive_format": archive_format, "size": size}
        return api.ModelCreated.model_validate(self.http.request("POST", self.path, json=body))

    def _format_fields(self, path: Path, archive: Path) -> dict[str, str]:
        """A ``save_pretrained`` directory (zipped here) or a .zip/.tar.gz of one."""
        return {"archive_format": "tar.gz" if archive.name.endswith((".tar.gz", ".tgz")) else "zip"}


class Datasets(_Uploadable):
    path = "/v1/datasets"
    view = api.DatasetView
    kind = "dataset"
    created = api.DatasetCreated

    def create(self, *, name: str, size: int, format: str, labels: dict[str, str] | None = None) -> api.DatasetCreated:
        body = {"name": name, "labels": labels or {}, "format": format, "size": size}
        return api.DatasetCreated.model_validate(self.http.request("POST", self.path, json=body))

    def _format_fields(self, path: Path, archive: Path) -> dict[str, str]:
        """An image folder ``split/class/file.png`` (zipped here), a zip or .tar.gz of one,
        a Parquet file as Hugging Face ``datasets`` writes it, or JSON Lines or CSV (text)."""
        return {"format": dataset_format(path)}


class Evaluations(_Resource):
    path = "/v1/evaluations"
    view = api.EvaluationView

    def _terminal(self, entity) -> bool:
        return entity.status in EVALUATION_TERMINAL

    def create(
        self,
        model_id: str,
        dataset_id: str,
        *,
        splits: list[str] | None = None,
        config: BaseModel | dict | None = None,
        name: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[EvaluationHandle]:
        """One evaluation per split; each reused, restarted or created (see ``.outcome``).

        ``config`` is the model task's config (its schema is in ``client.tasks()``), as a
        dict or as the task's config model (``InferenceConfig`` for images).
        """
        body: dict[str, Any] = {"model_id": model_id, "dataset_id": dataset_id, "labels": labels or {}}
        if splits is not None:
            body["splits"] = splits
        if config is not None:
            body["config"] = config.model_dump() if isinstance(config, BaseModel) else config
        if name is not None:
            body["name"] = name
        reply = api.EvaluationsOrdered.model_validate(self.http.request("POST", self.path, json=body))
        return [EvaluationHandle(self.client, o.evaluation, o.outcome) for o in reply.evaluations]

    def cancel(self, evaluation_id: str):
        """Cancel a waiting, pending, admitted or running evaluation (the daemon stops its
        job; its finished shards are kept, so ordering it again resumes). Idempotent;
        Conflict when it has already finished."""
        return self.view.model_validate(self.http.request("POST", f"{self.path}/{evaluation_id}/cancel"))

    def handle(self, evaluation_id: str) -> EvaluationHandle:
        return EvaluationHandle(self.client, self.get(evaluation_id), None)

    # -- results --

    def summary(self, evaluation_id: str) -> dict:
        """The summary metrics (``summary.json``): accuracy, top-k, F1, calibration, efficiency…"""
        return self.http.request("GET", f"{self.path}/{evaluation_id}/results")

    def instances(
        self, evaluation_id: str, *, page_size: int = 500, **filters: Any
    ) -> Iterator[results_api.InstanceRow | results_api.LanguageModelInstance]:
        """Per-instance rows; filters as ``InstancesQuery`` (label, prediction, correct,
        min_confidence, max_confidence, order_by). Pages by itself. A classification's rows
        are ``InstanceRow``; a language model's ``LanguageModelInstance`` (choices with
        their log-likelihoods, or prompt, output and targets), which filter by ``correct``."""
        token = None
        while True:
            page = results_api.InstancesPage.model_validate(
                self.http.request(
                    "GET",
                    f"{self.path}/{evaluation_id}/results/instances",
                    params={**filters, "limit": page_size, "page_token": token},
                )
            )
            yield from page.items
            token = page.next_page_token
            if not token:
                return

    def classes(self, evaluation_id: str) -> results_api.ClassesResult:
        return results_api.ClassesResult.model_validate(self.http.request("GET", f"{self.path}/{evaluation_id}/results/classes"))

    def confusion(self, evaluation_id: str) -> results_api.ConfusionResult:
        return results_api.ConfusionResult.model_validate(
            self.http.request("GET", f"{self.path}/{evaluation_id}/results/confusion")
        )

    def metrics(self, evaluation_id: str, **request: Any) -> results_api.MetricsResult:
        """Further metrics from the stored predictions, e.g. ``metrics=[{"name": "f_beta",
        "beta": 2}], bootstrap={"samples": 1000}`` (no new inference)."""
        return results_api.MetricsResult.model_validate(
            self.http.request("POST", f"{self.path}/{evaluation_id}/results/metrics", json=request)
        )

    def downloads(self, evaluation_id: str) -> results_api.DownloadResult:
        return results_api.DownloadResult.model_validate(
            self.http.request("GET", f"{self.path}/{evaluation_id}/results/download")
        )

    def compare(self, a: str, b: str) -> results_api.CompareResult:
        return results_api.CompareResult.model_validate(self.http.request("GET", f"{self.path}/compare", params={"a": a, "b": b}))

    def leaderboard(self, dataset_id: str, *, split: str | None = None, metric: str | None = None) -> results_api.LeaderboardPage:
        return results_api.LeaderboardPage.model_validate(
            self.http.request("GET", f"/v1/datasets/{dataset_id}/leaderboard", params={"split": split, "metric": metric})
        )

    def results_table(self, evaluation_id: str):
        """Every per-instance row as a pyarrow Table, read from the signed Parquet URLs."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for item in self.downloads(evaluation_id).files:
            if not item.name.endswith(".parquet"):
                continue  # summary.json travels with the result set
            response = with_retries(functools.partial(requests.get, item.url, timeout=120))
            raise_for_status(response)
            tables.append(pq.read_table(io.BytesIO(response.content)))
        return pa.concat_tables(tables) if tables else pa.table({})


class EvaluationHandle:
    """One evaluation: ``.wait()`` with a progress bar, ``.results()`` as a DataFrame."""

    def __init__(self, client: Client, evaluation, outcome: str | None):
        self.client = client
        self.evaluation = evaluation
        self.outcome = outcome

    @property
    def id(self) -> str:
        return self.evaluation.id

    def __repr__(self) -> str:
        return f"<Evaluation {self.id} {self.evaluation.status} split={self.evaluation.split} outcome={self.outcome}>"

    def refresh(self):
        self.evaluation = self.client.evaluations.get(self.id)
        return self.evaluation

    def wait(self, *, timeout_s: float | None = None, progress: bool | None = None):
        self.evaluation = self.client.evaluations.wait(self.id, timeout_s=timeout_s, progress=progress)
        return self.evaluation

    def summary(self) -> dict:
        return self.client.evaluations.summary(self.id)

    def cancel(self):
        self.evaluation = self.client.evaluations.cancel(self.id)
        return self.evaluation

    def events(self) -> list:
        return list(self.client.evaluations.events(self.id))

    def results(self, *, as_arrow: bool = False):
        """Per-instance predictions: a pandas DataFrame, or an Arrow table with ``as_arrow``."""
        table = self.client.evaluations.results_table(self.id)
        return table if as_arrow else table.to_pandas()


class ApiKeys(_Resource):
    path = "/v1/api-keys"
    view = api.ApiKeyView

    def create(self, *, name: str, scopes: list[str], expires_at=None, labels: dict[str, str] | None = None) -> api.ApiKeyCreated:
        body: dict[str, Any] = {"name": name, "scopes": scopes, "labels": labels or {}}
        if expires_at is not None:
            body["expires_at"] = expires_at.isoformat() if hasattr(expires_at, "isoformat") else expires_at
        return api.ApiKeyCreated.model_validate(self.http.request("POST", self.path, json=body))

    def _terminal(self, entity) -> bool:
        return True


class Webhooks:
    """Signed deliveries of status changes; verify them with ``assay.verify_signature``."""

    path = "/v1/webhooks"

    def __init__(self, client: Client):
        self.http = client.http

    def create(
        self, url: str, events: list[str], *, name: str | None = None, description: str | None = None
    ) -> api.WebhookCreated:
        """Register ``url`` for ``events`` (e.g. ``["evaluation.complete", "evaluation.failed"]``).
        The reply's ``secret`` is shown this once: keep it to verify deliveries."""
        body: dict[str, Any] = {"url": url, "events": events}
        if name is not None:
            body["name"] = name
        if description is not None:
            body["description"] = description
        return api.WebhookCreated.model_validate(self.http.request("POST", self.path, json=body))

    def list(self, *, page_size: int = 100) -> Iterator[api.WebhookView]:
        return _paginate(self.http, self.path, {}, api.WebhookView, page_size)

    def get(self, webhook_id: str) -> api.WebhookView:
        return api.WebhookView.model_validate(self.http.request("GET", f"{self.path}/{webhook_id}"))

    def delete(self, webhook_id: str) -> api.WebhookView:
        return api.WebhookView.model_validate(self.http.request("DELETE", f"{self.path}/{webhook_id}"))

    def deliveries(self, webhook_id: str, *, page_size: int = 100) -> Iterator[api.DeliveryView]:
        """Its deliveries, newest first, each with every attempt (status code, error, time)."""
        return _paginate(self.http, f"{self.path}/{webhook_id}/deliveries", {}, api.DeliveryView, page_size)
