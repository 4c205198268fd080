"""Cancel, event history and webhooks through the API, on the real emulators."""

from __future__ import annotations

import json

import pytest
from test_api_evaluations import make_inputs, order

from shared.entities import Evaluation, Model
from shared.store import ANY_ACCOUNT
from shared.webhooks import Webhook, WebhookDelivery, signing_secret, verify_signature


def _evaluation(client, services, tenant) -> str:
    model_id, dataset_id = make_inputs(client, services, tenant)
    r = order(client, tenant, model_id=model_id, dataset_id=dataset_id, splits=["test"])
    assert r.status_code == 201, r.json
    return r.json["evaluations"][0]["evaluation"]["id"]


def test_cancel_is_idempotent_and_a_finished_evaluation_says_why_it_cannot_be(client, services, alice, bob):
    evaluation_id = _evaluation(client, services, alice)
    r = client.post(f"/v1/evaluations/{evaluation_id}/cancel", headers=alice.write)
    assert r.status_code == 202, r.json
    assert r.json["status"] == "cancelled" and r.json["reason"] == "cancel_requested"
    assert services.store.get(Evaluation, evaluation_id, account=ANY_ACCOUNT).stopping  # the daemon stops its job
    again = client.post(f"/v1/evaluations/{evaluation_id}/cancel", headers=alice.write)
    assert again.status_code == 202 and again.json["status"] == "cancelled"
    events = client.get(f"/v1/evaluations/{evaluation_id}/events", headers=alice.read).json["items"]
    assert [(e["from_status"], e["to_status"]) for e in events] == [(None, "pending"), ("pending", "cancelled")]

    assert client.post(f"/v1/evaluations/{evaluation_id}/cancel", headers=bob.write).status_code == 404
    assert client.post(f"/v1/evaluations/{evaluation_id}/cancel", headers=alice.read).status_code == 403
    assert client.post("/v1/evaluations/evl_nope/cancel", headers=alice.write).status_code == 404

    stored = services.store.get(Evaluation, evaluation_id, account=ANY_ACCOUNT)
    services.store.put(stored.model_copy(update={"status": "complete"}))
    r = client.post(f"/v1/evaluations/{evaluation_id}/cancel", headers=alice.write)
    assert r.status_code == 409 and r.json["error"]["code"] == "not_cancellable"
    assert "is complete" in r.json["error"]["message"] and r.json["error"]["details"]["status"] == "complete"


def test_ordering_a_cancelled_evaluation_again_restarts_it(client, services, alice):
    evaluation_id = _evaluation(client, services, alice)
    client.post(f"/v1/evaluations/{evaluation_id}/cancel", headers=alice.write)
    stored = services.store.get(Evaluation, evaluation_id, account=ANY_ACCOUNT)
    r = order(client, alice, model_id=stored.model_id, dataset_id=stored.dataset_id, splits=["test"])
    assert r.status_code == 201 and r.json["evaluations"][0]["outcome"] == "restarted"
    assert r.json["evaluations"][0]["evaluation"]["status"] == "pending"
    events = client.get(f"/v1/evaluations/{evaluation_id}/events", headers=alice.read).json["items"]
    assert [e["to_status"] for e in events] == ["pending", "cancelled", "pending"]
    assert events[-1]["message"] == "restarted on request"


def test_events_are_oldest_first_paged_signed_by_component_and_key_and_private(client, services, alice, bob):
    model = client.post("/v1/models", json={"name": "m", "size": 10}, headers=alice.write).json["model"]
    model_id = model["id"]
    for source, target in (("awaiting_upload", "uploaded"), ("uploaded", "verifying"), ("verifying", "failed")):
        services.store.transition(Model, model_id, account=ANY_ACCOUNT, expected=source, to=target, reason=f"to-{target}")
    first = client.get(f"/v1/models/{model_id}/events?limit=2", headers=alice.read)
    assert first.status_code == 200 and first.json["next_page_token"]
    rest = client.get(f"/v1/models/{model_id}/events?limit=2&page_token={first.json['next_page_token']}", headers=alice.read)
    events = first.json["items"] + rest.json["items"]
    assert [(e["from_status"], e["to_status"]) for e in events] == [
        (None, "awaiting_upload"),
        ("awaiting_upload", "uploaded"),
        ("uploaded", "verifying"),
        ("verifying", "failed"),
    ]
    created = events[0]
    whoami = client.get("/v1/whoami", headers=alice.write).json
    assert created["component"] == "api" and created["key_id"] == whoami["api_key"]
    # Straight through the API process's store, no key: still the component, and no key id.
    assert events[-1]["component"] == "api" and events[-1]["key_id"] is None and events[-1]["reason"] == "to-failed"
    assert {"name", "labels", "status"}.isdisjoint(created)
    assert client.get(f"/v1/models/{model_id}/events", headers=bob.read).status_code == 404
    assert client.get(f"/v1/datasets/{model_id}/events", headers=alice.read).status_code == 404
    assert client.get(f"/v1/models/{model_id}/events?limit=0", headers=alice.read).status_code == 422


