"""Cancel, event history and webhook deliveries, driven by the daemon on the real emulators
(the LocalBackend running the stand-in worker; Kubernetes on the fake API server)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from daemon_helpers import MemoryBackend, local_backend, make_dataset, make_evaluation, make_model, runs, turn_until
from fake_apiserver import FakeApiServer
from test_kubernetes_backend import backend_for

from daemon.backend import JobState
from daemon.context import Context
from daemon.loop import Daemon
from daemon.webhooks import Refused, post
from functions import evaluations as ordering, webhooks
from shared.api import CreateEvaluations, CreateWebhook
from shared.entities import Evaluation, EvaluationStatus, Model
from shared.errors import Conflict, TransitionConflict
from shared.events import Event
from shared.storage import prediction_shard
from shared.store import ANY_ACCOUNT
from shared.webhooks import Webhook, WebhookDelivery, WebhookSubscriptions, verify_signature


def _put(store, *entities) -> None:
    for entity in entities:
        store.put(entity)


def _history(store, entity_id: str, account: str = "acc_a") -> list[Event]:
    """The entity's events as the API reads them: the account's, oldest first."""
    return list(store.iterate(Event, account=account, filters={"entity_id": entity_id}, order="created_at"))


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (a zombie waiting to be reaped does not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # it ended while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@pytest.fixture
def patient_daemon(fast_settings, fast_store, storage, daemon_settings, runs_dir):
    """A daemon on the LocalBackend whose workers get a long lease: these tests follow one
    job's life, which a loaded machine must not cut short by a late first heartbeat."""
    patient = fast_settings.model_copy(update={"lease_seconds": 60.0})
    made = []

    def build() -> Daemon:
        daemon = Daemon(Context(patient, daemon_settings, fast_store, storage, local_backend(patient, daemon_settings, runs_dir)))
        made.append(daemon)
        return daemon

    yield build
    for daemon in made:
        for name in list(daemon.ctx.backend._children):
            daemon.ctx.backend.cancel(name)
        daemon.ctx.backend.close()


# --- cancel ------------------------------------------------------------------------------


def test_cancelling_a_running_local_job_stops_its_processes_and_keeps_its_shards(
    patient_daemon, fast_store, storage, runs_dir, daemon_settings
):
    model, dataset = make_model(), make_dataset()
    labels = {"standin": "ok", "standin-seconds": "120", "standin-once": "1"}
    evaluation = make_evaluation(model, dataset, labels=labels)
    _put(fast_store, model, dataset, evaluation)
    daemon = patient_daemon()
    shard = prediction_shard(evaluation.id, 0)
    turn_until(daemon, lambda: storage.exists(shard))  # running, one shard published, still going
    running = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
    assert running.status == "running"
    pid = int((Path(daemon_settings.local_state_dir) / running.job_name / "pid").read_text())
    assert _group_alive(pid)

    cancelled, _ = ordering.cancel(fast_store.acting_for("key_canceller"), evaluation.id, account=evaluation.account)
    assert cancelled.status == "cancelled" and cancelled.stopping
    daemon.turn()  # one turn: the job's process group is killed

    assert not _group_alive(pid)
    # Clearing the flag may wait for a lock the killed worker held mid-heartbeat (the
    # emulator, like Datastore, releases it only when that transaction times out).
    turn_until(daemon, lambda: not fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT).stopping)
    after = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
    assert after.status == "cancelled"
    assert storage.exists(shard)  # what the job wrote is kept
    last = _history(fast_store, evaluation.id)[-1]
    assert (last.from_status, last.to_status, last.key_id, last.attempt) == ("running", "cancelled", "key_canceller", 1)

    # Ordered again: restarted, and run as a new attempt beside the kept shard.
    request = CreateEvaluations(model_id=model.id, dataset_id=dataset.id, splits=["test"], config=evaluation.config)
    [(outcome, restarted)], _ = ordering.order(fast_store, request, account=evaluation.account)
    assert (outcome, restarted.status, restarted.id) == ("restarted", "pending", evaluation.id)
    turn_until(daemon, lambda: fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT).status == "complete")
    assert runs(runs_dir, evaluation.id) == ["evaluate 1", "evaluate 2"]


