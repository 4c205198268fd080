"""The console's pages: each view reads through the same account-scoped code as the JSON
routes (their handlers, or the results service they call) and renders a template.

A view is ``@page(scope)``: it resumes the session (else redirects to sign-in), checks the
scope, and gets a ``Call`` exactly like a route handler's. Forms that change state are POSTs
whose CSRF token is checked before anything else happens.
"""

from __future__ import annotations

import functools
import logging
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import flask
from pydantic import BaseModel, ValidationError

from functions.console import charts, session
from functions.console.gallery import PART, ShardCache
from functions.http import parse_query, request_id
from functions.results import queries, service
from functions.results.routes import compare_evaluations, get_leaderboard
from functions.routes import datasets as dataset_routes
from functions.routes import evaluations as evaluation_routes
from functions.routes import models as model_routes
from functions.services import Call, Caller, Services
from shared.api import CreateEvaluations, DatasetListQuery, EvaluationListQuery, ModelListQuery, matches_id
from shared.entities import Evaluation, EvaluationStatus, Scope
from shared.errors import AssayError, Forbidden, Invalid, InvalidRequest, NotFound, Unauthenticated
from shared.results_api import CompareQuery, InstancesQuery, LeaderboardMetric, LeaderboardQuery

log = logging.getLogger("functions.console")

bp = flask.Blueprint("console", __name__, url_prefix="/ui", template_folder="templates", static_folder="static")

GALLERY_PAGE = 24
CLASS_COLUMNS = ("label", "precision", "recall", "f1", "support", "predicted")
LEADERBOARD_METRICS: tuple[str, ...] = LeaderboardMetric.__args__  # type: ignore[attr-defined]
ACTIVE = frozenset({EvaluationStatus.waiting, EvaluationStatus.pending, EvaluationStatus.admitted, EvaluationStatus.running})


def services() -> Services:
    return flask.current_app.extensions["assay"]


def secret() -> bytes:
    return session.console_secret(services().settings)


def _secure() -> bool:
    return flask.request.is_secure or flask.request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _cookie(response: flask.Response, name: str, value: str, *, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/ui", httponly=True, samesite="Strict", secure=_secure()
    )


# --- sessions and forms -------------------------------------------------------------------


def current_session() -> session.Session:
    found = getattr(flask.g, "console_session", None)
    if found is None:
        svc = services()
        found = flask.g.console_session = session.resume(secret(), svc.store, flask.request.cookies.get(session.COOKIE))
    return found


def csrf() -> str:
    return session.csrf_token(secret(), current_session().token)


def check_csrf() -> None:
    if not session.csrf_valid(secret(), current_session().token, flask.request.form.get("csrf")):
        raise Forbidden("this form has expired or did not come from the console: reload the page and try again", code="csrf")


def _local_path(target: str | None) -> str:
    """Only a path of the console itself: never an absolute URL (no open redirect)."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return flask.url_for("console.evaluations")


def page(scope: Scope = Scope.read) -> Callable:
    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def run(**path_values: str) -> Any:
            try:
                signed_in = current_session()
            except Unauthenticated:
                target = flask.request.full_path.rstrip("?") if flask.request.method == "GET" else None
                response = flask.redirect(flask.url_for("console.sign_in", next=target))
                response.delete_cookie(session.COOKIE, path="/ui")
                return response
            if scope not in signed_in.key.granted():
                raise Forbidden(f"the API key you signed in with lacks the '{scope}' scope")
            if flask.request.method == "POST":
                check_csrf()
            call = Call(services=services(), request_id=request_id(), caller=Caller(signed_in.key))
            return view(call, **path_values)

        return run

    return wrap


def _signed_in_or_none() -> session.Session | None:
    try:
        return current_session()
    except AssayError:  # signed out, or Datastore unreachable: the page still renders
        return None


def render(template: str, status: int = 200, **context: Any) -> flask.Response:
    signed_in = _signed_in_or_none()
    html = flask.render_template(
        template, signed_in=signed_in, csrf=csrf() if signed_in is not None else "", **context
    )
    return flask.Response(html, status=status, mimetype="text/html")


def query_of(model: type[BaseModel], **overrides: Any) -> Any:
    """The request's query string (empty fields dropped) validated by a route's query model."""
    args = flask.request.args.to_dict(flat=False)
    values = {k: v for k, v in args.items() if v and v != [""]}
    values.update({k: [v] for k, v in overrides.items() if v is not None})
    return parse_query(model, _MultiDict(values))


class _MultiDict:
    def __init__(self, values: dict[str, list[str]]):
        self._values = values

    def lists(self):
        return self._values.items()


def page_link(**changes: Any) -> str:
    """This page's URL with some query parameters changed (None removes one)."""
    args = flask.request.args.to_dict()
    args.update({k: v for k, v in changes.items()})
    args = {k: v for k, v in args.items() if v not in (None, "")}
    return flask.request.path + ("?" + urllib.parse.urlencode(args) if args else "")


