"""The store's own Datastore RPCs (raw protobuf over gRPC) on the real emulator: the same
stored values as google-cloud-datastore, namespaces, locks released on rollback, retries
of an unavailable backend bounded by the deadline, contention retried by the store."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import datastore

from shared.datastore_rpc import CHANNELS, DatastoreRpc, budget
from shared.entities import ArtifactStatus, Evaluation, EvaluationStatus, InferenceConfig, Model, evaluation_fingerprint
from shared.errors import Unavailable
from shared.settings import Settings
from shared.store import ANY_ACCOUNT, Store


def official_client(settings: Settings) -> datastore.Client:
    return datastore.Client(
        project=settings.project,
        namespace=settings.namespace,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": f"http://{settings.datastore_emulator_host}"},
    )


def an_evaluation(**changes) -> Evaluation:
    config = InferenceConfig(top_k=3, label_mapping={"cat": "feline"})
    fields = dict(
        id=Evaluation.new_id(),
        account="acc_a",
        name="e",
        labels={"team": "vision", "stage": "dev"},
        status=EvaluationStatus.running,
        model_id="mdl_x",
        dataset_id="dst_y",
        split="test",
        config=config,
        fingerprint=evaluation_fingerprint(model_id="mdl_x", dataset_id="dst_y", split="test", config=config),
        attempts=2,
        progress=0.25,
        lease_expires_at=dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
        summary={"accuracy": 0.5},
    )
    return Evaluation(**{**fields, **changes})


def test_what_the_store_writes_reads_back_through_google_cloud_datastore(store: Store, settings: Settings):
    evaluation = an_evaluation()
    store.put(evaluation)
    raw = official_client(settings).get(official_client(settings).key("Evaluation", evaluation.id))
    assert raw["status"] == "running" and raw["attempts"] == 2 and raw["progress"] == 0.25
    assert raw["lease_expires_at"] == evaluation.lease_expires_at and raw["heartbeat_at"] is None
    assert raw["label_pairs"] == ["stage=dev", "team=vision"]
    assert raw["config"] == '{"batch_size": 64, "label_mapping": {"cat": "feline"}, "top_k": 3}'
    assert set(raw.exclude_from_indexes) == set(raw) - Evaluation.indexed


def test_what_google_cloud_datastore_wrote_reads_back_through_the_store(store: Store, settings: Settings):
    """Entities stored before the store spoke raw protobuf still read the same."""
    evaluation = an_evaluation(labels={})
    client = official_client(settings)
    written = datastore.Entity(client.key("Evaluation", evaluation.id))
    written.update(evaluation.model_dump(exclude={"status", "labels", "config", "timings", "summary"}))
    written.update(
        status="running",
        labels="{}",
        label_pairs=[],
        timings="{}",
        summary='{"accuracy": 0.5}',
        config='{"batch_size": 64, "label_mapping": {"cat": "feline"}, "top_k": 3}',
    )
    client.put(written)
    assert store.get(Evaluation, evaluation.id, account="acc_a") == evaluation


def test_a_namespace_is_a_separate_store(settings: Settings):
    one = Store.from_settings(settings.model_copy(update={"namespace": "one"}))
    two = Store.from_settings(settings.model_copy(update={"namespace": "two"}))
    evaluation = an_evaluation()
    one.put(evaluation)
    assert one.get(Evaluation, evaluation.id, account="acc_a") == evaluation
    assert two.find(Evaluation, evaluation.id, account=ANY_ACCOUNT) is None
    assert [e.id for e in one.list(Evaluation, account="acc_a").items] == [evaluation.id]
    assert two.list(Evaluation, account="acc_a").items == []


def test_a_failed_transaction_releases_its_locks_at_once(store: Store):
    """Datastore locks what a transaction reads; a plain write to it waits for the lock
    (~2 s on the emulator) unless the failed transaction was rolled back."""
    model = Model(
        id=Model.new_id(), account="acc_a", name="m", declared_size=1, content_type="application/zip", upload_object="u"
    )
    store.put(model)
    with pytest.raises(KeyError):
        with store.transaction() as txn:
            txn.get(Model, model.id, account="acc_a")
            raise KeyError("a bug in the middle of a transaction")
    started = time.monotonic()
    store.put(model.model_copy(update={"status": ArtifactStatus.uploaded}))
    assert time.monotonic() - started < 1.5  # without the rollback: blocked until the deadline
    assert store.get(Model, model.id, account="acc_a").status == ArtifactStatus.uploaded


def test_contention_is_retried_by_the_store_until_the_lock_is_free(store: Store, caplog):
    """A write blocked by another transaction's lock is aborted (~2 s on the emulator); the
    RPC layer does not retry that, the store's transaction loop does."""
    model = Model(
        id=Model.new_id(),
        account="acc_a",
        name="m",
        status=ArtifactStatus.uploaded,
        declared_size=1,
        content_type="application/zip",
        upload_object="u",
    )
    store.put(model)
    holding, release = threading.Event(), threading.Event()

    def hold_a_read_lock():
        with store.transaction() as txn:
            txn.get(Model, model.id, account="acc_a")
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_a_read_lock)
    holder.start()
    assert holding.wait(10)
    threading.Timer(2.5, release.set).start()
    with caplog.at_level(logging.INFO, logger="shared.store"):
        out = store.transition(Model, model.id, account="acc_a", expected="uploaded", to="verifying")
    holder.join(10)
    assert out.status == ArtifactStatus.verifying
    assert "transaction aborted, retrying" in caplog.text


