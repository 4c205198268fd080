"""The console's pages besides one evaluation's (``evaluation_page.py``): sign-in and
sign-out, models, datasets, leaderboards, the evaluations list, ordering and deleting, and
the API document. Each view calls the JSON routes' handlers, so it reads exactly what the
API would answer the same account.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import time
from typing import Any

import flask
import werkzeug
from pydantic import ValidationError

from functions.console import session
from functions.console.web import bp, check_id, local_path, page, query_of, render, secret, services, set_cookie
from functions.evaluations import CANCELLABLE
from functions.http import request_id
from functions.results.routes import get_leaderboard
from functions.routes import datasets as dataset_routes, evaluations as evaluation_routes, models as model_routes
from functions.services import Call
from shared.api import CreateEvaluations, DatasetListQuery, EvaluationListQuery, ModelListQuery
from shared.entities import EvaluationStatus, Scope
from shared.errors import AssayError, Forbidden, Invalid, InvalidRequest, NotFound, Unauthenticated
from shared.results_api import LeaderboardMetric, LeaderboardQuery

log = logging.getLogger("functions.console")

LEADERBOARD_METRICS: tuple[str, ...] = LeaderboardMetric.__args__  # type: ignore[attr-defined]  # a Literal's values
ACTIVE = frozenset({EvaluationStatus.waiting, EvaluationStatus.pending, EvaluationStatus.admitted, EvaluationStatus.running})


# --- sign-in and sign-out -----------------------------------------------------------------


@bp.get("/sign-in")
def sign_in() -> werkzeug.Response:
    nonce = flask.request.cookies.get(session.SIGN_IN_COOKIE) or session.sign_in_nonce()
    response = render("sign_in.html", nonce=nonce, next=local_path(flask.request.args.get("next")), error=None)
    set_cookie(response, session.SIGN_IN_COOKIE, nonce, max_age=3600)
    return response


@bp.post("/sign-in")
def sign_in_submit() -> werkzeug.Response:
    svc = services()
    nonce = flask.request.cookies.get(session.SIGN_IN_COOKIE)
    sent = flask.request.form.get("csrf")
    target = local_path(flask.request.form.get("next"))
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
    set_cookie(response, session.COOKIE, token, max_age=max(1, expires - int(time.time())))
    response.delete_cookie(session.SIGN_IN_COOKIE, path="/ui")
    return response


@bp.post("/sign-out")
@page()
def sign_out(call: Call) -> werkzeug.Response:
    response = flask.redirect(flask.url_for("console.sign_in"), code=303)
    response.delete_cookie(session.COOKIE, path="/ui")
    return response


@bp.get("/")
def home() -> werkzeug.Response:
    return flask.redirect(flask.url_for("console.evaluations"))


# --- models and datasets ------------------------------------------------------------------


@bp.get("/models")
@page()
def models(call: Call) -> werkzeug.Response:
    query = query_of(ModelListQuery)
    found = model_routes.list_models(call, query=query)
    return render("artifacts.html", kind="models", title="Models", page=found, query=query)


@bp.get("/models/<model_id>")
@page()
def model(call: Call, model_id: str) -> werkzeug.Response:
    check_id("mdl", model_id)
    found = model_routes.get_model(call, model_id=model_id)
    board = evaluation_routes.list_evaluations(call, query=EvaluationListQuery(model_id=model_id, limit=50))
    return render("artifact.html", kind="model", entity=found, evaluations=board.items)


@bp.get("/datasets")
@page()
def datasets(call: Call) -> werkzeug.Response:
    query = query_of(DatasetListQuery)
    found = dataset_routes.list_datasets(call, query=query)
    return render("artifacts.html", kind="datasets", title="Datasets", page=found, query=query)


@bp.get("/datasets/<dataset_id>")
@page()
def dataset(call: Call, dataset_id: str) -> werkzeug.Response:
    check_id("dst", dataset_id)
    found = dataset_routes.get_dataset(call, dataset_id=dataset_id)
    board = evaluation_routes.list_evaluations(call, query=EvaluationListQuery(dataset_id=dataset_id, limit=50))
    return render("artifact.html", kind="dataset", entity=found, evaluations=board.items)


@bp.get("/datasets/<dataset_id>/leaderboard")
@page()
def leaderboard(call: Call, dataset_id: str) -> werkzeug.Response:
    check_id("dst", dataset_id)
    found = dataset_routes.get_dataset(call, dataset_id=dataset_id)
    query = query_of(LeaderboardQuery)
    board = get_leaderboard(call, dataset_id=dataset_id, query=query)
    splits = sorted((found.splits or {}).keys())
    return render("leaderboard.html", dataset=found, board=board, query=query, splits=splits, metrics=LEADERBOARD_METRICS)


# --- evaluations --------------------------------------------------------------------------


@bp.get("/evaluations")
@page()
def evaluations(call: Call) -> werkzeug.Response:
    query = query_of(EvaluationListQuery)
    found = evaluation_routes.list_evaluations(call, query=query)
    refresh = any(e.status in ACTIVE for e in found.items)
    return render("evaluations.html", page=found, query=query, refresh=refresh)


def _order_form(call: Call, *, errors: list[str], form: dict[str, str], status: int = 200) -> werkzeug.Response:
    ready_models = model_routes.list_models(call, query=ModelListQuery(status="ready", limit=200)).items
    ready_datasets = dataset_routes.list_datasets(call, query=DatasetListQuery(status="ready", limit=200)).items
    return render("order.html", status, models=ready_models, datasets=ready_datasets, errors=errors, form=form)


@bp.get("/evaluations/new")
@page(Scope.write)
def order_form(call: Call) -> werkzeug.Response:
    return _order_form(call, errors=[], form=flask.request.args.to_dict())


# The form's config fields: what each task's config calls them, and whether a number. A
# field left empty is not sent, so the model's task fills in its own default.
_NUMBER_FIELDS = ("top_k", "batch_size", "max_length", "num_fewshot", "max_new_tokens")
_TEXT_FIELDS = ("truncation_side", "fewshot_split")


def _config_of_form(form: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The config the form's fields and its JSON box (``more_config``) say, and what is wrong."""
    config: dict[str, Any] = {}
    errors: list[str] = []
    more = form.get("more_config", "").strip()
    if more:
        try:
            parsed = json.loads(more)
        except ValueError as e:
            parsed = None
            errors.append(f"more configuration: not JSON ({e})")
        if isinstance(parsed, dict):
            config.update(parsed)
        elif parsed is not None:
            errors.append('more configuration: a JSON object, e.g. {"template": "Q: {question}\\nA:"}')
    for field in _NUMBER_FIELDS:
        text = form.get(field, "").strip()
        if text:
            if not text.isdigit():
                errors.append(f"{field}: a whole number")
            else:
                config[field] = int(text)
    for field in _TEXT_FIELDS:
        if form.get(field, "").strip():
            config[field] = form[field].strip()
    return config, errors


