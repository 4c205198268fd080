"""``build_job``: the batch/v1 Job that runs one task attempt. Pure: no I/O, no clock.

Retries are the daemon's (``backoffLimit: 0``, ``restartPolicy: Never``): one Job is one
attempt, named deterministically, so the daemon always knows which Job is whose. The Pod
meets the ``restricted`` Pod Security profile (non-root, no privilege escalation, all
capabilities dropped, read-only root, RuntimeDefault seccomp); the worker writes only to
its scratch volume and ``/tmp``.
"""

from __future__ import annotations

from kubernetes.client import (
    V1Capabilities,
    V1ConfigMapEnvSource,
    V1Container,
    V1EmptyDirVolumeSource,
    V1EnvFromSource,
    V1EnvVar,
    V1Job,
    V1JobSpec,
    V1ObjectMeta,
    V1PodSecurityContext,
    V1PodSpec,
    V1PodTemplateSpec,
    V1ResourceRequirements,
    V1SeccompProfile,
    V1SecurityContext,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)

from daemon.backend import Task
from daemon.settings import DaemonSettings
from shared.tasks import worker_command

MANAGED_BY = "assay-daemon"
SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
WORKER_UID = 10001  # the worker image's user (Dockerfile.worker)
SCRATCH = "/var/cache/assay"  # the worker image's ASSAY_CACHE_DIR lives under it


def job_labels(task: Task) -> dict[str, str]:
    """Labels tying a Job (and its Pod) to its task; all valid label values."""
    return {
        "app.kubernetes.io/name": "assay-worker",
        "app.kubernetes.io/instance": task.job_name,
        "app.kubernetes.io/component": str(task.name),
        "app.kubernetes.io/part-of": "assay",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "assay.dev/kind": task.kind.lower(),
        "assay.dev/task-id": task.entity_id,
        "assay.dev/account": task.account,
        "assay.dev/attempt": str(task.attempt),
    }


def build_job(task: Task, settings: DaemonSettings, *, env: dict[str, str] | None = None) -> V1Job:
    """The Job for one attempt of ``task``.

    A task that wants the GPU (an evaluation whose model task says so) asks for ``settings.gpu_count`` GPUs (``settings.gpu_resource``) and carry
    the GPU pool's node selector and tolerations; verification and ingestion run on CPU
    nodes. ``env`` is the workers' environment (the daemon's shared settings).
    """
    uses_gpu = task.gpu and settings.gpu_count > 0
    requests = {"cpu": settings.cpu_request, "memory": settings.memory_request}
    limits = {"memory": settings.memory_request}  # no CPU limit: throttling only slows the job
    if uses_gpu:
        # Extended resources: the request must equal the limit.
        requests[settings.gpu_resource] = str(settings.gpu_count)
        limits[settings.gpu_resource] = str(settings.gpu_count)

    labels = job_labels(task)
    container = V1Container(
        name="worker",
        image=settings.worker_image,
        command=[settings.worker_python, *worker_command(task.name, task.entity_id, task.attempt)],
        env=[V1EnvVar(name=k, value=v) for k, v in sorted((env or {}).items())],
        env_from=(
            [V1EnvFromSource(config_map_ref=V1ConfigMapEnvSource(name=settings.job_config_map))]
            if settings.job_config_map
            else None
        ),
        resources=V1ResourceRequirements(requests=requests, limits=limits),
        security_context=V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            capabilities=V1Capabilities(drop=["ALL"]),
        ),
        volume_mounts=[V1VolumeMount(name="scratch", mount_path=SCRATCH), V1VolumeMount(name="tmp", mount_path="/tmp")],
    )
    pod = V1PodSpec(
        restart_policy="Never",
        service_account_name=settings.service_account,
        # The worker never calls the Kubernetes API; Workload Identity needs no token.
        automount_service_account_token=False,
        containers=[container],
        node_selector=dict(settings.node_selector) if uses_gpu and settings.node_selector else None,
        tolerations=[V1Toleration(**_snake(t)) for t in settings.tolerations] if uses_gpu else None,
        security_context=V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=WORKER_UID,
            run_as_group=WORKER_UID,
            fs_group=WORKER_UID,
            seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
        ),
        volumes=[
            V1Volume(name="scratch", empty_dir=V1EmptyDirVolumeSource(size_limit=settings.scratch_size)),
            V1Volume(name="tmp", empty_dir=V1EmptyDirVolumeSource(size_limit="1Gi")),
        ],
    )
    return V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=V1ObjectMeta(name=task.job_name, namespace=settings.namespace, labels=labels),
        spec=V1JobSpec(
            backoff_limit=0,
            active_deadline_seconds=settings.job_deadline_s,
            ttl_seconds_after_finished=settings.job_ttl_s,
            template=V1PodTemplateSpec(metadata=V1ObjectMeta(labels=labels), spec=pod),
        ),
    )


def _snake(toleration: dict) -> dict:
    """Tolerations are configured as Kubernetes writes them (camelCase)."""
    names = {"tolerationSeconds": "toleration_seconds"}
    return {names.get(k, k): v for k, v in toleration.items()}
