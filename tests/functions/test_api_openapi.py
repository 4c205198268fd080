"""The OpenAPI document validates, describes every route, and says what the server accepts:
under property-based testing (schemathesis, every check, 100 examples per operation) no
5xx, no reply that breaks the schema, no schema-valid request refused and no schema-invalid
one taken."""

from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from functions.openapi import openapi_document
from functions.routes import ROUTERS
from shared.settings import Settings


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


# The document depends on the route table and the settings' limits only, so the schema is
# built at import time (with the default settings, as the test app has them) and each
# operation becomes its own test; requests go to the test's app in-process (WSGI).
schema = schemathesis.openapi.from_dict(openapi_document(ROUTERS, settings=Settings()))


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
def test_every_operation_keeps_to_the_schema(case, app, alice):
    """Every check schemathesis has (no 5xx, replies that keep to the schema, schema-valid
    requests accepted, schema-invalid ones refused, auth enforced, …), positive and negative
    cases, with alice's admin key on the emulators.

    One thing the schema cannot say is which page tokens the server issued: a token of the
    right alphabet that it never issued is a 400 (tests/functions/test_api_hostile_paths.py),
    so schema-valid cases are sent without one (empty, the first page, stays).
    """
    case.operation.schema.app = app
    if case.meta is not None and case.meta.generation.mode.is_positive and isinstance(case.query, dict):
        if case.query.get("page_token"):
            del case.query["page_token"]
    # A case generated without the Authorization header is sent without it.
    headers = {} if case.operation.schema.is_security_param_negated(case) else alice.admin
    case.call_and_validate(app=app, headers=headers)


DOC = openapi_document(ROUTERS, settings=Settings())


def body_schema_valid(path: str, method: str, body: dict) -> bool:
    ref = DOC["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    validator = Draft202012Validator(
        {"$ref": ref, "components": DOC["components"]}, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    return validator.is_valid(body)


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/models", {"name": "m", "size": 10, "content_type": ""}),
        ("/v1/models", {"name": "m", "size": 10, "content_type": "application/zip"}),
        ("/v1/models", {"name": "m", "size": 10, "content_type": "application/x-parquet"}),  # a dataset's type
        ("/v1/models", {"name": "m", "size": 10.0}),
        ("/v1/models", {"name": "m", "size": 10.5}),
        ("/v1/models", {"name": "m", "size": 2 * 1024**3 + 1}),  # over the settings' limit: the schema's maximum
        ("/v1/datasets", {"name": "d", "size": 10, "format": "parquet", "content_type": "application/zip"}),
        ("/v1/api-keys", {"name": "k", "scopes": ["read"], "expires_at": "2001-01-01T00:00:00Z"}),
        ("/v1/api-keys", {"name": "k", "scopes": ["read"], "expires_at": "2001-01-01T00:00:00"}),
    ],
)
def test_the_server_takes_a_body_exactly_when_the_schema_does(client, alice, path, body):
    r = client.post(path, json=body, headers=alice.admin)
    assert r.status_code in (201, 422), r.json
    assert (r.status_code == 201) == body_schema_valid(path, "post", body), r.json


@pytest.mark.parametrize("selector", ["team=vision", "a=1,b=", "example.com/tier=gold", "", "a = 1", "a", "a=1,", "a=b=c", "=1"])
def test_the_server_takes_a_label_selector_exactly_when_the_schema_does(client, alice, selector):
    pattern = next(p for p in DOC["paths"]["/v1/models"]["get"]["parameters"] if p["name"] == "labels")["schema"]["pattern"]
    r = client.get("/v1/models", query_string={"labels": selector}, headers=alice.read)
    assert r.status_code in (200, 422)
    assert (r.status_code == 200) == (re.search(pattern, selector) is not None and "\n" not in selector)


def test_an_evaluation_ordered_with_an_integral_float_top_k_is_the_same_as_with_an_int(client, alice):
    model = client.post("/v1/models", json={"name": "m", "size": 10}, headers=alice.write).json["model"]["id"]
    dataset = client.post("/v1/datasets", json={"name": "d", "size": 10}, headers=alice.write).json["dataset"]["id"]
    order = {"model_id": model, "dataset_id": dataset, "splits": ["test"]}
    first = client.post("/v1/evaluations", json={**order, "config": {"top_k": 23.0}}, headers=alice.write)
    again = client.post("/v1/evaluations", json={**order, "config": {"top_k": 23}}, headers=alice.write)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json["evaluations"][0]["evaluation"]["config"]["top_k"] == 23


def test_a_label_key_prefix_over_253_characters_is_refused_by_schema_and_server_alike(client, alice):
    for prefix, status in (("a" * 253, 200), ("a" * 254, 422)):
        selector = f"{prefix}/team=vision"
        assert client.get("/v1/models", query_string={"labels": selector}, headers=alice.read).status_code == status
        body = {"name": "m", "size": 1, "labels": {f"{prefix}/team": "vision"}}
        assert (client.post("/v1/models", json=body, headers=alice.write).status_code == 201) == (status == 200)
        assert body_schema_valid("/v1/models", "post", body) == (status == 200)


@pytest.mark.parametrize("allow_loopback", [False, True])
def test_a_webhook_url_is_taken_exactly_when_the_served_schema_allows_it(settings, allow_loopback):
    """The document served carries the URL pattern in force: a local stack's also allows
    http to loopback, and ``check_url`` enforces the same pattern."""
    from shared.webhooks import check_url

    deployment = settings.model_copy(update={"webhook_allow_http_loopback": allow_loopback})
    pattern = openapi_document(ROUTERS, settings=deployment)["components"]["schemas"]["CreateWebhook"]["properties"]["url"][
        "pattern"
    ]
    urls = [
        "https://hooks.example.com/assay?x=1",
        "https://a.b:8443",
        "http://127.0.0.1:8080/hook",
        "http://localhost/x",
        "https://10.0.0.1/",
        "https://169.254.169.254/",
        "https://u:p@example.com/",
        "https://example.com/#f",
        "http://example.com/",
        "https://localhost/",
        "https://example.com:0/",
        "https://example.com\n",
    ]
    for url in urls:
        try:
            check_url(url, allow_http_loopback=allow_loopback)
            taken = True
        except ValueError:
            taken = False
        assert taken == (re.search(pattern, url) is not None and not url.endswith("\n")), url
