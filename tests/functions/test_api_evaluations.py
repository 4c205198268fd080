"""Ordering evaluations: per-split reuse, restart and creation in one transaction; hints."""

from __future__ import annotations

import time

import pytest
from conftest import DATASET, MODEL

from functions.services import Services
from shared.entities import Dataset, Evaluation, Model
from shared.pubsub import Hint, Hints
from shared.store import ANY_ACCOUNT


def make_inputs(client, services, tenant, *, model_status="ready", dataset_status="ready", splits=None):
    model = client.post("/v1/models", json=MODEL, headers=tenant.write).json["model"]
    dataset = client.post("/v1/datasets", json=DATASET, headers=tenant.write).json["dataset"]
    for cls, entity, status in ((Model, model, model_status), (Dataset, dataset, dataset_status)):
        if status != "awaiting_upload":
            stored = services.store.get(cls, entity["id"], account=ANY_ACCOUNT)
            changes = {"status": status}
            if cls is Dataset and status == "ready":
                changes["splits"] = splits or {"train": 100, "test": 20}
            services.store.put(stored.model_copy(update=changes))
    return model["id"], dataset["id"]


def order(client, tenant, **body):
    return client.post("/v1/evaluations", json=body, headers=tenant.write)


def test_ready_inputs_create_pending_evaluations_for_every_split_then_reuse_them(client, services, alice):
    model_id, dataset_id = make_inputs(client, services, alice)
    r = order(client, alice, model_id=model_id, dataset_id=dataset_id)
    assert r.status_code == 201, r.json
    got = r.json["evaluations"]
    assert [(e["outcome"], e["evaluation"]["split"], e["evaluation"]["status"]) for e in got] == [
        ("created", "test", "pending"),
        ("created", "train", "pending"),
    ]
    assert got[0]["evaluation"]["name"] == "vit-digits-digits-test"

    again = order(client, alice, model_id=model_id, dataset_id=dataset_id, config={"batch_size": 8})
    assert again.status_code == 200  # batch size does not change results: same evaluations
    assert [e["outcome"] for e in again.json["evaluations"]] == ["reused", "reused"]
    assert [e["evaluation"]["id"] for e in again.json["evaluations"]] == [e["evaluation"]["id"] for e in got]

    other = order(client, alice, model_id=model_id, dataset_id=dataset_id, splits=["test"], config={"top_k": 3})
    assert other.status_code == 201 and other.json["evaluations"][0]["outcome"] == "created"
    assert len(client.get("/v1/evaluations", headers=alice.read).json["items"]) == 3


def test_inputs_not_ready_make_waiting_evaluations_and_splits_are_required_until_the_dataset_is(client, services, alice):
    model_id, dataset_id = make_inputs(client, services, alice, model_status="awaiting_upload", dataset_status="verifying")
    r = order(client, alice, model_id=model_id, dataset_id=dataset_id)
    assert r.status_code == 422 and r.json["error"]["details"]["fields"][0]["path"] == "splits"
    r = order(client, alice, model_id=model_id, dataset_id=dataset_id, splits=["test", "test"])
    assert r.status_code == 201
    [only] = r.json["evaluations"]
    assert only["evaluation"]["status"] == "waiting" and only["evaluation"]["reason"] == "waiting_for_model"


def test_a_split_the_ready_dataset_lacks_is_422(client, services, alice):
    model_id, dataset_id = make_inputs(client, services, alice)
    r = order(client, alice, model_id=model_id, dataset_id=dataset_id, splits=["validation"])
    assert r.status_code == 422 and "validation" in r.json["error"]["message"]


def test_failed_and_cancelled_evaluations_are_restarted(client, services, alice):
    model_id, dataset_id = make_inputs(client, services, alice)
    created = order(client, alice, model_id=model_id, dataset_id=dataset_id).json["evaluations"]
    test_id, train_id = (e["evaluation"]["id"] for e in created)
    services.store.transition(Evaluation, test_id, account=ANY_ACCOUNT, expected="pending", to="failed", attempts=3, reason="oom")
    services.store.transition(Evaluation, train_id, account=ANY_ACCOUNT, expected="pending", to="admitted")
    services.store.transition(Evaluation, train_id, account=ANY_ACCOUNT, expected="admitted", to="running")
    r = order(client, alice, model_id=model_id, dataset_id=dataset_id)
    assert r.status_code == 201
    outcomes = {e["evaluation"]["id"]: (e["outcome"], e["evaluation"]["status"]) for e in r.json["evaluations"]}
    assert outcomes == {test_id: ("restarted", "pending"), train_id: ("reused", "running")}
    restarted = services.store.get(Evaluation, test_id, account=alice.account)
    # Attempts keep counting (job names carry them); the retry budget starts afresh.
    assert restarted.reason == "queued" and restarted.retry_base == restarted.attempts


@pytest.mark.parametrize(
    "which,status", [("model", "failed"), ("dataset", "failed"), ("model", "deleting"), ("dataset", "deleting")]
)
def test_an_unusable_input_is_409(client, services, alice, which, status):
    kwargs = {f"{which}_status": status}
    model_id, dataset_id = make_inputs(client, services, alice, **kwargs)
    r = order(client, alice, model_id=model_id, dataset_id=dataset_id, splits=["test"])
    assert r.status_code == 409
    assert r.json["error"]["code"] == "input_unusable" and r.json["error"]["details"]["field"] == f"{which}_id"
    assert client.get("/v1/evaluations", headers=alice.read).json["items"] == []


