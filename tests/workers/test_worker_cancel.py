"""A cancelled evaluation ordered again resumes from the prediction shards its cancelled
attempt published: the real worker, on the real emulators."""

from __future__ import annotations

from test_worker_runner import ACCOUNT, _run, ready_inputs  # noqa: F401 — ready_inputs is a fixture

from functions import evaluations as ordering
from shared import storage as paths
from shared.api import CreateEvaluations
from shared.entities import Evaluation
from shared.store import ANY_ACCOUNT
from shared.tasks import TaskName
from workers.runner import EXIT_OK


def _claim(store, evaluation_id: str, attempt: int) -> None:
    """What the daemon's claim does: the next attempt, admitted."""
    store.transition(Evaluation, evaluation_id, account=ANY_ACCOUNT, expected="pending", to="admitted", attempts=attempt)


def test_a_cancelled_evaluation_ordered_again_resumes_from_its_shards(settings, store, storage, ready_inputs):  # noqa: F811
    model, dataset = ready_inputs
    request = CreateEvaluations(model_id=model.id, dataset_id=dataset.id, splits=["train"])
    [(outcome, evaluation)], _ = ordering.order(store, request, account=ACCOUNT)
    assert outcome == "created"
    _claim(store, evaluation.id, 1)

    # The owner cancels as soon as the first prediction shard is published.
    upload_file = storage.upload_file
    published: list[str] = []

    def upload_then_cancel(name, path, *args, **kwargs):
        result = upload_file(name, path, *args, **kwargs)
        if "/predictions/" in name and not published:
            published.append(name)
            ordering.cancel(store, evaluation.id, account=ACCOUNT)
        return result

    storage.upload_file = upload_then_cancel
    assert _run(settings, store, storage, TaskName.evaluate, evaluation.id, attempt=1) == EXIT_OK
    storage.upload_file = upload_file
    cancelled = store.get(Evaluation, evaluation.id, account=ACCOUNT)
    assert cancelled.status == "cancelled" and cancelled.summary is None  # the attempt could not report
    shard = published[0]
    first_bytes = storage.read_bytes(shard)

    [(outcome, restarted)], _ = ordering.order(store, request, account=ACCOUNT)
    assert (outcome, restarted.id, restarted.status) == ("restarted", evaluation.id, "pending")
    _claim(store, evaluation.id, 2)
    assert _run(settings, store, storage, TaskName.evaluate, evaluation.id, attempt=2) == EXIT_OK

    done = store.get(Evaluation, evaluation.id, account=ACCOUNT)
    assert done.status == "complete", (done.reason, done.message)
    assert done.summary["efficiency"]["shards_resumed"] >= 1  # not run again
    assert storage.read_bytes(shard) == first_bytes
    assert storage.exists(paths.evaluation_summary(evaluation.id))