def test_a_reordered_evaluation_waits_until_its_cancelled_job_has_stopped(fast_settings, fast_store, storage, daemon_settings):
    model, dataset = make_model(), make_dataset()
    evaluation = make_evaluation(model, dataset, status=EvaluationStatus.running, attempts=1, job_name="evaluate-old-1")
    _put(fast_store, model, dataset, evaluation)
    backend = MemoryBackend()
    backend.jobs["evaluate-old-1"] = JobState.running
    backend.cancel = lambda name: None  # the job ignores the request for now (a Pod slow to stop)
    ordering.cancel(fast_store, evaluation.id, account=evaluation.account)
    request = CreateEvaluations(model_id=model.id, dataset_id=dataset.id, splits=["test"])
    [(outcome, _)], _ = ordering.order(fast_store, request, account=evaluation.account)
    assert outcome == "restarted"
    daemon = Daemon(Context(fast_settings, daemon_settings, fast_store, storage, backend))

    daemon.turn()
    held = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
    assert (held.status, held.stopping, held.job_name) == ("pending", True, "evaluate-old-1")

    backend.jobs.pop("evaluate-old-1")  # stopped at last
    daemon.turn()  # cancels: stopping cleared; admission: claimed as a new attempt
    claimed = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
    assert (claimed.status, claimed.stopping, claimed.attempts) == ("admitted", False, 2)


def test_cancelling_on_kubernetes_deletes_the_job_with_its_pods(make_daemon, fast_store):
    server = FakeApiServer().start()
    try:
        model, dataset = make_model(), make_dataset()
        evaluation = make_evaluation(model, dataset)
        _put(fast_store, model, dataset, evaluation)
        server.linger_reads = 1
        daemon = make_daemon(backend=backend_for(server))
        daemon.turn()
        job = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT).job_name
        server.set_status(job, active=1, ready=1)
        ordering.cancel(fast_store, evaluation.id, account=evaluation.account)

        daemon.turn()  # deleted, but its Pod is still stopping: stopping stays set
        assert fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT).stopping
        daemon.turn()
        assert not fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT).stopping
        deletes = server.requests_for("DELETE")
        assert deletes and {d.path.rsplit("/", 1)[1] for d in deletes} == {job}
        assert deletes[0].query["propagationPolicy"] == "Foreground"
        assert server.names() == []
    finally:
        server.stop()


def test_cancel_racing_completion_has_exactly_one_winner_and_the_events_say_which(fast_store):
    model, dataset = make_model(), make_dataset()
    _put(fast_store, model, dataset)
    winners = []
    for round_ in range(6):
        evaluation = make_evaluation(model, dataset, status=EvaluationStatus.running, attempts=1, top_k=round_ + 1)
        fast_store.put(evaluation)
        start = threading.Barrier(2)
        won: list[str] = []

        def cancel():
            start.wait()
            try:
                ordering.cancel(fast_store, evaluation.id, account=evaluation.account)
                won.append("cancelled")
            except Conflict as e:
                assert e.code == "not_cancellable"

        def complete():
            start.wait()
            try:
                fast_store.transition(
                    Evaluation,
                    evaluation.id,
                    account=ANY_ACCOUNT,
                    expected="running",
                    to="complete",
                    check=lambda current: current.attempts == 1,
                )
                won.append("complete")
            except TransitionConflict:
                pass

        threads = [threading.Thread(target=cancel), threading.Thread(target=complete)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, won
        final = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
        history = _history(fast_store, evaluation.id)
        assert final.status == won[0] == history[-1].to_status
        assert [(e.from_status, e.to_status) for e in history if e.from_status == "running"] == [("running", won[0])]
        winners.append(won[0])
    assert set(winners) <= {"cancelled", "complete"}


# --- events ------------------------------------------------------------------------------


def test_a_failed_then_retried_evaluation_tells_its_whole_story_in_order(patient_daemon, fast_store, runs_dir):
    model, dataset = make_model(), make_dataset()
    evaluation = make_evaluation(model, dataset, status=EvaluationStatus.waiting, labels={"standin": "die-once"})
    _put(fast_store, model, dataset, evaluation)
    daemon = patient_daemon()
    turn_until(daemon, lambda: fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT).status == "complete")

    story = [(e.from_status, e.to_status, e.attempt, e.component) for e in _history(fast_store, evaluation.id)]
    assert story == [
        ("waiting", "pending", 0, "system"),
        ("pending", "admitted", 1, "system"),
        ("admitted", "running", 1, "worker"),
        ("running", "pending", 1, "system"),  # the job died: requeued
        ("pending", "admitted", 2, "system"),
        ("admitted", "running", 2, "worker"),
        ("running", "complete", 2, "worker"),
    ]
    retry = _history(fast_store, evaluation.id)[3]
    assert retry.reason == "queued" and "attempt 1 failed" in retry.message


