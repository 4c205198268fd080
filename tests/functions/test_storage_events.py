"""Upload completion: object-finalize events move a model or dataset to ``uploaded`` once.

The end-to-end test is the real path: a signed-URL PUT with ``requests`` to
fake-gcs-server, its finalize notification on Pub/Sub, a push subscription delivering it
to ``storage_events`` served by functions-framework, and the entity ``uploaded``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import functions_framework
import pytest
import requests
from conftest import DATASET, MODEL
from werkzeug.serving import make_server

from devstack.emulators import free_port
from functions.uploads import FinalizedObject, Outcome, object_finalized, parse_event
from shared.entities import Dataset, Model
from shared.pubsub import subscriber_client
from shared.store import ANY_ACCOUNT

MAIN = Path(__file__).resolve().parents[2] / "functions" / "main.py"


def resource(bucket: str, name: str, size: int) -> dict:
    return {"bucket": bucket, "name": name, "size": str(size), "contentType": "application/zip"}


def push_envelope(obj: dict, event_type: str = "OBJECT_FINALIZE") -> dict:
    return {
        "message": {
            "data": base64.b64encode(json.dumps(obj).encode()).decode(),
            "attributes": {"bucketId": obj["bucket"], "objectId": obj["name"], "eventType": event_type},
            "messageId": "1",
            "publishTime": "2026-01-01T00:00:00Z",
        },
        "subscription": "projects/p/subscriptions/s",
    }


@pytest.fixture
def model(client, alice, services):
    created = client.post("/v1/models", json=MODEL, headers=alice.write).json["model"]
    return services.store.get(Model, created["id"], account=ANY_ACCOUNT)


def test_event_shapes_parse_to_the_same_object():
    obj = resource("b", "uploads/models/mdl_x/model.zip", 12)
    expected = FinalizedObject("b", "uploads/models/mdl_x/model.zip", 12)
    assert parse_event(obj) == expected
    assert parse_event(json.dumps(obj).encode()) == expected
    assert parse_event(push_envelope(obj)) == expected
    assert parse_event(push_envelope(obj, "OBJECT_DELETE")) is None
    assert parse_event({"message": {"data": "%%%"}}) is None
    assert parse_event({"bucket": "b"}) is None
    assert parse_event(b"not json") is None


def test_finalize_is_applied_exactly_once(services, settings, model):
    obj = FinalizedObject(settings.bucket, model.upload_object, 900)
    outcomes = [object_finalized(services.store, obj, bucket=settings.bucket)[0] for _ in range(3)]
    assert outcomes == [Outcome.uploaded, Outcome.duplicate, Outcome.duplicate]
    stored = services.store.get(Model, model.id, account=ANY_ACCOUNT)
    assert stored.status == "uploaded" and stored.size == 900


def test_concurrent_deliveries_apply_once(services, settings, model):
    obj = FinalizedObject(settings.bucket, model.upload_object, 10)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(object_finalized(services.store, obj, bucket=settings.bucket)[0]))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted([Outcome.uploaded] + [Outcome.duplicate] * 3)


def test_an_upload_larger_than_declared_fails_the_entity(services, settings, model):
    obj = FinalizedObject(settings.bucket, model.upload_object, MODEL["size"] + 1)
    assert object_finalized(services.store, obj, bucket=settings.bucket)[0] == Outcome.too_large
    stored = services.store.get(Model, model.id, account=ANY_ACCOUNT)
    assert stored.status == "failed" and stored.reason == "upload_too_large"


@pytest.mark.parametrize(
    "name",
    ["models/mdl_x/config.json", "uploads/models/mdl_00000000000000000000/model.zip", "uploads/models/{id}/other.zip"],
)
def test_unknown_objects_are_ignored(services, settings, model, name):
    obj = FinalizedObject(settings.bucket, name.format(id=model.id), 1)
    assert object_finalized(services.store, obj, bucket=settings.bucket)[0] == Outcome.ignored
    assert (
        object_finalized(services.store, FinalizedObject("elsewhere", model.upload_object, 1), bucket=settings.bucket)[0]
        == Outcome.ignored
    )
    assert services.store.get(Model, model.id, account=ANY_ACCOUNT).status == "awaiting_upload"


@pytest.fixture
def entry_points(entry_point_env, monkeypatch):
    """functions/main.py loaded by functions-framework, configured from the environment."""
    for k, v in entry_point_env.items():
        monkeypatch.setenv(k, v)

    def load(target: str, signature_type: str):
        return functions_framework.create_app(target=target, source=str(MAIN), signature_type=signature_type)

    return load


def test_storage_events_entry_point_takes_cloudevents_and_pubsub_pushes(entry_points, client, alice, services, settings):
    events = entry_points("storage_events", "cloudevent").test_client()
    dataset = client.post("/v1/datasets", json=DATASET, headers=alice.write).json["dataset"]
    name = f"uploads/datasets/{dataset['id']}/dataset.zip"
    obj = resource(settings.bucket, name, 5)
    headers = {
        "ce-specversion": "1.0",
        "ce-type": "google.cloud.storage.object.v1.finalized",
        "ce-source": f"//storage.googleapis.com/projects/_/buckets/{settings.bucket}",
        "ce-id": "evt-1",
        "ce-subject": f"objects/{name}",
        "Content-Type": "application/json",
    }
    assert events.post("/", json=obj, headers=headers).status_code == 200
    assert services.store.get(Dataset, dataset["id"], account=ANY_ACCOUNT).status == "uploaded"
    # the same event again, now as a Pub/Sub push: a no-op
    assert events.post("/", json=push_envelope(obj)).status_code == 200
    assert services.store.get(Dataset, dataset["id"], account=ANY_ACCOUNT).size == 5


def test_api_entry_point_serves_the_app(entry_points, alice):
    api = entry_points("api", "http").test_client()
    assert api.get("/v1/health").json == {"status": "ok"}
    assert api.get("/v1/models", headers=alice.read).status_code == 200
    r = api.post("/v1/models", data=b"{", headers=alice.write)
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_request"
    assert api.get("/v1/nope").status_code == 404
    r = api.post("/v1/models", data=b"{" + b" " * 100_000 + b"}", headers=alice.write)
    assert r.status_code == 413 and r.json["error"]["code"] == "too_large"


def test_signed_upload_reaches_storage_events_through_pubsub_end_to_end(entry_points, client, alice, services, settings):
    server = make_server("127.0.0.1", free_port(), entry_points("storage_events", "cloudevent"), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    subscriber = subscriber_client(settings)
    subscription = subscriber.subscription_path(settings.project, f"push-{settings.bucket}")
    subscriber.create_subscription(
        name=subscription,
        topic=f"projects/{settings.project}/topics/{settings.storage_topic}",
        push_config={"push_endpoint": f"http://127.0.0.1:{server.server_port}/"},
    )
    try:
        created = client.post("/v1/models", json=MODEL, headers=alice.write).json
        ticket = created["upload"]
        body = b"PK\x03\x04" + b"\0" * 300
        r = requests.request(ticket["method"], ticket["url"], data=body, headers=ticket["headers"], timeout=10)
        assert r.status_code in (200, 201), r.text

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            model = client.get(f"/v1/models/{created['model']['id']}", headers=alice.read).json
            if model["status"] != "awaiting_upload":
                break
            time.sleep(0.2)
        assert model["status"] == "uploaded" and model["size"] == len(body)
    finally:
        subscriber.delete_subscription(subscription=subscription)
        server.shutdown()