class RecordingSleep:
    def __init__(self):
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        time.sleep(seconds)


def test_an_unavailable_backend_is_retried_with_backoff_until_the_deadline():
    sleep = RecordingSleep()
    rpc = DatastoreRpc([grpc.insecure_channel("127.0.0.1:9")], project="p", deadline_s=0.6, sleep=sleep)
    started = time.monotonic()
    with pytest.raises(gexc.ServiceUnavailable):
        rpc.lookup([rpc.key("Model", "mdl_x")])
    assert time.monotonic() - started < 1.5
    assert len(sleep.delays) >= 2 and all(0 < d <= 1.0 for d in sleep.delays)
    assert sleep.delays[-1] > sleep.delays[0]


def test_a_commit_is_never_retried_it_may_have_landed():
    sleep = RecordingSleep()
    rpc = DatastoreRpc([grpc.insecure_channel("127.0.0.1:9")], project="p", deadline_s=5, sleep=sleep)
    with pytest.raises(gexc.ServiceUnavailable):
        rpc.commit([])
    assert sleep.delays == []


def test_the_store_turns_an_unreachable_datastore_into_unavailable(settings: Settings):
    down = Store.from_settings(settings.model_copy(update={"datastore_emulator_host": "127.0.0.1:9"}), deadline_s=0.3)
    with pytest.raises(Unavailable):
        down.find(Model, "mdl_x", account=ANY_ACCOUNT)
    with pytest.raises(Unavailable):
        down.run_in_transaction(lambda txn: None)


def test_threads_take_the_channels_in_turn_and_keep_theirs(settings: Settings):
    """A second channel to a dead port shows which channel a thread's calls take."""
    live = grpc.insecure_channel(settings.datastore_emulator_host)
    rpc = DatastoreRpc([live, grpc.insecure_channel("127.0.0.1:9")], project=settings.project, deadline_s=0.3)
    key = rpc.key("Model", "mdl_nobody")
    outcomes: list[str] = []

    def lookup_twice() -> None:
        for _ in range(2):
            try:
                rpc.lookup([key])
                outcomes.append(f"{threading.current_thread().name}: live")
            except gexc.ServiceUnavailable:
                outcomes.append(f"{threading.current_thread().name}: dead")

    for name in ("first", "second", "third"):
        thread = threading.Thread(target=lookup_twice, name=name)
        thread.start()
        thread.join()
    assert outcomes == ["first: live"] * 2 + ["second: dead"] * 2 + ["third: live"] * 2


def test_the_production_channels_are_made_with_the_default_credentials_once(monkeypatch):
    """No Datastore to reach from here: this builds the production channels (they connect
    lazily) with credentials found once, as on Cloud Run, and calls nothing."""
    import google.auth

    found = []

    def default(scopes=None, **kwargs):
        found.append(scopes)
        return AnonymousCredentials(), "assay-prod"

    monkeypatch.setattr(google.auth, "default", default)
    rpc = DatastoreRpc.from_settings(Settings(project="assay-prod", datastore_emulator_host=None))
    assert len(rpc._channel_stubs) == CHANNELS
    assert [set(scopes) for scopes in found] == [
        {"https://www.googleapis.com/auth/datastore", "https://www.googleapis.com/auth/cloud-platform"}
    ]


def test_once_refused_a_call_retries_for_refused_s_not_its_whole_deadline():
    sleep = RecordingSleep()
    rpc = DatastoreRpc([grpc.insecure_channel("127.0.0.1:9")], project="p", deadline_s=60, refused_s=0.3, sleep=sleep)
    started = time.monotonic()
    with pytest.raises(gexc.ServiceUnavailable):
        rpc.lookup([rpc.key("Model", "mdl_x")])
    assert time.monotonic() - started < 10  # generous: 0.3 s of retries, against a 60 s deadline
    assert sleep.delays and sum(sleep.delays) <= 0.3


def test_calls_in_a_budget_share_its_deadline_and_a_nested_one_cannot_extend_it(settings: Settings):
    rpc = DatastoreRpc.from_settings(settings)
    key = rpc.key("Model", "mdl_x")
    with budget(0.5):
        assert rpc.lookup([key]) == {}  # within the budget: an ordinary call
        time.sleep(0.6)
        started = time.monotonic()
        with pytest.raises(gexc.DeadlineExceeded):
            rpc.lookup([key])
        assert time.monotonic() - started < 0.5  # spent: it fails without trying
        with budget(30), pytest.raises(gexc.DeadlineExceeded):
            rpc.lookup([key])
    assert rpc.lookup([key]) == {}  # outside any budget: the call's own deadline
