"""The KubernetesBackend over HTTP against a fake API server that records requests."""

from __future__ import annotations

import datetime as dt

import pytest
from daemon_helpers import make_dataset, make_evaluation, make_model
from fake_apiserver import FakeApiServer
from kubernetes import client as k8s
from kubernetes_validate import validate

from daemon.backend import JobRejected, JobState, Task
from daemon.job_spec import SELECTOR
from daemon.kubernetes_backend import KubernetesBackend, api_client_from_settings, list_jobs
from daemon.settings import DaemonSettings
from shared.entities import Evaluation, EvaluationStatus, utcnow
from shared.errors import Unavailable
from shared.store import ANY_ACCOUNT
from shared.tasks import TaskName

TASK = Task(TaskName.evaluate, "evl_0123456789abcdefghij", "acc_a", 1, gpu=True)


@pytest.fixture
def apiserver():
    server = FakeApiServer().start()
    yield server
    server.stop()


def backend_for(server: FakeApiServer, settings: DaemonSettings | None = None) -> KubernetesBackend:
    configuration = k8s.Configuration(host=server.url)
    configuration.retries = 0  # the daemon's loop is the retry
    return KubernetesBackend(settings or DaemonSettings(), api_client=k8s.ApiClient(configuration), env={"ASSAY_BUCKET": "b"})


