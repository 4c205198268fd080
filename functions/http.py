"""Flask glue: the one place errors become HTTP replies, and the view that runs a route.

A route's view authenticates, checks the scope, validates path ids, query and body, calls
the plain handler and serialises its answer. Everything a handler or the layers below
raise on purpose is an ``AssayError`` and keeps its status; anything else is a bug: it is
logged with its stack and answered as a 500 that carries only the request id.
"""

from __future__ import annotations

import json
import logging
import math
import random
from typing import Any

import flask
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from functions.routing import Route
from functions.services import Call, Caller, Services
from shared.apikeys import require_scope
from shared.errors import AssayError, Invalid, InvalidRequest, RateLimited, Unavailable

log = logging.getLogger("functions.api")

JSON = "application/json"
_HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def request_id() -> str:
    rid = getattr(flask.g, "request_id", None)
    if rid is None:
        trace = flask.request.headers.get("X-Cloud-Trace-Context", "").split("/")[0]
        # Not uuid4: its os.urandom call gives up the GIL, and in a busy process every such
        # call waits to take it back. An id needs uniqueness, not secrecy.
        rid = flask.g.request_id = trace if trace.isalnum() and len(trace) <= 64 else f"{random.getrandbits(128):032x}"
    return rid


def json_reply(body: dict[str, Any] | BaseModel, status: int, headers: dict[str, str] | None = None) -> flask.Response:
    text = body.model_dump_json() if isinstance(body, BaseModel) else flask.json.dumps(body)
    return flask.Response(text, status=status, mimetype=JSON, headers=headers)


def error_reply(exc: BaseException) -> flask.Response:
    """Map any exception to the one error shape: ``{"error": {"code", "message", "details"}}``."""
    rid = request_id()
    fields = {"request_id": rid, "path": flask.request.path, "method": flask.request.method}
    headers: dict[str, str] = {}
    if isinstance(exc, AssayError):
        status, body = exc.http_status, exc.to_dict()
        if isinstance(exc, (RateLimited, Unavailable)):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        if status >= 500:
            log.warning("request failed: %s", exc.message, exc_info=exc, extra=fields)
        else:
            log.info("request refused: %s %s", status, exc.code, extra=fields)
    elif isinstance(exc, HTTPException):
        status = exc.code or 500
        code = _HTTP_CODES.get(status, f"http_{status}")
        details = None
        if status == 405:
            allowed = sorted(m for m in (exc.valid_methods or []) if m not in ("HEAD", "OPTIONS"))  # type: ignore[attr-defined]  # MethodNotAllowed's
            details = {"allowed": allowed}
            headers["Allow"] = ", ".join(allowed)
        message = {404: "no such route", 405: "method not allowed on this route", 413: "request body too large"}.get(
            status, exc.description or exc.name
        )
        body = {"code": code, "message": message, "details": details}
        log.info("request refused: %s %s", status, code, extra=fields)
    else:
        log.error("unexpected error", exc_info=exc, extra=fields)
        status = 500
        body = {"code": "internal", "message": "internal error", "details": {"request_id": rid}}
    return json_reply({"error": body}, status, headers)


def _validation_details(error: ValidationError) -> dict[str, Any]:
    return {
        "fields": [{"path": ".".join(str(p) for p in e["loc"]), "message": e["msg"], "type": e["type"]} for e in error.errors()]
    }


def _integral_as_int(text: str) -> int | float:
    """JSON Schema counts 23.0 as an integer; pydantic's strict mode would refuse it for an
    int field. A float with no fraction becomes an int (a float field takes ints)."""
    value = float(text)
    return int(value) if value.is_integer() else value


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(model: type[BaseModel], raw: bytes) -> BaseModel:
    """Raises InvalidRequest for malformed JSON, Invalid (with field paths) for the rest."""
    try:
        document = json.loads(raw or b"", parse_float=_integral_as_int, parse_constant=_not_json)
    except (ValueError, RecursionError):  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidRequest("request body is not valid JSON") from None
    try:
        return model.model_validate_json(json.dumps(document), strict=True)
    except ValidationError as e:
        if any(err["type"] == "json_invalid" for err in e.errors()):  # e.g. a lone surrogate in a string
            raise InvalidRequest("request body is not valid JSON") from None
        raise Invalid("request body is invalid", details=_validation_details(e)) from None


def parse_query(model: type[BaseModel], args: Any) -> BaseModel:
    values = {k: (v[0] if len(v) == 1 else v) for k, v in args.lists()}
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise Invalid("query parameters are invalid", details=_validation_details(e)) from None


def run_route(route: Route, services: Services, path_values: dict[str, str]) -> flask.Response:
    """Every Datastore call the request makes (authentication included) shares one budget:
    past it the request answers 503 with Retry-After instead of holding its thread."""
    with services.store.budget(services.settings.api_datastore_deadline_s):
        return _run_route(route, services, path_values)


def _run_route(route: Route, services: Services, path_values: dict[str, str]) -> flask.Response:
    request = flask.request
    call = Call(services=services, request_id=request_id())
    if route.scope is not None:
        key = services.keys.authenticate(services.store, request.headers.get("Authorization"))
        require_scope(key, route.scope)
        call.caller = Caller(key)
    kwargs: dict[str, Any] = dict(path_values)
    if route.query is not None:
        kwargs["query"] = parse_query(route.query, request.args)
    if route.body is not None:
        kwargs["body"] = parse_body(route.body, request.get_data())
    result = route.handler(call, **kwargs)
    status = route.status
    if isinstance(result, tuple):
        result, status = result
    return json_reply(result, status)
