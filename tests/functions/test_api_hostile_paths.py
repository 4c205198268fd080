"""Every route, walked from the route table with hostile path values and page tokens,
through functions-framework as it serves the API: every reply is JSON in the error shape
with the status HTTP gives it — an id that is not exactly one of ours is a 404, a path that
is not exactly a route's is a 404, a page token the server did not issue is a 400."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import functions_framework
import numpy as np
import pytest

from functions import webhooks
from functions.routes import ROUTERS
from shared.api import CreateWebhook
from shared.entities import ApiKey, Dataset, Model
from tests.results.conftest import generate, stored_evaluation, upload_result_set

MAIN = Path(__file__).resolve().parents[2] / "functions" / "main.py"
ROUTES = [route for router in ROUTERS for route in router.routes]
OTHER_PREFIX = {"mdl": "dst", "dst": "evl", "evl": "key", "key": "whk", "whk": "mdl"}


def hostile_ids(prefix: str, valid: str) -> dict[str, str]:
    """Values of an id path segment, already percent-encoded, each of which names nothing."""
    return {
        "encoded newline": quote(valid + "\n"),
        "encoded carriage return": quote(valid + "\r"),
        "encoded NUL": quote(valid + "\x00"),
        "encoded space": quote(valid + " "),
        "trailing slash": valid + "/",
        "encoded slash": quote(valid + "/", safe=""),
        "unicode": quote(f"{prefix}_" + "ü" * 20),
        "unicode digits": quote(f"{prefix}_" + "٠" * 20),
        "upper case": f"{prefix}_" + "A" * 20,
        "overlong": f"{prefix}_" + "0" * 5000,
        "short": f"{prefix}_0",
        "other prefix": f"{OTHER_PREFIX[prefix]}_" + valid.split("_", 1)[1],
        "dot dot": "..",
        "percent": "%25",
    }


# Tokens the server never issued; each is a 400 (over 4096 characters: a 422 on the length).
BAD_TOKENS = ["!!!!", "not base64", "ü", "A", "AB", "AAAA=", "====", "\n", "eyJ2IjoxfQ\n", "a.b", "AAAAAAAA"]


@pytest.fixture
def api(entry_point_env, monkeypatch):
    """functions/main.py's ``api`` as functions-framework serves it."""
    for k, v in entry_point_env.items():
        monkeypatch.setenv(k, v)
    return functions_framework.create_app(target="api", source=str(MAIN), signature_type="http").test_client()


@pytest.fixture
def live_ids(services, storage, alice, tmp_path) -> dict[str, str]:
    """Alice's entities, one per id prefix: a complete evaluation with a result set (its
    dataset ready), so every route gets past its existence checks to the part under test."""
    dataset = Dataset(
        id=Dataset.new_id(),
        account=alice.account,
        name="digits",
        declared_size=1,
        content_type="application/zip",
        upload_object="u",
        status="ready",
        splits={"test": 20},
    )
    services.store.put(dataset)
    model = Model(
        id=Model.new_id(),
        account=alice.account,
        name="vit",
        declared_size=1,
        content_type="application/zip",
        upload_object="u",
        status="ready",
    )
    services.store.put(model)
    g = generate(tmp_path / "r", n=20, classes=3, labels=np.arange(20) % 3, seed=0)
    evaluation = stored_evaluation(
        services.store,
        account=alice.account,
        dataset_id=dataset.id,
        model_id=model.id,
        summary={"label_names": g.label_names, "accuracy": 0.5, "instances": 20},
    )
    upload_result_set(storage, evaluation.id, g.directory)
    key = services.store.list(ApiKey, account=alice.account).items[0]
    webhook, _ = webhooks.create(
        services.store,
        CreateWebhook(url="https://example.com/hook", events=["evaluation.complete"]),
        account=alice.account,
        settings=services.settings,
    )
    return {"mdl": evaluation.model_id, "dst": dataset.id, "evl": evaluation.id, "key": key.id, "whk": webhook.id}