def test_webhooks_are_created_with_a_secret_shown_once_listed_and_deleted(client, services, alice, bob):
    body = {"url": "https://hooks.example.com/assay?x=1", "events": ["evaluation.complete", "model.ready"]}
    assert client.post("/v1/webhooks", json=body, headers=alice.write).status_code == 403  # admin only
    r = client.post("/v1/webhooks", json=body, headers=alice.admin)
    assert r.status_code == 201, r.json
    webhook, secret = r.json["webhook"], r.json["secret"]
    assert secret.startswith("whsec_") and webhook["events"] == ["evaluation.complete", "model.ready"]
    assert "secret_salt" not in webhook and secret not in json.dumps(webhook)
    stored = services.store.get(Webhook, webhook["id"], account=ANY_ACCOUNT)
    assert signing_secret(services.settings.webhook_key(), stored) == secret  # derived again, never stored
    assert secret not in stored.model_dump_json()

    listed = client.get("/v1/webhooks", headers=alice.read).json["items"]
    assert [w["id"] for w in listed] == [webhook["id"]] and "secret" not in listed[0]
    assert client.get("/v1/webhooks", headers=bob.read).json["items"] == []
    assert client.get(f"/v1/webhooks/{webhook['id']}", headers=bob.read).status_code == 404
    assert client.get(f"/v1/webhooks/{webhook['id']}/deliveries", headers=bob.read).status_code == 404
    assert client.delete(f"/v1/webhooks/{webhook['id']}", headers=bob.admin).status_code == 404
    assert client.delete(f"/v1/webhooks/{webhook['id']}", headers=alice.admin).status_code == 200
    assert client.get(f"/v1/webhooks/{webhook['id']}", headers=alice.read).status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",  # plain http off loopback
        "http://127.0.0.1:8080/x",  # loopback http, but the server is not local
        "https://10.0.0.7/x",
        "https://169.254.169.254/computeMetadata/v1/",
        "https://[fd00::1]/x",
        "https://[::ffff:192.168.1.1]/x",
        "https://localhost/x",
        "https://user:pw@hooks.example.com/x",
        "ftp://hooks.example.com/x",
        "https:///nohost",
    ],
)
def test_webhook_urls_that_may_never_be_delivered_to_are_refused(client, alice, url):
    r = client.post("/v1/webhooks", json={"url": url, "events": ["evaluation.failed"]}, headers=alice.admin)
    assert r.status_code == 422, r.json
    assert r.json["error"]["details"]["fields"][0]["path"] == "url"


def test_unknown_event_types_are_refused(client, alice):
    r = client.post("/v1/webhooks", json={"url": "https://h.example.com", "events": ["evaluation.exploded"]}, headers=alice.admin)
    assert r.status_code == 422 and r.json["error"]["details"]["fields"][0]["path"].startswith("events")
    r = client.post("/v1/webhooks", json={"url": "https://h.example.com", "events": []}, headers=alice.admin)
    assert r.status_code == 422


def test_a_status_change_owes_a_signed_delivery_to_its_own_accounts_webhooks_only(client, services, alice, bob):
    subscribe = {"url": "https://hooks.example.com/", "events": ["evaluation.cancelled"]}
    mine = client.post("/v1/webhooks", json=subscribe, headers=alice.admin).json
    theirs = client.post("/v1/webhooks", json=subscribe, headers=bob.admin).json
    other_type = client.post("/v1/webhooks", json={**subscribe, "events": ["evaluation.complete"]}, headers=alice.admin).json
    evaluation_id = _evaluation(client, services, alice)
    client.post(f"/v1/evaluations/{evaluation_id}/cancel", headers=alice.write)

    deliveries = client.get(f"/v1/webhooks/{mine['webhook']['id']}/deliveries", headers=alice.read).json["items"]
    assert len(deliveries) == 1
    delivery = deliveries[0]
    assert delivery["status"] == "pending" and delivery["event_type"] == "evaluation.cancelled"
    body = json.loads(delivery["body"])
    assert body["id"] == delivery["id"] and body["type"] == "evaluation.cancelled"
    assert body["data"]["object"]["id"] == evaluation_id and body["data"]["object"]["status"] == "cancelled"
    assert body["data"]["event"]["from_status"] == "pending" and "lease_owner" not in body["data"]["object"]
    assert client.get(f"/v1/webhooks/{theirs['webhook']['id']}/deliveries", headers=bob.read).json["items"] == []
    assert client.get(f"/v1/webhooks/{other_type['webhook']['id']}/deliveries", headers=alice.read).json["items"] == []
    everything = list(services.store.iterate(WebhookDelivery, account=ANY_ACCOUNT, order=None))
    assert [d.account for d in everything] == [alice.account]


def test_a_signature_verifies_only_with_the_right_secret_body_and_time():
    from shared.errors import InvalidSignature
    from shared.webhooks import sign

    body = b'{"id":"dlv_x"}'
    header = sign("whsec_a", body, timestamp=1_000_000)
    assert verify_signature(body, header, "whsec_a", now=1_000_100) == 1_000_000
    for bad_body, secret, now in (
        (body + b" ", "whsec_a", 1_000_000),
        (body, "whsec_b", 1_000_000),
        (body, "whsec_a", 1_000_301),
    ):
        with pytest.raises(InvalidSignature):
            verify_signature(bad_body, header, secret, now=now)
    for bad_header in (None, "", "v1=abc", "t=1000000", "t=x,v1=" + header.partition("v1=")[2]):
        with pytest.raises(InvalidSignature):
            verify_signature(body, bad_header, "whsec_a", now=1_000_000)