def test_submit_creates_one_valid_job_and_a_second_submit_adopts_it(apiserver):
    backend = backend_for(apiserver)
    backend.submit(TASK)
    backend.submit(TASK)  # after a crash: 409 AlreadyExists is success

    assert apiserver.names() == [TASK.job_name]
    posts = apiserver.requests_for("POST")
    assert len(posts) == 2 and posts[0].path == "/apis/batch/v1/namespaces/assay/jobs"
    assert validate(posts[0].body, "1.33.0", strict=True) == "1.33"
    assert posts[0].body["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_job_status_follows_the_job(apiserver):
    backend = backend_for(apiserver)
    assert backend.status(TASK.job_name).state == JobState.missing
    backend.submit(TASK)
    assert backend.status(TASK.job_name).state == JobState.pending
    apiserver.set_status(TASK.job_name, active=1, ready=0)
    assert backend.status(TASK.job_name).state == JobState.pending  # Pod waiting for a GPU node
    apiserver.set_status(TASK.job_name, active=1, ready=1)
    assert backend.status(TASK.job_name).state == JobState.running
    apiserver.finish(TASK.job_name, succeeded=True)
    assert backend.status(TASK.job_name).state == JobState.succeeded
    apiserver.finish(TASK.job_name, succeeded=False, reason="DeadlineExceeded")
    failed = backend.status(TASK.job_name)
    assert failed.state == JobState.failed and "DeadlineExceeded" in failed.message


def test_cancel_deletes_with_foreground_propagation_and_a_missing_job_is_success(apiserver):
    backend = backend_for(apiserver)
    backend.submit(TASK)
    backend.cancel(TASK.job_name)
    backend.cancel(TASK.job_name)
    assert apiserver.names() == []
    deletes = apiserver.requests_for("DELETE")
    assert [d.path.rsplit("/", 1)[1] for d in deletes] == [TASK.job_name] * 2
    assert deletes[0].query["propagationPolicy"] == "Foreground"


def test_list_pages_through_the_daemons_jobs_only(apiserver):
    backend = backend_for(apiserver)
    tasks = [Task(TaskName.evaluate, f"evl_{i:020d}", "acc_a", 1) for i in range(7)]
    for task in tasks:
        backend.submit(task)
    apiserver.jobs[("assay", "someone-else")] = {"metadata": {"name": "someone-else", "labels": {}}, "spec": {}}

    names = [job.metadata.name for job in list_jobs(api=backend.api, namespace="assay", page_size=3)]
    assert sorted(names) == sorted(t.job_name for t in tasks)
    lists = [r for r in apiserver.requests_for("GET") if r.path.endswith("/jobs")]
    assert len(lists) == 3 and all(r.query["labelSelector"] == SELECTOR for r in lists)
    assert set(backend.statuses()) == {t.job_name for t in tasks}


def test_api_errors_become_assay_errors_temporary_or_permanent(apiserver):
    backend = backend_for(apiserver)
    apiserver.errors.append((503, {}))
    with pytest.raises(Unavailable):
        backend.submit(TASK)
    apiserver.errors.append((429, {"Retry-After": "7"}))
    with pytest.raises(Unavailable) as limited:
        backend.status(TASK.job_name)
    assert limited.value.retry_after == 7.0
    apiserver.errors.append((422, {}))
    with pytest.raises(JobRejected):
        backend.submit(TASK)
    assert apiserver.names() == []


def test_an_unreachable_api_server_is_unavailable_not_a_crash(apiserver):
    backend = backend_for(apiserver)
    apiserver.stop()
    with pytest.raises(Unavailable):
        backend.status(TASK.job_name)


def test_kubeconfig_is_used_outside_a_cluster(apiserver, tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{apiserver.url}"}}}}]
users: [{{name: me, user: {{token: t}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: me, namespace: assay}}}}]
current-context: fake
"""
    )
    settings = DaemonSettings(kubeconfig=str(kubeconfig))
    backend = KubernetesBackend(settings, api_client=api_client_from_settings(settings), env={})
    backend.submit(TASK)
    assert apiserver.names() == [TASK.job_name]


# --- the loop driving Jobs ---------------------------------------------------------------------


def test_the_loop_submits_follows_and_retries_jobs_on_kubernetes(apiserver, make_daemon, fast_store, daemon_settings):
    model, dataset = make_model(), make_dataset()
    fast_store.put(model)
    fast_store.put(dataset)
    evaluation = make_evaluation(model, dataset)
    fast_store.put(evaluation)
    daemon = make_daemon(backend=backend_for(apiserver, daemon_settings))

    daemon.turn()
    first = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
    assert first.status == "admitted" and apiserver.names() == [first.job_name]

    apiserver.finish(first.job_name, succeeded=False)  # the Pod died before the worker reported
    daemon.turn()  # follow: requeued; admission: claimed again as attempt 2
    second = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
    assert second.status == "admitted" and second.attempts == 2
    assert sorted(apiserver.names()) == sorted([first.job_name, second.job_name])


def test_a_job_still_waiting_for_a_node_keeps_its_claim_past_the_lease(apiserver, make_daemon, fast_store):
    model, dataset = make_model(), make_dataset()
    evaluation = make_evaluation(model, dataset, status=EvaluationStatus.pending)
    for e in (model, dataset, evaluation):
        fast_store.put(e)
    daemon = make_daemon(backend=backend_for(apiserver))
    daemon.turn()
    claimed = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
    apiserver.set_status(claimed.job_name, active=1, ready=0)
    fast_store.update(Evaluation, evaluation.id, account=ANY_ACCOUNT, lease_expires_at=utcnow() - dt.timedelta(seconds=1))

    daemon.turn()

    held = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT)
    assert held.status == "admitted" and held.attempts == 1
    assert held.lease_expires_at > utcnow()
    assert apiserver.requests_for("DELETE") == []


def test_deleting_waits_until_the_cancelled_job_is_gone(apiserver, make_daemon, fast_store, storage):
    model, dataset = make_model(), make_dataset()
    evaluation = make_evaluation(model, dataset, status=EvaluationStatus.pending)
    for e in (model, dataset, evaluation):
        fast_store.put(e)
    apiserver.linger_reads = 1
    daemon = make_daemon(backend=backend_for(apiserver))
    daemon.turn()
    job = fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT).job_name
    apiserver.set_status(job, active=1, ready=1)
    fast_store.transition(Evaluation, evaluation.id, account=ANY_ACCOUNT, expected="admitted", to="deleting")

    daemon.turn()  # the Job is being deleted; its Pod may still write
    assert fast_store.get(Evaluation, evaluation.id, account=ANY_ACCOUNT).status == "deleting"
    daemon.turn()
    assert fast_store.find(Evaluation, evaluation.id, account=ANY_ACCOUNT) is None
    assert apiserver.names() == []
