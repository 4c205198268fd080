"""The results routes through ``create_app(...).test_client()`` on the emulators: same
auth, errors and pagination as the rest of the API, tenants isolated, and a missing or
corrupt result set answered with a clear 409, never a 500."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from functions.app import create_app
from functions.results.routes import router as results_router
from functions.services import Services
from shared.admin import create_account
from shared.apikeys import new_key
from shared.entities import Dataset, Model, Scope
from shared.storage import evaluation_summary, prediction_shard
from shared.summaries import REPORTED
from tests.results.conftest import generate, stored_evaluation, upload_result_set


@pytest.fixture
def services(settings, indexes, storage):
    return Services.from_settings(settings, indexes=indexes)


@pytest.fixture
def client(services):
    from functions.routes import ROUTERS

    routers = ROUTERS if results_router in ROUTERS else [*ROUTERS, results_router]
    return create_app(services=services, routers=routers).test_client()


def _headers(services, name):
    account, _ = create_account(services.store, name)
    key, plaintext = new_key(account=account.id, name="reader", scopes=[Scope.read])
    services.store.put(key)
    return account.id, {"Authorization": f"Bearer {plaintext}"}


@pytest.fixture
def world(services, storage, tmp_path):
    """Alice's dataset, two models, two complete evaluations with result sets."""
    alice, headers = _headers(services, "alice")
    dataset = Dataset(
        id=Dataset.new_id(),
        account=alice,
        name="digits",
        declared_size=1,
        content_type="application/zip",
        upload_object="u",
        status="ready",
    )
    services.store.put(dataset)
    labels = np.random.default_rng(0).integers(0, 5, 400)
    ids = np.array([f"i{i:04d}" for i in range(400)])
    evaluations, generated = [], []
    for i, skill in enumerate((2.0, 0.8)):
        model = Model(
            id=Model.new_id(),
            account=alice,
            name=f"model-{i}",
            declared_size=1,
            content_type="application/zip",
            upload_object="u",
            status="ready",
        )
        services.store.put(model)
        g = generate(tmp_path / f"r{i}", n=400, classes=5, labels=labels, instance_ids=ids, seed=i, skill=skill)
        accuracy = float(np.mean(g.labels == g.predictions))
        e = stored_evaluation(
            services.store,
            account=alice,
            model_id=model.id,
            dataset_id=dataset.id,
            name=f"e{i}",
            summary={"label_names": g.label_names, "accuracy": accuracy, "instances": 400},
        )
        upload_result_set(storage, e.id, g.directory)
        evaluations.append(e)
        generated.append(g)
    return {"alice": alice, "headers": headers, "dataset": dataset, "evaluations": evaluations, "generated": generated}


def test_summary_classes_confusion(client, world):
    e, g, h = world["evaluations"][0], world["generated"][0], world["headers"]
    base = f"/v1/evaluations/{e.id}/results"
    r = client.get(base, headers=h)
    assert r.status_code == 200 and r.json["accuracy"] == e.summary["accuracy"]
    r = client.get(base + "/confusion", headers=h)
    assert r.status_code == 200
    assert r.json["matrix"] == confusion_matrix(g.labels, g.predictions, labels=range(5)).tolist()
    r = client.get(base + "/classes", headers=h)
    assert r.status_code == 200 and [c["support"] for c in r.json["classes"]] == np.bincount(g.labels, minlength=5).tolist()


def test_instances_paginate_every_row_once(client, world):
    e, h = world["evaluations"][0], world["headers"]
    seen, token = [], None
    while True:
        params = {"limit": "37", "order_by": "-confidence", "correct": "false"} | ({"page_token": token} if token else {})
        r = client.get(f"/v1/evaluations/{e.id}/results/instances", headers=h, query_string=params)
        assert r.status_code == 200, r.json
        seen += [row["instance_id"] for row in r.json["items"]]
        token = r.json["next_page_token"]
        if not token:
            break
    g = world["generated"][0]
    assert sorted(seen) == sorted(g.instance_ids[g.labels != g.predictions])
    r = client.get(f"/v1/evaluations/{e.id}/results/instances", headers=h, query_string={"limit": "5000"})
    assert r.status_code == 422 and r.json["error"]["code"] == "invalid"


