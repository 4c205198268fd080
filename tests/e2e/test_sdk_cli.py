"""The SDK and the CLI end to end against the real local stack: upload, verify, ingest,
evaluate, query, delete. Everything runs as it would for a user on one machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from assay import verify_signature
from shared import errors
from shared.settings import Settings
from shared.storage import Storage, prefixes_of
from tests.e2e.stack_cli import cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits_assets(tmp_path_factory):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from devstack import digits

    model_dir = digits.cached_digits_vit(ROOT / ".cache" / "fixtures")
    archive = digits.write_imagefolder_archive(
        tmp_path_factory.mktemp("data") / "digits.zip", {"test": digits.digits_images("test")}
    )
    return model_dir, archive


def wait_gone(fetch, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            fetch()
        except errors.NotFound:
            return
        time.sleep(0.5)
    raise AssertionError("entity still there")


@pytest.fixture(scope="module")
def evaluated(client, digits_assets):
    model_dir, archive = digits_assets
    model = client.models.upload(model_dir, name="digits-vit", labels={"suite": "e2e"}, wait=True)
    assert model.status == "ready", (model.reason, model.message)
    dataset = client.datasets.upload(archive, name="digits", wait=True)
    assert dataset.status == "ready", (dataset.reason, dataset.message)
    assert dataset.splits == {"test": 449}
    [handle] = client.evaluations.create(model.id, dataset.id, splits=["test"])
    assert handle.outcome == "created"
    done = handle.wait(timeout_s=300)
    assert done.status == "complete", (done.reason, done.message)
    return model, dataset, handle


def test_upload_evaluate_and_query_through_the_sdk(client, evaluated):
    model, dataset, handle = evaluated
    assert model.label_names and len(model.label_names) == 10
    summary = client.evaluations.summary(handle.id)
    assert summary["instances"] == 449
    assert summary["accuracy"] > 0.9
    frame = handle.results()
    assert len(frame) == 449
    assert abs(frame["correct"].mean() - summary["accuracy"]) < 1e-9
    rows = list(client.evaluations.instances(handle.id, page_size=100))
    assert sorted(r.instance_id for r in rows) == sorted(frame["instance_id"])
    classes = client.evaluations.classes(handle.id)
    assert sum(c.support for c in classes.classes) == 449
    extra = client.evaluations.metrics(handle.id, metrics=["balanced_accuracy"], bootstrap={"samples": 200})
    assert extra.metrics[0].interval.low <= extra.metrics[0].value <= extra.metrics[0].interval.high
    # Asking again reuses the complete evaluation.
    [again] = client.evaluations.create(model.id, dataset.id, splits=["test"])
    assert again.outcome == "reused" and again.id == handle.id
    board = client.evaluations.leaderboard(dataset.id, split="test", metric="accuracy")
    assert board.items[0].evaluation_id == handle.id
    assert [m.id for m in client.models.list(labels={"suite": "e2e"})] == [model.id]


def test_the_cli_lists_shows_and_reports_with_meaningful_exit_codes(stack, evaluated):
    model, dataset, handle = evaluated
    listed = cli(stack, "--json", "ls", "evaluations")
    assert listed.returncode == 0, listed.stderr
    assert handle.id in [e["id"] for e in json.loads(listed.stdout)]
    shown = cli(stack, "show", model.id)
    assert shown.returncode == 0 and "ready" in shown.stdout
    results = cli(stack, "results", handle.id)
    assert results.returncode == 0, results.stderr
    assert "accuracy" in results.stdout and "PRECISION" in results.stdout
    wrong = cli(stack, "--json", "results", handle.id, "--misclassified", "--limit", "5")
    assert wrong.returncode == 0, wrong.stderr
    assert all(not row["correct"] for row in json.loads(wrong.stdout))
    board = cli(stack, "leaderboard", dataset.id)
    assert board.returncode == 0 and handle.id in board.stdout
    missing = cli(stack, "show", "mdl_" + "0" * 20)
    assert missing.returncode == 4 and "not found" in missing.stderr.lower()
    unauthenticated = subprocess.run(
        [sys.executable, "-m", "assay.cli", "ls", "models"],
        env={
            **os.environ,
            "ASSAY_URL": stack["ASSAY_URL"],
            "ASSAY_API_KEY": "assay_key_" + "0" * 20 + "_" + "A" * 43,
            "ASSAY_CONFIG": "/nonexistent",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unauthenticated.returncode == 3


def test_login_writes_a_config_only_the_user_can_read(stack, tmp_path):
    config = tmp_path / "config.json"
    env = {**os.environ, "ASSAY_CONFIG": str(config)}
    env.pop("ASSAY_URL", None)
    env.pop("ASSAY_API_KEY", None)
    out = subprocess.run(
        [sys.executable, "-m", "assay.cli", "login", "--url", stack["ASSAY_URL"], "--api-key", stack["ASSAY_API_KEY"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert config.stat().st_mode & 0o777 == 0o600
    listed = subprocess.run(
        [sys.executable, "-m", "assay.cli", "ls", "models"], env=env, capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_cancel_events_and_a_signed_webhook_through_the_sdk_and_the_cli(client, evaluated, stack):
    model, dataset, handle = evaluated
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/assay"
        created = client.webhooks.create(url, ["evaluation.cancelled"])
        [fresh] = client.evaluations.create(model.id, dataset.id, splits=["test"], config={"top_k": 3})
        assert fresh.outcome == "created"
        assert fresh.cancel().status == "cancelled"
        again = cli(stack, "cancel", fresh.id)  # idempotent
        assert again.returncode == 0 and "cancelled" in again.stdout, again.stderr
        finished = cli(stack, "cancel", handle.id)
        assert finished.returncode == 5 and "complete" in finished.stderr

        events = cli(stack, "--json", "events", fresh.id)
        assert events.returncode == 0, events.stderr
        story = json.loads(events.stdout)
        assert story[0]["from_status"] is None and story[-1]["to_status"] == "cancelled"
        assert story[-1]["component"] == "api" and story[-1]["key_id"]
        assert [e.to_status for e in fresh.events()] == [e["to_status"] for e in story]

        deadline = time.monotonic() + 60
        while not _Receiver.received and time.monotonic() < deadline:
            time.sleep(0.5)
        headers, body = _Receiver.received[0]
        verify_signature(body, headers["Assay-Signature"], created.secret)
        assert json.loads(body)["data"]["object"]["id"] == fresh.id
        while True:  # the daemon records the answer just after the receiver has it
            [delivery] = list(client.webhooks.deliveries(created.webhook.id))
            if delivery.status == "delivered" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert delivery.status == "delivered" and delivery.attempt_log[-1].status_code == 204
        client.webhooks.delete(created.webhook.id)
    finally:
        server.shutdown()
        server.server_close()


def test_deleting_a_model_removes_its_evaluations_and_every_stored_object(client, evaluated, stack):
    model, dataset, handle = evaluated
    storage = Storage.from_settings(
        Settings(
            project=stack["ASSAY_PROJECT"],
            bucket="assay-local",
            storage_emulator_host=stack["STORAGE_EMULATOR_HOST"],
            datastore_emulator_host=stack["DATASTORE_EMULATOR_HOST"],
        )
    )
    owned = prefixes_of("Model", model.id) + prefixes_of("Evaluation", handle.id)
    assert any(list(storage.list(p)) for p in owned)
    client.models.delete(model.id)
    wait_gone(lambda: client.models.get(model.id))
    wait_gone(lambda: client.evaluations.get(handle.id))
    for prefix in owned:
        assert list(storage.list(prefix)) == [], prefix
    client.datasets.delete(dataset.id)
    wait_gone(lambda: client.datasets.get(dataset.id))
    for prefix in prefixes_of("Dataset", dataset.id):
        assert list(storage.list(prefix)) == [], prefix