def assert_json_error(r, status: int, code: str | None = None) -> None:
    where = f"{r.request.method} {r.request.path!r}: {r.status_code} {r.get_data(as_text=True)[:200]}"
    assert r.status_code == status, where
    assert r.mimetype == "application/json", where
    assert set(r.json) == {"error"} and set(r.json["error"]) == {"code", "message", "details"}, where
    if code is not None:
        assert r.json["error"]["code"] == code, where
    assert r.headers["X-Request-Id"], where


def send(api, method: str, path: str, headers: dict[str, str]):
    return api.open(path, method=method, headers=headers, json={} if method == "POST" else None)


def test_every_id_route_answers_a_hostile_id_with_a_json_404(api, alice, live_ids):
    walked = 0
    for route in ROUTES:
        for param in route.params:
            for value in hostile_ids(param.prefix, live_ids[param.prefix]).values():
                path = route.path
                for other in route.params:
                    path = path.replace("{" + other.name + "}", value if other is param else live_ids[other.prefix])
                r = send(api, route.method, path, alice.admin)
                assert_json_error(r, 404, "not_found")
                walked += 1
    assert walked >= 15 * len(hostile_ids("mdl", "mdl_x"))  # every id route, not a few


def test_every_route_answers_a_path_that_is_not_exactly_its_own_with_a_json_404(api, alice, live_ids):
    for route in ROUTES:
        path = route.path
        for param in route.params:
            path = path.replace("{" + param.name + "}", live_ids[param.prefix])
        for variant in (
            path + "/",
            path + "%0a",
            path + "%20",
            path + "/x",
            path.replace("/v1/", "/v1//"),
            "/" + path,
            path.upper(),
            path + ".json",
        ):
            r = send(api, route.method, variant, alice.admin)
            if r.status_code == 405:  # e.g. /v1/models/x matches GET /v1/models/{model_id}
                assert_json_error(r, 405, "method_not_allowed")
            else:
                assert_json_error(r, 404, "not_found")
    for path in ("/robots.txt", "/favicon.ico", "/", "/v1", "/v1/", "/%0a", "/v2/models"):
        assert_json_error(api.get(path, headers=alice.admin), 404, "not_found")


def test_every_route_answers_an_undeclared_method_with_a_json_405(api, alice, live_ids):
    declared: dict[str, set[str]] = {}
    for route in ROUTES:
        declared.setdefault(route.path, set()).add(route.method)
    for template, methods in declared.items():
        path = template
        for route in ROUTES:
            for param in route.params:
                path = path.replace("{" + param.name + "}", live_ids[param.prefix])
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} - methods:
            r = api.open(path, method=method, headers=alice.admin)
            assert_json_error(r, 405, "method_not_allowed")
            # ⊇: "/v1/evaluations/compare" also matches DELETE /v1/evaluations/{evaluation_id}
            assert methods <= set(r.headers["Allow"].split(", ")), (method, path)


@pytest.mark.parametrize("token", BAD_TOKENS + ["A" * 5000])
def test_every_paginated_route_refuses_a_token_it_did_not_issue(api, alice, live_ids, token):
    paginated = [r for r in ROUTES if r.query is not None and "page_token" in r.query.model_fields]
    assert len(paginated) >= 6
    for route in paginated:
        path = route.path
        for param in route.params:
            path = path.replace("{" + param.name + "}", live_ids[param.prefix])
        r = api.get(path, query_string={"page_token": token}, headers=alice.admin)
        if len(token) > 4096:
            assert_json_error(r, 422, "invalid")
        else:
            assert_json_error(r, 400, "invalid_page_token")


def test_issued_tokens_still_page_and_empty_means_the_first_page(api, client, alice):
    for i in range(3):
        client.post("/v1/api-keys", json={"name": f"k{i}", "scopes": ["read"]}, headers=alice.admin)
    first = api.get("/v1/api-keys", query_string={"limit": 2, "page_token": ""}, headers=alice.admin).json
    token = first["next_page_token"]
    assert token and "=" not in token
    second = api.get("/v1/api-keys", query_string={"limit": 2, "page_token": token}, headers=alice.admin).json
    assert {k["id"] for k in first["items"]}.isdisjoint(k["id"] for k in second["items"]) and second["items"]