def test_events_are_deleted_with_their_entity(make_daemon, fast_store):
    model, dataset = make_model(), make_dataset()
    evaluation = make_evaluation(model, dataset)
    _put(fast_store, model, dataset, evaluation)
    daemon = make_daemon()
    turn_until(daemon, lambda: fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT).status == "complete")
    fast_store.transition(Model, model.id, account=ANY_ACCOUNT, expected="ready", to="deleting")
    assert _history(fast_store, evaluation.id) and _history(fast_store, model.id)
    turn_until(daemon, lambda: fast_store.find(Model, model.id, account=ANY_ACCOUNT) is None)
    assert _history(fast_store, evaluation.id) == [] and _history(fast_store, model.id) == []


# --- webhooks ----------------------------------------------------------------------------


class Receiver:
    """A real HTTP server on 127.0.0.1 that records what it receives and answers ``codes``
    in turn (then 200)."""

    def __init__(self, codes: list[int] | None = None):
        self.codes = list(codes or [])
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = receiver.codes.pop(0) if receiver.codes else 200
                receiver.received.append((dict(self.headers), body, code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def local_settings(fast_settings):
    return fast_settings.model_copy(update={"webhook_allow_http_loopback": True})


@pytest.fixture
def webhook_daemon(local_settings, fast_store, storage, daemon_settings):
    quick = daemon_settings.model_copy(update={"webhook_backoff_s": 0.05, "webhook_backoff_max_s": 0.2})
    return Daemon(Context(local_settings, quick, fast_store, storage, MemoryBackend()))


def _subscribe(store, settings, account: str, url: str, events: list[str]) -> tuple[Webhook, str]:
    return webhooks.create(store, CreateWebhook(url=url, events=events), account=account, settings=settings)


def _deliveries(store, webhook_id: str) -> list[WebhookDelivery]:
    return sorted(
        store.iterate(WebhookDelivery, account=ANY_ACCOUNT, filters={"webhook_id": webhook_id}, order=None),
        key=lambda d: d.created_at,
    )


def test_deliveries_are_signed_retried_through_failures_in_order_and_recorded(
    webhook_daemon, fast_store, local_settings, receiver
):
    receiver.codes = [500, 503]  # the receiver fails twice, then recovers
    model, dataset = make_model(), make_dataset()
    _put(fast_store, model, dataset)
    webhook, secret = _subscribe(
        fast_store,
        local_settings,
        model.account,
        receiver.url,
        ["evaluation.running", "evaluation.complete", "evaluation.failed"],
    )
    evaluation = make_evaluation(model, dataset, status=EvaluationStatus.admitted, attempts=1)
    fast_store.put(evaluation)
    fast_store.transition(Evaluation, evaluation.id, account=ANY_ACCOUNT, expected="admitted", to="running")
    fast_store.transition(Evaluation, evaluation.id, account=ANY_ACCOUNT, expected="running", to="complete")

    turn_until(webhook_daemon, lambda: all(d.status == "delivered" for d in _deliveries(fast_store, webhook.id)), pause=0.05)

    delivered = [(json.loads(body), headers, code) for headers, body, code in receiver.received if code == 200]
    assert [b["type"] for b, _, _ in delivered] == ["evaluation.running", "evaluation.complete"]  # in order
    for body, headers, _ in delivered:
        raw = json.dumps(body, separators=(",", ":")).encode()
        verify_signature(raw, headers["Assay-Signature"], secret)
        assert headers["Assay-Delivery"] == body["id"] and headers["Assay-Event"] == body["type"]
        assert body["data"]["object"]["id"] == evaluation.id
    # The retries went to the first change only: the second waited its turn.
    assert [json.loads(b)["type"] for _, b, _ in receiver.received] == ["evaluation.running"] * 3 + ["evaluation.complete"]
    first, second = _deliveries(fast_store, webhook.id)
    assert [a.status_code for a in first.attempt_log] == [500, 503, 200] and first.attempts == 3
    assert first.delivered_at is not None and [a.status_code for a in second.attempt_log] == [200]
    # A redelivery carries the same delivery id, so a receiver can drop duplicates.
    assert len({json.loads(b)["id"] for _, b, _ in receiver.received}) == 2


def test_deliveries_never_cross_accounts(webhook_daemon, fast_store, local_settings, receiver):
    other = Receiver()
    try:
        model, dataset = make_model(account="acc_a"), make_dataset(account="acc_a")
        _put(fast_store, model, dataset)
        _subscribe(fast_store, local_settings, "acc_a", receiver.url, ["evaluation.failed"])
        theirs, _ = _subscribe(fast_store, local_settings, "acc_b", other.url, ["evaluation.failed"])
        evaluation = make_evaluation(model, dataset)
        fast_store.put(evaluation)
        fast_store.transition(Evaluation, evaluation.id, account=ANY_ACCOUNT, expected="pending", to="failed")
        turn_until(webhook_daemon, lambda: len(receiver.received) == 1, pause=0.05)
        webhook_daemon.turn()
        assert other.received == [] and _deliveries(fast_store, theirs.id) == []
        assert json.loads(receiver.received[0][1])["data"]["object"]["account"] == "acc_a"
    finally:
        other.close()


def test_deliveries_to_private_addresses_are_refused_after_dns(
    webhook_daemon, fast_store, fast_settings, receiver, storage, daemon_settings
):
    # A name that resolves to loopback, on a server that is not local: the check happens at
    # delivery time, after DNS, so a name registered as public and rebound is still caught.
    model, dataset = make_model(), make_dataset()
    _put(fast_store, model, dataset)
    port = receiver.server.server_address[1]
    webhook = Webhook(
        id=Webhook.new_id(),
        account=model.account,
        name="rebound",
        url=f"https://localhost:{port}/hook",
        events=["evaluation.failed"],
        secret_salt="s",
    )
    fast_store.put(webhook)
    fast_store.put(WebhookSubscriptions(id=model.account, account=model.account, routes={webhook.id: webhook.events}))
    evaluation = make_evaluation(model, dataset)
    fast_store.put(evaluation)
    fast_store.transition(Evaluation, evaluation.id, account=ANY_ACCOUNT, expected="pending", to="failed")
    not_local = Daemon(Context(fast_settings, daemon_settings, fast_store, storage, MemoryBackend()))
    not_local.turn()
    [delivery] = _deliveries(fast_store, webhook.id)
    assert delivery.status == "pending" and delivery.attempt_log[0].error.startswith("refused")
    assert receiver.received == []

    for url in ("https://localhost/x", "https://127.0.0.1/x", "https://10.1.2.3/x", "https://169.254.169.254/x"):
        with pytest.raises(Refused):
            post(url, b"{}", headers={}, timeout_s=1, allow_loopback=False)
    with pytest.raises(Refused):  # even locally, only loopback is let through, never the metadata server
        post("http://169.254.169.254/computeMetadata/v1/", b"{}", headers={}, timeout_s=1, allow_loopback=True)


def test_a_deleted_webhooks_deliveries_are_dropped(webhook_daemon, fast_store, local_settings, receiver):
    model, dataset = make_model(), make_dataset()
    _put(fast_store, model, dataset)
    webhook, _ = _subscribe(fast_store, local_settings, model.account, receiver.url, ["evaluation.failed"])
    evaluation = make_evaluation(model, dataset)
    fast_store.put(evaluation)
    fast_store.transition(Evaluation, evaluation.id, account=ANY_ACCOUNT, expected="pending", to="failed")
    webhooks.delete(fast_store, webhook.id, account=model.account)
    webhook_daemon.turn()
    [delivery] = _deliveries(fast_store, webhook.id)
    assert (delivery.status, delivery.reason) == ("failed", "webhook_deleted") and receiver.received == []
