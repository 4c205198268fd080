"""The console's web layer: the blueprint, sessions and CSRF in requests, the ``page``
decorator every view wears, rendering, security headers and the error pages.

A view is ``@page(scope)``: it resumes the session (else redirects to sign-in), checks the
scope, checks the CSRF token of a POST before anything else happens, and gets a ``Call``
exactly like a route handler's.
"""

from __future__ import annotations

import functools
import logging
import urllib.parse
from collections.abc import Callable
from typing import Any

import flask
import werkzeug
from pydantic import BaseModel
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException

from functions.console import session
from functions.http import parse_query, request_id
from functions.services import Call, Caller, Services
from shared.api import matches_id
from shared.entities import Scope
from shared.errors import AssayError, Forbidden, NotFound, Unauthenticated

log = logging.getLogger("functions.console")

bp = flask.Blueprint("console", __name__, url_prefix="/ui", template_folder="templates", static_folder="static")


def services() -> Services:
    return flask.current_app.extensions["assay"]


def secret() -> bytes:
    return session.console_secret(services().settings)


def secure() -> bool:
    return flask.request.is_secure or flask.request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def set_cookie(response: werkzeug.Response, name: str, value: str, *, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/ui", httponly=True, samesite="Strict", secure=secure())


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


def local_path(target: str | None) -> str:
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
    html = flask.render_template(template, signed_in=signed_in, csrf=csrf() if signed_in is not None else "", **context)
    return flask.Response(html, status=status, mimetype="text/html")


def query_of(model: type[BaseModel], **overrides: Any) -> Any:
    """The request's query string (empty fields dropped) validated by a route's query model."""
    args = flask.request.args.to_dict(flat=False)
    values = {k: v for k, v in args.items() if v and v != [""]}  # a form's empty field is no filter
    values.update({k: [v] for k, v in overrides.items() if v is not None})
    return parse_query(model, MultiDict(values))


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


def check_id(prefix: str, value: str) -> None:
    """A value that cannot be such an id is as missing as an id nobody has."""
    if not matches_id(prefix, value):
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
    if isinstance(exc, NotFound) or (isinstance(exc, HTTPException) and exc.code == 404):
        return render("error.html", 404, title="Not found", message="There is nothing here, or it is not yours to see.")
    if isinstance(exc, AssayError) and exc.http_status < 500:
        log.info(
            "console page refused: %s %s",
            exc.http_status,
            exc.code,
            extra={"request_id": request_id(), "path": flask.request.path},
        )
        return render("error.html", exc.http_status, title=_TITLES.get(exc.http_status, "Not possible"), message=exc.message)
    if isinstance(exc, HTTPException):
        return render("error.html", exc.code or 500, title=exc.name, message=exc.description or "")
    if isinstance(exc, AssayError):
        log.warning("console page failed: %s", exc.message, exc_info=exc, extra={"request_id": request_id()})
        return render("error.html", exc.http_status, title="Unavailable", message=f"{exc.message} (request {request_id()})")
    log.error("console page failed", exc_info=exc, extra={"request_id": request_id(), "path": flask.request.path})
    return render("error.html", 500, title="Something went wrong", message=f"internal error (request {request_id()})")


_TITLES = {400: "Bad request", 401: "Sign in", 403: "Not allowed", 409: "Not now", 413: "Too large", 422: "Not valid"}
