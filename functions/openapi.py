"""The OpenAPI 3.1 document, generated from the route table and the pydantic models.

Every operation documents its success reply and a ``default`` reply in the one error
shape; schemas are pydantic's JSON Schema (OpenAPI 3.1 is JSON Schema 2020-12), collected
under ``components/schemas``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from functions.routing import Route, Router
from shared.api import SETTING_MAXIMUM, SETTING_PATTERN, ErrorResponse, id_pattern
from shared.settings import Settings

REF = "#/components/schemas/{model}"


def openapi_document(routers: list[Router], *, settings: Settings | None = None, version: str = "1") -> dict[str, Any]:
    """The document; with ``settings``, the limits a deployment sets (``SETTING_MAXIMUM``)
    become the fields' ``maximum``, so a request the schema allows is one the server takes."""
    routes = [route for router in routers for route in router.routes]
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorResponse, "serialization")]
    for route in routes:
        if route.body is not None:
            models.append((route.body, "validation"))
        if route.response is not None:
            models.append((route.response, "serialization"))
    refs, defs = models_json_schema(models, ref_template=REF)
    schemas = _with_settings(defs.get("$defs", {}), settings or Settings())

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Assay",
            "version": version,
            "description": "Evaluate machine-learning models on datasets. Authenticate with 'Authorization: Bearer assay_…'.",
        },
        "tags": [{"name": r.tag, "description": r.description} for r in routers],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "assay_<key id>_<secret>"}},
        },
    }


def _operation(route: Route, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    error = {"description": "An error", "content": {"application/json": {"schema": refs[(ErrorResponse, "serialization")]}}}
    success_schema = refs[(route.response, "serialization")] if route.response is not None else {"type": "object"}
    success = {"description": "Success", "content": {"application/json": {"schema": success_schema}}}
    responses: dict[str, Any] = {str(route.status): success}
    for status in route.statuses:
        responses[str(status)] = success
    responses["default"] = error
    op: dict[str, Any] = {
        "operationId": route.endpoint.replace(".", "_"),
        "summary": route.summary,
        "tags": [route.tag],
        "responses": responses,
        "security": [{"apiKey": []}] if route.scope is not None else [],
    }
    if route.scope is not None:
        op["description"] = f"Requires the '{route.scope}' scope."
    parameters = [
        {"name": p.name, "in": "path", "required": True, "schema": {"type": "string", "pattern": id_pattern(p.prefix)}}
        for p in route.params
    ]
    if route.query is not None:
        schema = route.query.model_json_schema(ref_template=REF)
        for name, prop in schema.get("properties", {}).items():
            prop = dict(prop)
            prop.pop("title", None)
            parameters.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in schema.get("required", []),
                    "schema": _inline(prop, schema.get("$defs", {})),
                }
            )
    if parameters:
        op["parameters"] = parameters
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
        }
    return op


def _with_settings(schema: Any, settings: Settings) -> Any:
    if isinstance(schema, dict):
        out = {k: _with_settings(v, settings) for k, v in schema.items() if k not in (SETTING_MAXIMUM, SETTING_PATTERN)}
        if SETTING_MAXIMUM in schema:
            out["maximum"] = getattr(settings, schema[SETTING_MAXIMUM])
        for setting, pattern in schema.get(SETTING_PATTERN, {}).items():
            if getattr(settings, setting):
                out["pattern"] = pattern
        return out
    if isinstance(schema, list):
        return [_with_settings(v, settings) for v in schema]
    return schema


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """Query parameter schemas are small: inline their $refs (enums) instead of sharing them."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema
