"""One evaluation's page (summary, per-class table, confusion heatmap, reliability
diagram, efficiency, the instance gallery; for a language model its kind's metrics and its
instances with their choices or outputs), its gallery images, and the comparison of two
evaluations. The page opens the cached result set once and runs every query on it.
"""

from __future__ import annotations

import time
from typing import Any

import flask
from pydantic import ValidationError

from functions.console import charts, session
from functions.console.gallery import PART, ShardCache
from functions.console.pages import ACTIVE
from functions.console.web import bp, check_id, page, query_of, render, secret
from functions.results import language_models, queries, service
from functions.results.resultset import ResultSet
from functions.results.routes import compare_evaluations
from functions.routes import evaluations as evaluation_routes
from functions.services import Call, Services
from shared.api import EvaluationListQuery
from shared.entities import Evaluation, EvaluationStatus
from shared.errors import Invalid, InvalidRequest, NotFound
from shared.metrics import LANGUAGE_MODEL
from shared.modeltasks import spec_of
from shared.results_api import CompareQuery, InstancesQuery

GALLERY_PAGE = 24
CLASS_COLUMNS = ("label", "precision", "recall", "f1", "support", "predicted")


def _instances_query() -> InstancesQuery:
    """The gallery's filters: misclassified only, label, prediction, least confident first."""
    args = flask.request.args
    query: dict[str, Any] = {"limit": GALLERY_PAGE}
    if args.get("errors") == "1":
        query["correct"] = False
    for name in ("label", "prediction", "page_token"):
        if args.get(name):
            query[name] = args[name]
    query["order_by"] = "confidence" if args.get("order") == "confidence" else "instance_id"
    try:
        return InstancesQuery.model_validate(query)
    except ValidationError as e:
        raise Invalid("the gallery's filters are invalid", details={"errors": e.errors()}) from None


@bp.get("/evaluations/<evaluation_id>")
@page()
def evaluation(call: Call, evaluation_id: str) -> flask.Response:
    check_id("evl", evaluation_id)
    found = evaluation_routes.get_evaluation(call, evaluation_id=evaluation_id)
    context: dict[str, Any] = {"evaluation": found, "refresh": found.status in ACTIVE, "results": None}
    if found.status == EvaluationStatus.complete:
        context["results"] = _results(call, found)
    return render("evaluation.html", **context)


def _results(call: Call, evaluation: Any) -> dict[str, Any]:
    """Everything the evaluation page shows, from one opening of the cached result set."""
    svc = call.services
    cache = service.cache_for(svc.settings, svc.storage)
    # The entity holds the summary the worker wrote; the service falls back to summary.json.
    summary = (evaluation.summary or service.summary(call.store, cache, evaluation.id, account=call.account)).model_dump()
    with service.opened(call.store, cache, evaluation.id, account=call.account) as rs:
        if rs.family == LANGUAGE_MODEL:
            return _language_model_results(call, evaluation, rs, summary)
        query = _instances_query()
        matrix = queries.confusion_counts(rs)
        per_class = queries.classes(rs, matrix)
        bins = queries.calibration(rs, bins=int(summary.get("ece_bins") or 10))
        try:
            instances = queries.instances(rs, query)
            instances_error = None
        except (Invalid, InvalidRequest) as e:
            instances, instances_error = None, e.message
        # A gallery image where the task's datasets hold images; text tasks show excerpts.
        has_images = any(c.name == "image" for c in spec_of(evaluation.task).dataset_columns)
        parts = queries.stored_parts(rs, [i.instance_id for i in instances.items]) if instances and has_images else {}
    sort = flask.request.args.get("sort", "label")
    descending = sort.startswith("-")
    column = sort.lstrip("-")
    if column not in CLASS_COLUMNS:
        column, descending = "label", False
    rows = sorted(per_class.classes, key=lambda c: getattr(c, column if column != "label" else "class_index"), reverse=descending)
    expires = int(time.time()) + svc.settings.console_image_url_s
    images = {
        instance_id: flask.url_for(
            "console.image",
            evaluation_id=evaluation.id,
            instance=instance_id,
            part=part,
            expires=expires,
            signature=session.image_signature(
                secret(), account=call.account, evaluation_id=evaluation.id, instance_id=instance_id, part=part, expires=expires
            ),
        )
        for instance_id, part in parts.items()
    }
    scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    comparable = evaluation_routes.list_evaluations(
        call, query=EvaluationListQuery(dataset_id=evaluation.dataset_id, status=EvaluationStatus.complete, limit=50)
    ).items
    return {
        "summary": scalars,
        "efficiency": summary.get("efficiency") or {},
        "classes": rows,
        "sort_column": column,
        "sort_descending": descending,
        "columns": CLASS_COLUMNS,
        "heatmap": charts.heatmap(rs.label_names, matrix),
        "pairs": charts.top_confused(rs.label_names, matrix),
        "reliability": charts.reliability(bins),
        "instances": instances,
        "instances_error": instances_error,
        "images": images,
        "query": query,
        "labels": rs.label_names,
        "others": [e for e in comparable if e.id != evaluation.id and e.split == evaluation.split],
    }


