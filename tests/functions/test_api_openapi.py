"""The OpenAPI document validates, describes every route, and the app keeps to it under
property-based testing (schemathesis): no 5xx, no reply that breaks the schema."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from functions.openapi import openapi_document
from functions.routes import ROUTERS


def test_the_document_is_valid_openapi_3_1_and_lists_every_route(client):
    doc = client.get("/v1/openapi.json").json
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    declared = {(r.method.lower(), r.path) for router in ROUTERS for r in router.routes}
    served = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == declared
    create = doc["paths"]["/v1/models"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/CreateModel"}
    assert "secret_hash" not in doc["components"]["schemas"]["ApiKeyView"]["properties"]
    assert doc["paths"]["/v1/health"]["get"]["security"] == []


# The document depends on the route table only, so the schema is built at import time and
# each operation becomes its own test; requests go to the app in-process (WSGI).
schema = schemathesis.openapi.from_dict(openapi_document(ROUTERS))


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_operation_keeps_to_the_schema(case, app, alice):
    case.call_and_validate(
        app=app,
        headers=alice.admin,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