def test_another_accounts_inputs_are_404_and_nothing_is_written(client, services, alice, bob):
    model_id, dataset_id = make_inputs(client, services, alice)
    bobs_model, bobs_dataset = make_inputs(client, services, bob)
    for m, d in [(bobs_model, dataset_id), (model_id, bobs_dataset)]:
        r = order(client, alice, model_id=m, dataset_id=d)
        assert r.status_code == 404
    assert client.get("/v1/evaluations", headers=alice.read).json["items"] == []


@pytest.mark.parametrize(
    "body,status",
    [
        ({"dataset_id": "dst_00000000000000000000"}, 422),
        ({"model_id": "mdl_x", "dataset_id": "dst_00000000000000000000"}, 422),
        ({"model_id": "mdl_00000000000000000000", "dataset_id": "dst_00000000000000000000", "splits": []}, 422),
        ({"model_id": "mdl_00000000000000000000", "dataset_id": "dst_00000000000000000000", "config": {"top_k": 0}}, 422),
        ({"model_id": "mdl_00000000000000000000", "dataset_id": "dst_00000000000000000000", "config": {"temperature": 1}}, 422),
        ({"model_id": "mdl_00000000000000000000", "dataset_id": "dst_00000000000000000000"}, 404),
    ],
)
def test_malformed_orders(client, alice, body, status):
    assert order(client, alice, **body).status_code == status


def test_get_list_and_delete(client, services, alice):
    model_id, dataset_id = make_inputs(client, services, alice)
    created = [e["evaluation"] for e in order(client, alice, model_id=model_id, dataset_id=dataset_id).json["evaluations"]]
    first = created[0]["id"]
    got = client.get(f"/v1/evaluations/{first}", headers=alice.read).json
    assert got["fingerprint"] and "lease_owner" not in got and "result_prefix" not in got
    items = client.get(f"/v1/evaluations?model_id={model_id}&status=pending", headers=alice.read).json["items"]
    assert {e["id"] for e in items} == {e["id"] for e in created}
    assert client.get("/v1/evaluations?dataset_id=dst_00000000000000000000", headers=alice.read).json["items"] == []

    r = client.delete(f"/v1/evaluations/{first}", headers=alice.write)
    assert r.status_code == 202 and r.json["status"] == "deleting"
    assert client.delete(f"/v1/evaluations/{first}", headers=alice.write).status_code == 202
    # ordering it again while the daemon deletes it is a clear conflict
    r = order(client, alice, model_id=model_id, dataset_id=dataset_id)
    assert r.status_code == 409 and r.json["error"]["code"] == "being_deleted"
    services.store.transition(Evaluation, first, account=ANY_ACCOUNT, expected="deleting", to="gone")
    r = order(client, alice, model_id=model_id, dataset_id=dataset_id)
    assert r.status_code == 201
    assert {e["evaluation"]["id"]: e["outcome"] for e in r.json["evaluations"]}[first] == "created"


def test_work_is_hinted_on_pubsub(client, services, alice):
    model_id, dataset_id = make_inputs(client, services, alice)
    created = order(client, alice, model_id=model_id, dataset_id=dataset_id).json["evaluations"]
    received = []
    for _ in range(10):
        received += services.hints.wait(timeout_s=5)
        if len(received) >= 2:
            break
    assert {h.id for h in received} == {e["evaluation"]["id"] for e in created}
    order(client, alice, model_id=model_id, dataset_id=dataset_id)  # all reused: no work, no hint
    assert services.hints.wait(timeout_s=1) == []


def test_a_failed_hint_is_logged_and_the_request_still_succeeds(services, settings, alice, caplog):
    from functions.app import create_app

    broken = settings.model_copy(update={"pubsub_emulator_host": "127.0.0.1:9", "api_hint_timeout_s": 0.5})
    degraded = Services(settings=broken, store=services.store, storage=services.storage, hints=Hints(broken))
    client = create_app(services=degraded).test_client()
    model_id, dataset_id = make_inputs(client, services, alice)
    r = order(client, alice, model_id=model_id, dataset_id=dataset_id)
    assert r.status_code == 201
    degraded.drain()
    assert "hint" in caplog.text


class RecordingHints:
    """Stands in for the hint topic: records each publish and when it happened."""

    def __init__(self):
        self.published: list[tuple[float, list[str]]] = []

    def publish(self, hints, *, timeout_s):
        self.published.append((time.monotonic(), [h.id for h in hints]))
        return True


def test_hints_go_at_once_and_those_within_the_interval_go_together(services, settings):
    recorder = RecordingHints()
    paced = Services(
        settings=settings.model_copy(update={"api_hint_interval_s": 0.3}),
        store=services.store,
        storage=services.storage,
        hints=recorder,
    )  # type: ignore[arg-type]
    hint = lambda i: [Hint(kind="Evaluation", id=f"evl_{i}", account="acc_a")]  # noqa: E731
    started = time.monotonic()
    paced.hint(hint(1))
    time.sleep(0.1)
    paced.hint(hint(2))
    paced.hint(hint(3))
    paced.drain()
    (first_at, first), (second_at, second) = recorder.published
    assert first == ["evl_1"] and second == ["evl_2", "evl_3"]
    assert first_at - started < 0.1  # an idle instance does not hold a hint back
    assert second_at - first_at >= 0.3