def _language_model_results(call: Call, evaluation: Any, rs: ResultSet, summary: dict[str, Any]) -> dict[str, Any]:
    """A language model's page: its kind's metrics, and its instances (prompt, choices with
    their log-likelihoods, or output and targets, or the text's log-likelihood)."""
    args = flask.request.args
    query: dict[str, Any] = {"limit": GALLERY_PAGE}
    if args.get("errors") == "1" and "correct" in rs.columns:
        query["correct"] = False
    if args.get("page_token"):
        query["page_token"] = args["page_token"]
    try:
        instances, instances_error = language_models.instances(rs, InstancesQuery.model_validate(query)), None
    except (Invalid, InvalidRequest, ValidationError) as e:
        instances, instances_error = None, getattr(e, "message", "the filters are invalid")
    comparable = evaluation_routes.list_evaluations(
        call, query=EvaluationListQuery(dataset_id=evaluation.dataset_id, status=EvaluationStatus.complete, limit=50)
    ).items
    return {
        "family": LANGUAGE_MODEL,
        "kind": rs.kind,
        "metrics": {name: summary.get(name) for name in language_models.metrics_of(rs)},
        "summary": {k: summary.get(k) for k in ("instances", "truncated", "tokens") if summary.get(k) is not None},
        "efficiency": summary.get("efficiency") or {},
        "instances": instances,
        "instances_error": instances_error,
        "has_verdicts": "correct" in rs.columns,
        "others": [e for e in comparable if e.id != evaluation.id and e.split == evaluation.split and rs.kind != "perplexity"],
    }


@bp.get("/evaluations/<evaluation_id>/image")
@page()
def image(call: Call, evaluation_id: str) -> flask.Response:
    args = flask.request.args
    instance_id, part, signature = args.get("instance", ""), args.get("part", ""), args.get("signature", "")
    expires = args.get("expires", "")
    if not (
        expires.isdigit()
        and PART.fullmatch(part)
        and session.image_signature_valid(
            secret(),
            signature,
            account=call.account,
            evaluation_id=evaluation_id,
            instance_id=instance_id,
            part=part,
            expires=int(expires),
        )
    ):
        raise NotFound("no such image")
    found = call.store.get(Evaluation, evaluation_id, account=call.account)
    data, kind = _shards(call.services).image(found.dataset_id, found.split, part, instance_id)
    response = flask.Response(data, mimetype=kind)
    response.headers["Cache-Control"] = f"private, max-age={call.services.settings.console_image_url_s}"
    return response


def _shards(svc: Services) -> ShardCache:
    cache = flask.current_app.extensions.get("assay.console.shards")
    if cache is None:
        cache = flask.current_app.extensions["assay.console.shards"] = ShardCache(svc.storage, svc.settings.cache_dir)
    return cache


@bp.get("/compare")
@page()
def compare(call: Call) -> flask.Response:
    query = query_of(CompareQuery, limit="12")
    result = compare_evaluations(call, query=query)
    a = evaluation_routes.get_evaluation(call, evaluation_id=query.a)
    b = evaluation_routes.get_evaluation(call, evaluation_id=query.b)
    return render("compare.html", result=result, a=a, b=b)