@bp.post("/evaluations")
@page(Scope.write)
def order(call: Call) -> werkzeug.Response:
    form = flask.request.form.to_dict()
    spec: dict[str, Any] = {"model_id": form.get("model_id", ""), "dataset_id": form.get("dataset_id", "")}
    splits = [s.strip() for s in form.get("splits", "").split(",") if s.strip()]
    if splits:
        spec["splits"] = splits
    if form.get("name", "").strip():
        spec["name"] = form["name"].strip()
    config, errors = _config_of_form(form)
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


# What a confirmed action on one evaluation does: the route handler it calls and what the
# confirmation page says before it runs.
_ACTIONS = {
    "delete": (
        evaluation_routes.delete_evaluation,
        "Deleting stops it if it runs and removes its results; this cannot be undone.",
    ),
    "cancel": (
        evaluation_routes.cancel_evaluation,
        "Cancelling stops its job; the shards already written are kept, so ordering it again resumes from them.",
    ),
}


@bp.app_template_global()
def cancellable(status: str) -> bool:
    return status in CANCELLABLE


@bp.get("/evaluations/<evaluation_id>/<any(delete, cancel):action>")
@page(Scope.write)
def confirm_action(call: Call, evaluation_id: str, action: str) -> werkzeug.Response:
    check_id("evl", evaluation_id)
    found = evaluation_routes.get_evaluation(call, evaluation_id=evaluation_id)
    return render("confirm.html", evaluation=found, action=action, explanation=_ACTIONS[action][1])


@bp.post("/evaluations/<evaluation_id>/<any(delete, cancel):action>")
@page(Scope.write)
def act(call: Call, evaluation_id: str, action: str) -> werkzeug.Response:
    check_id("evl", evaluation_id)
    handler, explanation = _ACTIONS[action]
    try:
        handler(call, evaluation_id=evaluation_id)
    except AssayError as e:
        if e.http_status != 409:  # a finished evaluation cannot be cancelled: say why
            raise
        found = evaluation_routes.get_evaluation(call, evaluation_id=evaluation_id)
        return render("confirm.html", 409, evaluation=found, action=action, explanation=explanation, error=e.message)
    return flask.redirect(
        flask.url_for("console.evaluation", evaluation_id=evaluation_id)
        if action == "cancel"
        else flask.url_for("console.evaluations"),
        code=303,
    )


# --- the API document, and everything else ------------------------------------------------


@bp.get("/api")
@page()
def api_document(call: Call) -> werkzeug.Response:
    return render("api.html")


SWAGGER_ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js")


@bp.get("/swagger/<name>")
def swagger_asset(name: str) -> werkzeug.Response:
    """Swagger UI 5 (it reads OpenAPI 3.1) from the ``swagger-ui-py`` package's files."""
    if name not in SWAGGER_ASSETS:
        raise NotFound("not found")
    folder = importlib.resources.files("swagger_ui") / "static"
    return flask.send_from_directory(str(folder), name, max_age=3600)


@bp.route("/<path:rest>", methods=["GET", "POST"])
def unknown(rest: str) -> werkzeug.Response:
    raise NotFound("not found")
