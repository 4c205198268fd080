"""The API as a flask app: the route table served, with one error handler for everything.

``create_app(settings)`` is what tests and the ``api`` entry point both use. Routes come
from the routers in ``functions.routes.ROUTERS`` (or the ones passed in).
"""

from __future__ import annotations

import functools

import flask

from functions.console import mount as mount_console
from functions.http import error_reply, request_id, run_route
from functions.openapi import openapi_document
from functions.routing import IdConverter, Route, Router
from functions.services import Services
from shared.indexes import Index
from shared.settings import Settings


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    routers: list[Router] | None = None,
    indexes: list[Index] | None = None,
) -> flask.Flask:
    """Build the API. ``indexes`` (tests) makes the store refuse queries no index serves."""
    if services is None:
        services = Services.from_settings(settings or Settings(), indexes=indexes)
    if routers is None:
        from functions.routes import ROUTERS

        routers = ROUTERS
    app = flask.Flask("assay-api")
    # Paths match exactly: werkzeug would otherwise answer "/v1//models" with a redirect
    # (an HTML body) to "/v1/models". A path that matches no rule is a JSON 404.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = True
    app.url_map.converters["id"] = IdConverter
    app.config["MAX_CONTENT_LENGTH"] = services.settings.api_max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]  # DefaultJSONProvider's, not the base class's
    app.extensions["assay"] = services
    routes = [route for router in routers for route in router.routes]
    app.extensions["assay.routes"] = routes
    app.extensions["assay.openapi"] = functools.cache(lambda: openapi_document(routers, settings=services.settings))

    for route in routes:
        _add(app, route, services)

    app.register_error_handler(Exception, error_reply)
    mount_console(app)

    @app.before_request
    def _request_id() -> None:
        request_id()

    @app.after_request
    def _tag(response: flask.Response) -> flask.Response:
        response.headers["X-Request-Id"] = request_id()
        return response

    return app


def _add(app: flask.Flask, route: Route, services: Services) -> None:
    def view(**path_values: str) -> flask.Response:
        return run_route(route, services, path_values)

    view.provide_automatic_options = False  # type: ignore[attr-defined]  # OPTIONS is a 405 like any other
    app.add_url_rule(route.flask_rule, endpoint=route.endpoint, view_func=view, methods=[route.method])
