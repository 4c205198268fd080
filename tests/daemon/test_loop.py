"""The loop on the real emulators, with the LocalBackend running the stand-in worker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from daemon_helpers import MemoryBackend, make_dataset, make_evaluation, make_model, runs, turn_until

from daemon.backend import JobState
from daemon.claims import claim
from daemon.loop import Exit
from shared.entities import ArtifactStatus, Dataset, Evaluation, EvaluationStatus, Model, QueueReason
from shared.pubsub import Hint, Hints
from shared.storage import prediction_shard
from shared.store import ANY_ACCOUNT


def status_of(store, cls, entity_id):
    found = store.find(cls, entity_id, account=ANY_ACCOUNT)
    return None if found is None else found.status


def put_inputs(store, account="acc_a", **labels):
    model, dataset = make_model(account), make_dataset(account)
    store.put(model)
    store.put(dataset)
    return model, dataset


def test_a_waiting_evaluation_runs_end_to_end(make_daemon, fast_store, runs_dir, daemon_settings):
    model, dataset = put_inputs(fast_store)
    evaluation = make_evaluation(model, dataset, status=EvaluationStatus.waiting)
    fast_store.put(evaluation)
    daemon = make_daemon()

    turn_until(daemon, lambda: status_of(fast_store, Evaluation, evaluation.id) == "complete")

    done = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
    assert done.attempts == 1 and done.summary == {"accuracy": 1.0}
    assert done.job_name and done.lease_owner == "test-replica"
    assert runs(runs_dir, evaluation.id) == ["evaluate 1"]
    turn_until(daemon, lambda: daemon.ctx.backend.status(done.job_name).state == JobState.succeeded)
    assert (Path(daemon_settings.local_state_dir) / done.job_name / "log").exists()


def test_uploads_are_verified_and_ingested_then_their_evaluation_runs(make_daemon, fast_store, runs_dir):
    model = make_model(status=ArtifactStatus.uploaded)
    dataset = make_dataset(status=ArtifactStatus.uploaded)
    fast_store.put(model)
    fast_store.put(dataset)
    evaluation = make_evaluation(model, dataset, status=EvaluationStatus.waiting)
    fast_store.put(evaluation)
    daemon = make_daemon()

    daemon.turn()
    waiting = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
    assert waiting.status == "waiting" and waiting.reason == QueueReason.waiting_for_model
    turn_until(daemon, lambda: status_of(fast_store, Evaluation, evaluation.id) == "complete")
    assert runs(runs_dir, model.id) == ["verify-model 1"]
    assert runs(runs_dir, dataset.id) == ["ingest-dataset 1"]
    assert fast_store.get(Dataset, dataset.id, account=ANY_ACCOUNT).splits == {"test": 10}


def test_an_evaluation_whose_input_failed_or_vanished_fails_with_a_reason(make_daemon, fast_store):
    bad_model = make_model(status=ArtifactStatus.failed, message="pickle weights are not allowed")
    dataset = make_dataset()
    fast_store.put(bad_model)
    fast_store.put(dataset)
    on_failed = make_evaluation(bad_model, dataset, status=EvaluationStatus.waiting)
    on_missing = make_evaluation(make_model(), dataset, status=EvaluationStatus.waiting)  # model never stored
    on_bad_split = make_evaluation(make_model(), dataset, status=EvaluationStatus.waiting, split="validation")
    fast_store.put(on_failed)
    fast_store.put(on_missing)
    model_for_split = make_model(id=on_bad_split.model_id)
    fast_store.put(model_for_split)
    fast_store.put(on_bad_split)

    make_daemon(backend=MemoryBackend()).turn()

    failed = fast_store.get(Evaluation, on_failed.id, account=ANY_ACCOUNT)
    assert (failed.status, failed.reason) == ("failed", "input_failed")
    assert "pickle weights" in failed.message
    missing = fast_store.get(Evaluation, on_missing.id, account=ANY_ACCOUNT)
    assert (missing.status, missing.reason) == ("failed", "input_deleted")
    split = fast_store.get(Evaluation, on_bad_split.id, account=ANY_ACCOUNT)
    assert (split.status, split.reason) == ("failed", "unknown_split")


def test_a_worker_that_dies_is_retried_up_to_the_maximum_then_failed(make_daemon, fast_store, runs_dir):
    model, dataset = put_inputs(fast_store)
    evaluation = make_evaluation(model, dataset, labels={"standin": "die"})
    fast_store.put(evaluation)
    daemon = make_daemon()

    turn_until(daemon, lambda: status_of(fast_store, Evaluation, evaluation.id) == "failed")

    failed = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
    assert failed.reason == "attempts_exhausted" and failed.attempts == 3
    assert "exited with code 3" in failed.message
    assert runs(runs_dir, evaluation.id) == ["evaluate 1", "evaluate 2", "evaluate 3"]


def test_a_restarted_evaluation_gets_a_fresh_retry_budget_and_new_job_names(make_daemon, fast_store, runs_dir):
    model, dataset = put_inputs(fast_store)
    evaluation = make_evaluation(model, dataset, labels={"standin": "die"})
    fast_store.put(evaluation)
    daemon = make_daemon()
    turn_until(daemon, lambda: status_of(fast_store, Evaluation, evaluation.id) == "failed")
    # What POST /v1/evaluations does to a failed one: keep attempts, move the budget's base.
    fast_store.transition(
        Evaluation, evaluation.id, account=ANY_ACCOUNT, expected="failed", to="pending", retry_base=3, job_name=None
    )
    turn_until(daemon, lambda: status_of(fast_store, Evaluation, evaluation.id) == "failed")

    failed = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
    assert failed.attempts == 6 and failed.reason == "attempts_exhausted"
    assert runs(runs_dir, evaluation.id) == [f"evaluate {n}" for n in range(1, 7)]


def test_a_worker_that_dies_once_succeeds_on_its_second_attempt(make_daemon, fast_store, runs_dir):
    model, dataset = put_inputs(fast_store)
    evaluation = make_evaluation(model, dataset, labels={"standin": "die-once"})
    fast_store.put(evaluation)

    turn_until(make_daemon(), lambda: status_of(fast_store, Evaluation, evaluation.id) == "complete")

    assert fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT).attempts == 2
    assert runs(runs_dir, evaluation.id) == ["evaluate 1", "evaluate 2"]


def test_a_hung_worker_loses_its_lease_its_job_is_cancelled_and_the_task_failed(make_daemon, fast_store, daemon_settings):
    model, dataset = put_inputs(fast_store)
    evaluation = make_evaluation(model, dataset, labels={"standin": "hang"})
    fast_store.put(evaluation)
    daemon = make_daemon(daemon_settings.model_copy(update={"max_attempts": 1}))

    turn_until(daemon, lambda: status_of(fast_store, Evaluation, evaluation.id) == "running")
    turn_until(daemon, lambda: status_of(fast_store, Evaluation, evaluation.id) == "failed", timeout=20)

    failed = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
    assert failed.reason == "attempts_exhausted" and "lease expired" in failed.message
    assert daemon.ctx.backend.status(failed.job_name).state == JobState.failed  # cancelled, not left running


def test_deleting_a_running_evaluation_cancels_its_job_and_removes_objects_and_entity(make_daemon, fast_store, storage):
    model, dataset = put_inputs(fast_store)
    evaluation = make_evaluation(model, dataset, labels={"standin-seconds": "60"})
    fast_store.put(evaluation)
    daemon = make_daemon()
    turn_until(daemon, lambda: storage.exists(prediction_shard(evaluation.id, 0)))
    running = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
    assert running.status == "running"
    assert daemon.ctx.backend.status(running.job_name).state == JobState.running

    fast_store.transition(Evaluation, evaluation.id, account=ANY_ACCOUNT, expected="running", to="deleting")
    daemon.turn()

    assert fast_store.find(Evaluation, evaluation.id, account=ANY_ACCOUNT) is None
    assert not storage.exists(prediction_shard(evaluation.id, 0))
    assert daemon.ctx.backend.status(running.job_name).state == JobState.failed  # stopped by the cancel


def test_deleting_a_model_deletes_its_evaluations_and_all_their_objects(make_daemon, fast_store, storage):
    model, dataset = put_inputs(fast_store)
    other_dataset = make_dataset()
    fast_store.put(other_dataset)
    complete = make_evaluation(model, dataset, status=EvaluationStatus.complete)
    queued = make_evaluation(model, other_dataset, status=EvaluationStatus.pending)
    unrelated = make_evaluation(make_model(), dataset, status=EvaluationStatus.complete)
    for e in (complete, queued, unrelated):
        fast_store.put(e)
    storage.write_bytes(prediction_shard(complete.id, 0), b"x")
    storage.write_bytes(f"models/{model.id}/model.safetensors", b"x")
    storage.write_bytes(f"uploads/models/{model.id}/model.zip", b"x")
    fast_store.transition(Model, model.id, account=ANY_ACCOUNT, expected="ready", to="deleting")

    make_daemon(backend=MemoryBackend()).turn()

    assert fast_store.find(Model, model.id, account=ANY_ACCOUNT) is None
    assert fast_store.find(Evaluation, complete.id, account=ANY_ACCOUNT) is None
    assert fast_store.find(Evaluation, queued.id, account=ANY_ACCOUNT) is None
    assert fast_store.find(Evaluation, unrelated.id, account=ANY_ACCOUNT) is not None
    assert list(storage.list(f"models/{model.id}/")) == []
    assert list(storage.list(f"uploads/models/{model.id}/")) == []
    assert list(storage.list(f"evaluations/{complete.id}/")) == []


def test_waiting_work_is_explained_with_a_reason_and_a_queue_position(make_daemon, fast_store, daemon_settings):
    model_a, dataset_a = put_inputs(fast_store, "acc_a")
    model_b, dataset_b = put_inputs(fast_store, "acc_b")
    evaluations_a = [make_evaluation(model_a, dataset_a, top_k=k) for k in range(1, 6)]
    evaluation_b = make_evaluation(model_b, dataset_b)
    for e in [*evaluations_a, evaluation_b]:
        fast_store.put(e)
    backend = MemoryBackend()
    daemon = make_daemon(daemon_settings.model_copy(update={"global_concurrency": 3, "account_concurrency": 2}), backend=backend)

    daemon.turn()

    def get(e):
        return fast_store.get(Evaluation, e.id, account=ANY_ACCOUNT)

    assert [get(e).status for e in evaluations_a] == ["admitted", "admitted", "pending", "pending", "pending"]
    assert get(evaluation_b).status == "admitted"
    assert len(backend.submits) == 3
    waiting = [get(e) for e in evaluations_a[2:]]
    assert [(w.reason, w.queue_position) for w in waiting] == [
        (QueueReason.account_limit, 1),
        (QueueReason.account_limit, 2),
        (QueueReason.account_limit, 3),
    ]
    assert "position 1" in waiting[0].message
    before = get(evaluations_a[4]).updated_at
    daemon.turn()
    assert get(evaluations_a[4]).updated_at == before  # unchanged explanations are not rewritten


def test_a_daemon_dying_between_claim_and_submit_is_made_good_by_the_next_turn(make_daemon, fast_store, runs_dir):
    model, dataset = put_inputs(fast_store)
    evaluation = make_evaluation(model, dataset)
    fast_store.put(evaluation)
    first = make_daemon()
    claim(first.ctx, evaluation, expected="pending", to="admitted")  # ... and then it "died"

    restarted = make_daemon()
    turn_until(restarted, lambda: status_of(fast_store, Evaluation, evaluation.id) == "complete")
    assert runs(runs_dir, evaluation.id) == ["evaluate 1"]


def test_a_restarted_daemon_adopts_the_job_its_predecessor_started(make_daemon, fast_store, runs_dir):
    model, dataset = put_inputs(fast_store)
    evaluation = make_evaluation(model, dataset, labels={"standin-seconds": "1.5"})
    fast_store.put(evaluation)
    first = make_daemon()
    first.turn()
    assert status_of(fast_store, Evaluation, evaluation.id) == "admitted"

    restarted = make_daemon()  # a new backend object: it knows the job only from disk
    turn_until(restarted, lambda: status_of(fast_store, Evaluation, evaluation.id) == "complete")
    assert runs(runs_dir, evaluation.id) == ["evaluate 1"]


def test_a_hint_wakes_the_loop_before_the_poll_interval(make_daemon, fast_store, fast_settings, daemon_settings):
    hints = Hints(fast_settings)
    backend = MemoryBackend()
    daemon = make_daemon(daemon_settings.model_copy(update={"poll_interval_s": 30.0}), backend=backend, hints=hints)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)  # the first turn has run; the loop now sleeps for up to 30 s
        model, dataset = put_inputs(fast_store)
        evaluation = make_evaluation(model, dataset)
        fast_store.put(evaluation)
        sent = time.monotonic()
        assert Hints(fast_settings).publish([Hint(kind="Evaluation", id=evaluation.id, account="acc_a")])
        while not backend.submits and time.monotonic() - sent < 10:
            time.sleep(0.02)
        assert backend.submits, "the hint did not wake the loop"
        assert time.monotonic() - sent < 5
    finally:
        daemon.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_run_has_an_exit_per_stop_condition_and_touches_the_health_file(make_daemon, daemon_settings):
    daemon = make_daemon(backend=MemoryBackend())
    assert daemon.run(max_iterations=2) == Exit.max_iterations
    assert Path(daemon_settings.health_file).exists()

    stopping = make_daemon(backend=MemoryBackend())
    stopping.stop()
    assert stopping.run() == Exit.stopped

    class Broken(MemoryBackend):
        def statuses(self):
            raise RuntimeError("a bug")

    model_settings = daemon_settings.model_copy(update={"max_failed_turns": 2, "poll_interval_s": 0.01})
    failing = make_daemon(model_settings, backend=Broken())
    make_active = make_evaluation(make_model(), make_dataset(), status=EvaluationStatus.admitted, job_name="j")
    failing.ctx.store.put(make_active)
    assert failing.run() == Exit.failing
