"""KubernetesBackend: one batch/v1 Job per task attempt, through the official client.

One small function per verb; ``translated_kube_errors`` is the one place where the
client's ``ApiException`` and transport errors become Assay's own, chained with ``from``:
``Unavailable`` (try again after ``retry_after``) for 429, 5xx, auth trouble and a
connection that fails; ``JobRejected`` (permanent) when the API refuses the Job itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator

import urllib3
from kubernetes import client as k8s, config as k8s_config
from kubernetes.client.exceptions import ApiException

from daemon.backend import JobRejected, JobState, JobStatus, Task
from daemon.job_spec import SELECTOR, build_job
from daemon.settings import DaemonSettings
from shared.errors import Unavailable

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds for every API call


def api_client_from_settings(settings: DaemonSettings) -> k8s.ApiClient:
    """In-cluster config when running in a Pod, else the kubeconfig (``settings.kubeconfig``
    or the client's default location)."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(config_file=settings.kubeconfig, client_configuration=configuration)
    return k8s.ApiClient(configuration)


@contextlib.contextmanager
def translated_kube_errors(what: str) -> Iterator[None]:
    try:
        yield
    except ApiException as e:
        if e.status in (400, 422):
            raise JobRejected(f"{what}: rejected by the Kubernetes API ({e.status}): {_api_message(e)}") from e
        retry_after = _retry_after(e)
        if e.status in (401, 403):
            log.error("the daemon may not do this; check its RBAC", extra={"what": what, "status": e.status})
        raise Unavailable(f"{what}: Kubernetes API answered {e.status}", retry_after=retry_after) from e
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise Unavailable(f"{what}: Kubernetes API unreachable ({type(e).__name__})") from e


def _api_message(e: ApiException) -> str:
    try:
        return json.loads(e.body or "{}").get("message") or e.reason or ""
    except ValueError:
        return e.reason or ""


def _retry_after(e: ApiException) -> float:
    try:
        return max(0.5, float((e.headers or {}).get("Retry-After", 2)))
    except ValueError:
        return 2.0


# --- one function per verb ------------------------------------------------------------------


def name_of(job: k8s.V1Job) -> str:
    """A Job's name (the API server never returns a Job without one)."""
    if job.metadata is None or job.metadata.name is None:
        raise ValueError("a Job without a name")
    return job.metadata.name


def create_job(*, api: k8s.BatchV1Api, namespace: str, job: k8s.V1Job) -> bool:
    """Create the Job; False when a Job of that name exists already (adopted, not an error)."""
    with translated_kube_errors(f"create job {name_of(job)}"):
        try:
            api.create_namespaced_job(namespace, job, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
    return True


def read_job(*, api: k8s.BatchV1Api, namespace: str, name: str) -> k8s.V1Job | None:
    with translated_kube_errors(f"read job {name}"):
        try:
            return api.read_namespaced_job(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status == 404:
                return None
            raise


def delete_job(*, api: k8s.BatchV1Api, namespace: str, name: str) -> bool:
    """Delete the Job and its Pods; False when it was missing.

    Foreground propagation: the Job stays visible (being deleted) until its Pods are gone,
    so "missing" afterwards means nothing of it can still run.
    """
    with translated_kube_errors(f"delete job {name}"):
        try:
            api.delete_namespaced_job(name, namespace, propagation_policy="Foreground", _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
    return True


def list_jobs(*, api: k8s.BatchV1Api, namespace: str, page_size: int = 500) -> Iterator[k8s.V1Job]:
    """Every Job the daemon manages in ``namespace``, a page at a time."""
    token = None
    while True:
        with translated_kube_errors("list jobs"):
            page = api.list_namespaced_job(
                namespace, label_selector=SELECTOR, limit=page_size, _continue=token, _request_timeout=REQUEST_TIMEOUT
            )
        yield from page.items
        token = page.metadata._continue if page.metadata else None
        if not token:
            return


def job_status(job: k8s.V1Job) -> JobStatus:
    """Map a Job's status to a JobState. With ``backoffLimit: 0`` one failed Pod fails it."""
    name = name_of(job)
    status = job.status or k8s.V1JobStatus()
    true = {c.type: c for c in status.conditions or [] if c.status == "True"}
    for kind in ("Failed", "FailureTarget"):
        if kind in true:
            cond = true[kind]
            return JobStatus(name, JobState.failed, f"{cond.reason or 'Failed'}: {cond.message or ''}".rstrip(": "))
    if "Complete" in true or "SuccessCriteriaMet" in true or (status.succeeded or 0) > 0:
        return JobStatus(name, JobState.succeeded)
    if (status.failed or 0) > 0:
        return JobStatus(name, JobState.failed, "the worker's Pod failed")
    if (status.ready or 0) > 0:
        return JobStatus(name, JobState.running)
    # Created, or its Pod is waiting for a node, an image, a GPU.
    return JobStatus(name, JobState.pending)


# --- the backend ----------------------------------------------------------------------------


class KubernetesBackend:
    def __init__(self, settings: DaemonSettings, *, api_client: k8s.ApiClient, env: dict[str, str]):
        self.settings = settings
        self.api_client = api_client
        self.api = k8s.BatchV1Api(api_client)
        self.env = dict(env)

    def submit(self, task: Task) -> None:
        job = build_job(task, self.settings, env=self.env)
        created = create_job(api=self.api, namespace=self.settings.namespace, job=job)
        log.info(
            "submitted job" if created else "adopted existing job",
            extra={"job": task.job_name, "task_id": task.entity_id, "attempt": task.attempt},
        )

    def status(self, name: str) -> JobStatus:
        job = read_job(api=self.api, namespace=self.settings.namespace, name=name)
        return JobStatus.missing(name) if job is None else job_status(job)

    def statuses(self) -> dict[str, JobStatus]:
        return {name_of(job): job_status(job) for job in list_jobs(api=self.api, namespace=self.settings.namespace)}

    def cancel(self, name: str) -> None:
        if delete_job(api=self.api, namespace=self.settings.namespace, name=name):
            log.info("deleted job", extra={"job": name})

    def free_slots(self) -> None:
        return None  # the cluster queues Pods; the daemon's caps bound what it admits

    def close(self) -> None:
        self.api_client.close()