@bp.app_template_global()
def link(**changes: Any) -> str:
    return page_link(**changes)


@bp.app_template_filter()
def number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# --- sign-in and sign-out -----------------------------------------------------------------


@bp.get("/sign-in")
def sign_in() -> flask.Response:
    nonce = flask.request.cookies.get(session.SIGN_IN_COOKIE) or session.sign_in_nonce()
    response = render("sign_in.html", nonce=nonce, next=_local_path(flask.request.args.get("next")), error=None)
    _cookie(response, session.SIGN_IN_COOKIE, nonce, max_age=3600)
    return response


@bp.post("/sign-in")
def sign_in_submit() -> flask.Response:
    svc = services()
    nonce = flask.request.cookies.get(session.SIGN_IN_COOKIE)
    sent = flask.request.form.get("csrf")
    target = _local_path(flask.request.form.get("next"))
    if not nonce or not sent or not session.hmac_equal(nonce, sent):
        raise Forbidden("this form has expired or did not come from the console: reload the page and try again", code="csrf")
    api_key = flask.request.form.get("api_key", "").strip()
    try:
        key = svc.keys.authenticate(svc.store, f"Bearer {api_key}")
    except Unauthenticated as e:
        log.info("console sign-in refused: %s", e.message, extra={"request_id": request_id()})
        # The key is never echoed back: the field comes back empty.
        return render("sign_in.html", 401, nonce=nonce, next=target, error=e.message)
    token, expires = session.issue(secret(), key, lifetime_s=svc.settings.console_session_s)
    log.info("console sign-in", extra={"account": key.account, "api_key": key.id, "request_id": request_id()})
    response = flask.redirect(target, code=303)
    _cookie(response, session.COOKIE, token, max_age=max(1, expires - int(time.time())))
    response.delete_cookie(session.SIGN_IN_COOKIE, path="/ui")
    return response


@bp.post("/sign-out")
@page()
def sign_out(call: Call) -> flask.Response:
    response = flask.redirect(flask.url_for("console.sign_in"), code=303)
    response.delete_cookie(session.COOKIE, path="/ui")
    return response


@bp.get("/")
def home() -> flask.Response:
    return flask.redirect(flask.url_for("console.evaluations"))


# --- models and datasets ------------------------------------------------------------------


@bp.get("/models")
@page()
def models(call: Call) -> flask.Response:
    query = query_of(ModelListQuery)
    found = model_routes.list_models(call, query=query)
    return render("artifacts.html", kind="models", title="Models", page=found, query=query)


@bp.get("/models/<model_id>")
@page()
def model(call: Call, model_id: str) -> flask.Response:
    _check_id("mdl", model_id)
    found = model_routes.get_model(call, model_id=model_id)
    board = evaluation_routes.list_evaluations(call, query=EvaluationListQuery(model_id=model_id, limit=50))
    return render("artifact.html", kind="model", entity=found, evaluations=board.items)


@bp.get("/datasets")
@page()
def datasets(call: Call) -> flask.Response:
    query = query_of(DatasetListQuery)
    found = dataset_routes.list_datasets(call, query=query)
    return render("artifacts.html", kind="datasets", title="Datasets", page=found, query=query)


@bp.get("/datasets/<dataset_id>")
@page()
def dataset(call: Call, dataset_id: str) -> flask.Response:
    _check_id("dst", dataset_id)
    found = dataset_routes.get_dataset(call, dataset_id=dataset_id)
    board = evaluation_routes.list_evaluations(call, query=EvaluationListQuery(dataset_id=dataset_id, limit=50))
    return render("artifact.html", kind="dataset", entity=found, evaluations=board.items)


