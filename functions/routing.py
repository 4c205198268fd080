"""The route table: each resource module declares its routes on a ``Router``; the app
serves them and the OpenAPI document is generated from the same declarations.

A route says who may call it (``scope``, or ``None`` for a public route), what its body and
query parameters are (pydantic models, validated before the handler runs) and what it
returns. The handler is plain Python: ``handler(call, *, body=…, query=…, **path_params)``
returning the response model (or ``(model, status)`` when the status varies).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from werkzeug.routing import BaseConverter, Map

from shared.api import id_pattern
from shared.entities import Scope


class IdConverter(BaseConverter):
    """A path segment that is exactly an id with the given prefix (``<id('mdl'):model_id>``)."""

    part_isolating = True

    def __init__(self, url_map: Map, prefix: str):
        super().__init__(url_map)
        if not re.fullmatch(r"[a-z]{3}", prefix):
            raise ValueError(f"id prefix {prefix!r}: three lower-case letters")
        self.regex = id_pattern(prefix).removeprefix("^").removesuffix("$")


@dataclass(frozen=True)
class PathParam:
    """A path parameter: an entity id, so anything that cannot be one is a 404."""

    name: str
    prefix: str


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI style: /v1/models/{model_id}
    handler: Callable[..., Any]
    scope: Scope | None
    response: type[BaseModel] | None  # None: a free-form JSON object
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    params: tuple[PathParam, ...] = ()
    summary: str = ""
    tag: str = ""
    statuses: tuple[int, ...] = ()  # other success statuses the handler may return

    @property
    def flask_rule(self) -> str:
        """The werkzeug rule: each id parameter through ``IdConverter``, so a path segment
        that is not exactly an id of its kind matches no route (a 404 from routing itself,
        before authentication: the route table is public)."""
        prefixes = {p.name: p.prefix for p in self.params}
        return re.sub(r"\{(\w+)\}", lambda m: f"<id({prefixes[m.group(1)]!r}):{m.group(1)}>", self.path)

    @property
    def endpoint(self) -> str:
        return f"{self.tag}.{self.handler.__name__}"


@dataclass
class Router:
    """The routes of one resource (one tag in the OpenAPI document)."""

    tag: str
    description: str = ""
    routes: list[Route] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        scope: Scope | None,
        response: type[BaseModel] | None,
        status: int = 200,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        params: dict[str, str] | None = None,
        statuses: tuple[int, ...] = (),
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declare a route. ``params`` maps each path parameter to its id prefix."""

        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            declared = set(re.findall(r"\{(\w+)\}", path))
            if declared != set(params or {}):
                raise ValueError(f"{method} {path}: path parameters {declared} need an id prefix each")
            self.routes.append(
                Route(
                    method=method.upper(),
                    path=path,
                    handler=handler,
                    scope=scope,
                    response=response,
                    status=status,
                    body=body,
                    query=query,
                    params=tuple(PathParam(n, p) for n, p in (params or {}).items()),
                    summary=(handler.__doc__ or "").strip().splitlines()[0] if handler.__doc__ else "",
                    tag=self.tag,
                    statuses=statuses,
                )
            )
            return handler

        return register

    def get(self, path: str, **kwargs: Any):
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any):
        return self.route("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any):
        return self.route("DELETE", path, **kwargs)
