"""The SDK and the CLI for cancel, events and webhooks, against the API served over real
HTTP on 127.0.0.1 (the app of these tests, on the real emulators)."""

from __future__ import annotations

import json
import threading

import pytest
from test_api_evaluations import make_inputs
from werkzeug.serving import make_server

from assay import cli
from assay.client import Client
from shared import errors
from shared.entities import Evaluation
from shared.store import ANY_ACCOUNT


@pytest.fixture
def served(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _key(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def test_the_sdk_cancels_reads_events_and_manages_webhooks(served, app, services, alice):
    client = Client(served, _key(alice.admin), progress=False)
    model_id, dataset_id = make_inputs(app.test_client(), services, alice)
    [handle] = client.evaluations.create(model_id, dataset_id, splits=["test"])
    assert handle.cancel().status == "cancelled"
    assert [(e.from_status, e.to_status) for e in handle.events()] == [(None, "pending"), ("pending", "cancelled")]
    assert [e.to_status for e in client.events(handle.id)] == ["pending", "cancelled"]
    assert [e.to_status for e in client.events(model_id)] == ["awaiting_upload"]

    stored = services.store.get(Evaluation, handle.id, account=ANY_ACCOUNT)
    services.store.put(stored.model_copy(update={"status": "complete"}))
    with pytest.raises(errors.Conflict) as refused:
        client.evaluations.cancel(handle.id)
    assert refused.value.code == "not_cancellable"

    created = client.webhooks.create("https://hooks.example.com/assay", ["evaluation.complete"], name="ci")
    assert created.secret.startswith("whsec_")
    assert [w.id for w in client.webhooks.list()] == [created.webhook.id]
    assert list(client.webhooks.deliveries(created.webhook.id)) == []
    client.webhooks.delete(created.webhook.id)
    with pytest.raises(errors.NotFound):
        client.webhooks.get(created.webhook.id)
    with pytest.raises(errors.Invalid):
        client.webhooks.create("http://hooks.example.com/", ["evaluation.complete"])


def test_the_cli_cancels_shows_events_and_webhooks(served, app, services, alice, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("ASSAY_URL", served)
    monkeypatch.setenv("ASSAY_API_KEY", _key(alice.admin))
    monkeypatch.setenv("ASSAY_CONFIG", str(tmp_path / "none.json"))
    model_id, dataset_id = make_inputs(app.test_client(), services, alice)
    [handle] = Client(progress=False).evaluations.create(model_id, dataset_id, splits=["test"])

    assert cli.main(["cancel", handle.id]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert cli.main(["--json", "events", handle.id]) == 0
    assert [e["to_status"] for e in json.loads(capsys.readouterr().out)] == ["pending", "cancelled"]
    assert cli.main(["events", handle.id]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["CREATED_AT", "FROM_STATUS", "TO_STATUS"] and "cancel_requested" in table

    assert cli.main(["--json", "webhooks", "create", "https://hooks.example.com/x", "--event", "evaluation.failed"]) == 0
    webhook = json.loads(capsys.readouterr().out)
    assert webhook["secret"].startswith("whsec_")
    assert cli.main(["webhooks", "ls"]) == 0 and webhook["id"] in capsys.readouterr().out
    assert cli.main(["webhooks", "deliveries", webhook["id"]]) == 0
    assert cli.main(["rm", webhook["id"]]) == 0
    capsys.readouterr()
    assert cli.main(["events", "key_" + "0" * 20]) == 2  # not a model, dataset or evaluation
    assert cli.main(["cancel", "evl_" + "0" * 20]) == 4