@bp.get("/datasets/<dataset_id>/leaderboard")
@page()
def leaderboard(call: Call, dataset_id: str) -> flask.Response:
    _check_id("dst", dataset_id)
    found = dataset_routes.get_dataset(call, dataset_id=dataset_id)
    query = query_of(LeaderboardQuery)
    board = get_leaderboard(call, dataset_id=dataset_id, query=query)
    splits = sorted((found.splits or {}).keys())
    return render("leaderboard.html", dataset=found, board=board, query=query, splits=splits, metrics=LEADERBOARD_METRICS)


def _check_id(prefix: str, value: str) -> None:
    if not matches_id(prefix, value):
        raise NotFound("not found")


# --- evaluations --------------------------------------------------------------------------


@bp.get("/evaluations")
@page()
def evaluations(call: Call) -> flask.Response:
    query = query_of(EvaluationListQuery)
    found = evaluation_routes.list_evaluations(call, query=query)
    refresh = any(e.status in ACTIVE for e in found.items)
    return render("evaluations.html", page=found, query=query, refresh=refresh)


def _order_form(call: Call, *, errors: list[str], form: dict[str, str], status: int = 200) -> flask.Response:
    ready_models = model_routes.list_models(call, query=ModelListQuery(status="ready", limit=200)).items
    ready_datasets = dataset_routes.list_datasets(call, query=DatasetListQuery(status="ready", limit=200)).items
    return render("order.html", status, models=ready_models, datasets=ready_datasets, errors=errors, form=form)


@bp.get("/evaluations/new")
@page(Scope.write)
def order_form(call: Call) -> flask.Response:
    return _order_form(call, errors=[], form=flask.request.args.to_dict())


@bp.post("/evaluations")
@page(Scope.write)
def order(call: Call) -> flask.Response:
    form = flask.request.form.to_dict()
    spec: dict[str, Any] = {"model_id": form.get("model_id", ""), "dataset_id": form.get("dataset_id", "")}
    splits = [s.strip() for s in form.get("splits", "").split(",") if s.strip()]
    if splits:
        spec["splits"] = splits
    if form.get("name", "").strip():
        spec["name"] = form["name"].strip()
    config: dict[str, Any] = {}
    errors: list[str] = []
    for field in ("top_k", "batch_size"):
        text = form.get(field, "").strip()
        if text:
            if not text.isdigit():
                errors.append(f"{field}: a whole number")
            else:
                config[field] = int(text)
    if config:
        spec["config"] = config
    if not errors:
        try:
            body = CreateEvaluations.model_validate(spec)
            evaluation_routes.create_evaluations(call, body=body)
            return flask.redirect(flask.url_for("console.evaluations"), code=303)
        except ValidationError as e:
            errors = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        except (Invalid, InvalidRequest, NotFound) as e:
            errors = [e.message]
        except AssayError as e:
            if e.http_status != 409:
                raise
            errors = [e.message]
    return _order_form(call, errors=errors, form=form, status=422)


@bp.get("/evaluations/<evaluation_id>/delete")
@page(Scope.write)
def delete_confirm(call: Call, evaluation_id: str) -> flask.Response:
    _check_id("evl", evaluation_id)
    found = evaluation_routes.get_evaluation(call, evaluation_id=evaluation_id)
    return render("confirm_delete.html", evaluation=found)


