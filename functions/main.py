"""Cloud Functions entry points.

- ``api``: the HTTP API (``functions-framework --target=api``): the flask app built by
  ``create_app`` serves the request.
- ``storage_events``: a CloudEvent function for Cloud Storage object-finalize events (or
  the Pub/Sub messages that carry them): marks the model or dataset ``uploaded``.

Settings, logging and clients are set up once per instance, on the first request.
"""

from __future__ import annotations

import functools
import logging

import flask
import functions_framework
from cloudevents.http import CloudEvent
from flask.ctx import RequestContext

from functions.app import create_app
from functions.http import error_reply, request_id
from functions.services import Services
from functions.uploads import object_finalized, parse_event
from shared.logs import configure_logging
from shared.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["api", "storage_events", "create_app"]


@functools.cache
def services() -> Services:
    settings = Settings()
    configure_logging(settings.api_log_level)
    return Services.from_settings(settings)


@functools.cache
def app() -> flask.Flask:
    return create_app(services=services())


@functions_framework.http
def api(request: flask.Request) -> flask.Response:
    # functions-framework serves every path to this function; the API app routes it. The
    # request object is handed over as it is: its body stream can only be read once.
    inner = app()
    with RequestContext(inner, request.environ, request=request):
        return inner.full_dispatch_request()


@functions_framework.errorhandler(Exception)
def framework_refusal(exc: Exception) -> flask.Response:
    """What functions-framework answers itself, in the API's error shape: its rule
    ``/<path:path>`` matches no path holding a newline (``/v1/models/mdl_…%0a``), it refuses
    ``/robots.txt`` and ``/favicon.ico``, and it turns an error raised before the API app
    runs (settings that do not validate) into a 500 — each an HTML page of its own."""
    reply = error_reply(exc)
    reply.headers["X-Request-Id"] = request_id()
    return reply


@functions_framework.cloud_event
def storage_events(cloud_event: CloudEvent) -> None:
    """Raises only for a temporary failure (Datastore down), so the event is redelivered."""
    svc = services()
    obj = parse_event(cloud_event.data)
    if obj is None:
        return
    outcome, hints = object_finalized(svc.store, obj, bucket=svc.settings.bucket)
    svc.hint(hints)
    log.info("storage event handled", extra={"object": obj.name, "outcome": str(outcome), "event_id": cloud_event["id"]})
