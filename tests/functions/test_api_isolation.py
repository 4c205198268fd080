"""Tenant isolation: every route that takes an id answers 404 for another account's id,
changes nothing, and lists never show another account's entities."""

from __future__ import annotations

import pytest
from conftest import DATASET, MODEL

from functions.routes import ROUTERS
from shared.entities import Dataset, Model
from shared.store import ANY_ACCOUNT

ID_ROUTES = [r for router in ROUTERS for r in router.routes if r.params]


@pytest.fixture
def bobs(client, services, bob):
    """One entity of each kind, owned by bob, with the statuses that make every route act."""
    model = client.post("/v1/models", json=MODEL, headers=bob.write).json["model"]["id"]
    dataset = client.post("/v1/datasets", json=DATASET, headers=bob.write).json["dataset"]["id"]
    ready_model = client.post("/v1/models", json=MODEL, headers=bob.write).json["model"]["id"]
    ready_dataset = client.post("/v1/datasets", json=DATASET, headers=bob.write).json["dataset"]["id"]
    for cls, eid in ((Model, ready_model), (Dataset, ready_dataset)):
        stored = services.store.get(cls, eid, account=ANY_ACCOUNT)
        services.store.put(stored.model_copy(update={"status": "ready", **({"splits": {"test": 1}} if cls is Dataset else {})}))
    r = client.post("/v1/evaluations", json={"model_id": ready_model, "dataset_id": ready_dataset}, headers=bob.write)
    evaluation = r.json["evaluations"][0]["evaluation"]["id"]
    key = client.post("/v1/api-keys", json={"name": "k", "scopes": ["read"]}, headers=bob.admin).json["api_key"]["id"]
    hook = {"url": "https://hooks.example.com/", "events": ["evaluation.complete"]}
    webhook = client.post("/v1/webhooks", json=hook, headers=bob.admin).json["webhook"]["id"]
    return {"mdl": model, "dst": dataset, "evl": evaluation, "key": key, "whk": webhook}


@pytest.mark.parametrize("route", ID_ROUTES, ids=[f"{r.method} {r.path}" for r in ID_ROUTES])
def test_another_accounts_id_is_404_on_every_route(client, alice, bob, bobs, route):
    path = route.path
    for p in route.params:
        path = path.replace("{" + p.name + "}", bobs[p.prefix])
    before = client.get(path.split("/upload-ticket")[0], headers=bob.admin).json
    r = client.open(path, method=route.method, headers=alice.admin, json={} if route.body else None)
    assert r.status_code == 404, (route.path, r.json)
    assert r.json["error"]["code"] == "not_found"
    assert "bob" not in r.get_data(as_text=True)
    assert client.get(path.split("/upload-ticket")[0], headers=bob.admin).json == before  # unchanged


def test_orders_naming_another_accounts_inputs_are_404(client, alice, bobs):
    r = client.post(
        "/v1/evaluations", json={"model_id": bobs["mdl"], "dataset_id": bobs["dst"], "splits": ["test"]}, headers=alice.write
    )
    assert r.status_code == 404


@pytest.mark.parametrize("path", ["/v1/models", "/v1/datasets", "/v1/evaluations", "/v1/api-keys", "/v1/webhooks"])
def test_lists_never_leak(client, alice, bob, bobs, path):
    mine = client.get(path, headers=alice.admin).json["items"]
    assert all(item["account"] == alice.account for item in mine)
    theirs = client.get(path, headers=bob.admin).json["items"]
    assert theirs and all(item["account"] == bob.account for item in theirs)
    assert not {i["id"] for i in mine} & {i["id"] for i in theirs}
    for query in ("?status=awaiting_upload", "?labels=team=vision", "?name=vit-digits", "?status=pending"):
        r = client.get(path + query, headers=alice.admin)
        assert r.status_code in (200, 422)
        if r.status_code == 200:
            assert all(item["account"] == alice.account for item in r.json["items"])


def test_the_isolation_matrix_covers_every_id_route():
    assert {f"{r.method} {r.path}" for r in ID_ROUTES} >= {
        "GET /v1/models/{model_id}",
        "DELETE /v1/models/{model_id}",
        "POST /v1/models/{model_id}/upload-ticket",
        "GET /v1/datasets/{dataset_id}",
        "DELETE /v1/datasets/{dataset_id}",
        "POST /v1/datasets/{dataset_id}/upload-ticket",
        "GET /v1/evaluations/{evaluation_id}",
        "DELETE /v1/evaluations/{evaluation_id}",
        "GET /v1/api-keys/{key_id}",
        "DELETE /v1/api-keys/{key_id}",
    }