def test_metrics_compare_leaderboard_download(client, world):
    a, b = world["evaluations"]
    h = world["headers"]
    body = {"metrics": ["cohen_kappa", {"name": "top_k_accuracy", "k": 2}], "bootstrap": {"samples": 200}}
    r = client.post(f"/v1/evaluations/{a.id}/results/metrics", headers=h, json=body)
    assert r.status_code == 200, r.json
    assert r.json["metrics"][1]["interval"]["low"] <= r.json["metrics"][1]["value"]
    r = client.post(f"/v1/evaluations/{a.id}/results/metrics", headers=h, json={"metrics": [{"name": "top_k_accuracy", "k": 9}]})
    assert r.status_code == 422 and r.json["error"]["details"]["stored_k"] == 5

    r = client.get("/v1/evaluations/compare", headers=h, query_string={"a": a.id, "b": b.id, "limit": "3"})
    assert r.status_code == 200, r.json
    assert r.json["instances"] == 400 and r.json["accuracy_difference"]["value"] > 0

    r = client.get(f"/v1/datasets/{world['dataset'].id}/leaderboard", headers=h, query_string={"split": "test", "limit": "1"})
    assert r.status_code == 200, r.json
    assert [i["evaluation_id"] for i in r.json["items"]] == [a.id] and r.json["items"][0]["model_name"] == "model-0"
    r = client.get(
        f"/v1/datasets/{world['dataset'].id}/leaderboard",
        headers=h,
        query_string={"split": "test", "limit": "1", "page_token": r.json["next_page_token"]},
    )
    assert [(i["rank"], i["evaluation_id"]) for i in r.json["items"]] == [(2, b.id)] and r.json["next_page_token"] is None

    r = client.get(f"/v1/evaluations/{a.id}/results/download", headers=h)
    assert r.status_code == 200
    assert [f["name"] for f in r.json["files"]] == [
        "predictions/part-00000.parquet",
        "predictions/part-00001.parquet",
        "predictions/part-00002.parquet",
        "summary.json",
    ]
    assert all(f["method"] == "GET" and "X-Goog-Signature" in f["url"] for f in r.json["files"])


def test_other_accounts_get_404(client, services, world):
    _, mallory = _headers(services, "mallory")
    a, b = world["evaluations"]
    for path in ("", "/instances", "/classes", "/confusion", "/download"):
        r = client.get(f"/v1/evaluations/{a.id}/results{path}", headers=mallory)
        assert r.status_code == 404 and r.json["error"]["code"] == "not_found", path
    r = client.post(f"/v1/evaluations/{a.id}/results/metrics", headers=mallory, json={"metrics": ["accuracy"]})
    assert r.status_code == 404
    r = client.get("/v1/evaluations/compare", headers=mallory, query_string={"a": a.id, "b": b.id})
    assert r.status_code == 404
    r = client.get(f"/v1/datasets/{world['dataset'].id}/leaderboard", headers=mallory)
    assert r.status_code == 404
    assert client.get(f"/v1/evaluations/{a.id}/results").status_code == 401


def test_not_ready_missing_and_corrupt_are_409(client, services, storage, world):
    h, alice = world["headers"], world["alice"]
    running = stored_evaluation(services.store, account=alice, status="running")
    r = client.get(f"/v1/evaluations/{running.id}/results/confusion", headers=h)
    assert r.status_code == 409 and r.json["error"]["code"] == "results_not_ready"

    names = {"label_names": world["generated"][0].label_names}
    missing = stored_evaluation(services.store, account=alice, summary=names)
    r = client.get(f"/v1/evaluations/{missing.id}/results/classes", headers=h)
    assert r.status_code == 409 and r.json["error"]["code"] == "result_set_missing"
    assert client.get(f"/v1/evaluations/{missing.id}/results/download", headers=h).status_code == 409

    corrupt = stored_evaluation(services.store, account=alice, summary=names)
    storage.write_bytes(prediction_shard(corrupt.id, 0), b"PAR1 this is not parquet")
    for path in ("/classes", "/confusion", "/instances"):
        r = client.get(f"/v1/evaluations/{corrupt.id}/results{path}", headers=h)
        assert r.status_code == 409 and r.json["error"]["code"] == "result_set_corrupt", path


def test_the_summary_is_typed_in_the_document_and_in_every_reply(client, services, storage, world):
    schemas = client.get("/v1/openapi.json").json["components"]["schemas"]
    assert set(REPORTED) <= set(schemas["EvaluationSummary"]["properties"])
    assert schemas["SummaryResult"]["properties"]["accuracy"]["description"] == REPORTED["accuracy"].description
    assert {"$ref": "#/components/schemas/EvaluationSummary"} in schemas["EvaluationView"]["properties"]["summary"]["anyOf"]
    assert schemas["LeaderboardPage"]["properties"]["metric"]["enum"] == list(REPORTED)

    h, alice, (e, _) = world["headers"], world["alice"], world["evaluations"]
    r = client.get(f"/v1/evaluations/{e.id}", headers=h)
    assert r.json["summary"]["accuracy"] == e.summary["accuracy"] and r.json["summary"]["log_loss"] is None
    r = client.get(f"/v1/datasets/{world['dataset'].id}/leaderboard", headers=h, query_string={"metric": "log_loss"})
    assert r.status_code == 200 and r.json["higher_is_better"] is False and r.json["items"] == []

    # No summary on the entity: summary.json's, validated as a summary.
    g = world["generated"][0]
    bare = stored_evaluation(services.store, account=alice, summary=None)
    upload_result_set(storage, bare.id, g.directory)
    r = client.get(f"/v1/evaluations/{bare.id}/results", headers=h)
    assert r.status_code == 200 and r.json["label_names"] == g.label_names and r.json["evaluation_id"] == bare.id
    odd = stored_evaluation(services.store, account=alice, summary=None)
    upload_result_set(storage, odd.id, g.directory)
    storage.write_bytes(evaluation_summary(odd.id), b'{"instances": "many"}', content_type="application/json")
    r = client.get(f"/v1/evaluations/{odd.id}/results", headers=h)
    assert r.status_code == 409 and r.json["error"]["code"] == "result_set_corrupt"