@bp.post("/evaluations/<evaluation_id>/delete")
@page(Scope.write)
def delete(call: Call, evaluation_id: str) -> flask.Response:
    _check_id("evl", evaluation_id)
    evaluation_routes.delete_evaluation(call, evaluation_id=evaluation_id)
    return flask.redirect(flask.url_for("console.evaluations"), code=303)


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
    _check_id("evl", evaluation_id)
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
    summary = evaluation.summary or service.summary(call.store, cache, evaluation.id, account=call.account)
    query = _instances_query()
    with service.opened(call.store, cache, evaluation.id, account=call.account) as rs:
        matrix = queries.confusion_counts(rs)
        per_class = queries.classes(rs, matrix)
        bins = queries.calibration(rs, bins=int(summary.get("ece_bins") or 10))
        try:
            instances = queries.instances(rs, query)
            instances_error = None
        except (Invalid, InvalidRequest) as e:
            instances, instances_error = None, e.message
        parts = queries.stored_parts(rs, [i.instance_id for i in instances.items]) if instances else {}
    sort = flask.request.args.get("sort", "label")
    descending = sort.startswith("-")
    column = sort.lstrip("-")
    if column not in CLASS_COLUMNS:
        column, descending = "label", False
    rows = sorted(per_class.classes, key=lambda c: getattr(c, column if column != "label" else "class_index"), reverse=descending)
    expires = int(time.time()) + svc.settings.console_image_url_s
    images = {
        instance_id: flask.url_for(
            "console.image", evaluation_id=evaluation.id, instance=instance_id, part=part, expires=expires,
            signature=session.image_signature(
                secret(), account=call.account, evaluation_id=evaluation.id, instance_id=instance_id, part=part, expires=expires
            ),
        )
        for instance_id, part in parts.items()
    }
    scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    comparable = evaluation_routes.list_evaluations(
        call, query=EvaluationListQuery(dataset_id=evaluation.dataset_id, status="complete", limit=50)
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


@bp.get("/evaluations/<evaluation_id>/image")
@page()
def image(call: Call, evaluation_id: str) -> flask.Response:
    args = flask.request.args
    instance_id, part, signature = args.get("instance", ""), args.get("part", ""), args.get("signature", "")
    expires = args.get("expires", "")
    if not (expires.isdigit() and PART.match(part) and session.image_signature_valid(
        secret(), signature, account=call.account, evaluation_id=evaluation_id, instance_id=instance_id, part=part,
        expires=int(expires),
    )):
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


# --- the API document, and everything else ------------------------------------------------


@bp.get("/api")
@page()
def api_document(call: Call) -> flask.Response:
    return render("api.html")


@bp.get("/swagger/<name>")
def swagger_asset(name: str) -> flask.Response:
    import swagger_ui_bundle

    if name not in ("swagger-ui.css", "swagger-ui-bundle.js"):
        raise NotFound("not found")
    return flask.send_from_directory(swagger_ui_bundle.swagger_ui_path, name, max_age=3600)


@bp.route("/<path:rest>", methods=["GET", "POST"])
def unknown(rest: str) -> flask.Response:
    raise NotFound("not found")


# --- replies ------------------------------------------------------------------------------

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@bp.after_request
def _headers(response: flask.Response) -> flask.Response:
    csp = CSP
    if flask.request.endpoint == "console.api_document":
        csp = csp.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")  # Swagger UI sets style attributes
    response.headers["Content-Security-Policy"] = csp
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if flask.request.endpoint not in ("console.static", "console.swagger_asset", "console.image"):
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(Exception)
def _error(exc: BaseException) -> flask.Response:
    """Every failure of a console page as a page: a missing and another account's entity
    give the same 404, whatever the message underneath."""
    from werkzeug.exceptions import HTTPException

    if isinstance(exc, NotFound) or (isinstance(exc, HTTPException) and exc.code == 404):
        return render("error.html", 404, title="Not found", message="There is nothing here, or it is not yours to see.")
    if isinstance(exc, AssayError) and exc.http_status < 500:
        log.info("console page refused: %s %s", exc.http_status, exc.code, extra={"request_id": request_id(), "path": flask.request.path})
        return render("error.html", exc.http_status, title=_TITLES.get(exc.http_status, "Not possible"), message=exc.message)
    if isinstance(exc, HTTPException):
        return render("error.html", exc.code or 500, title=exc.name, message=exc.description or "")
    if isinstance(exc, AssayError):
        log.warning("console page failed: %s", exc.message, exc_info=exc, extra={"request_id": request_id()})
        return render("error.html", exc.http_status, title="Unavailable", message=f"{exc.message} (request {request_id()})")
    log.error("console page failed", exc_info=exc, extra={"request_id": request_id(), "path": flask.request.path})
    return render("error.html", 500, title="Something went wrong", message=f"internal error (request {request_id()})")


_TITLES = {400: "Bad request", 401: "Sign in", 403: "Not allowed", 409: "Not now", 413: "Too large", 422: "Not valid"}
