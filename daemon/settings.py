"""The daemon's own settings, beside the shared ``Settings`` (both built once in ``main()``).

Every field is read from the environment as ``ASSAY_DAEMON_<FIELD>``; dicts and lists are
JSON (``ASSAY_DAEMON_NODE_SELECTOR='{"cloud.google.com/gke-accelerator": "nvidia-l4"}'``).

=====================================  ==========================================================
``ASSAY_DAEMON_BACKEND``               ``local`` (one machine, the default) or ``kubernetes``
``ASSAY_DAEMON_REPLICA_ID``            this replica's name as lease owner (default: host-pid)
``ASSAY_DAEMON_POLL_INTERVAL_S``       longest sleep between turns; a hint wakes it earlier
``ASSAY_DAEMON_MAX_ATTEMPTS``          attempts per task before it is ``failed``
``ASSAY_DAEMON_GLOBAL_CONCURRENCY``    evaluations admitted or running at once, all accounts
``ASSAY_DAEMON_ACCOUNT_CONCURRENCY``   the same, per account
``ASSAY_DAEMON_CLAIM_THREADS``         claims + submits made in parallel within a turn
``ASSAY_DAEMON_QUEUE_POSITIONS``       how many waiting evaluations get a queue position
``ASSAY_DAEMON_ADMISSION_LEASE_S``     how long one replica holds the admission lease
``ASSAY_DAEMON_HEALTH_FILE``           touched after every good turn (liveness probe)
``ASSAY_DAEMON_HEALTH_MAX_AGE_S``      ``python -m daemon --check-health`` fails past this age
``ASSAY_DAEMON_MAX_FAILED_TURNS``      consecutive failed turns before the process exits
``ASSAY_DAEMON_LOG_LEVEL``             ``DEBUG``, ``INFO`` (default), ``WARNING`` or ``ERROR``
``ASSAY_DAEMON_WEBHOOK_TIMEOUT_S``     how long one webhook delivery may take
``ASSAY_DAEMON_WEBHOOK_BACKOFF_S``     the first retry's delay; doubled each time, up to …_MAX_S
``ASSAY_DAEMON_WEBHOOK_RETRY_WINDOW_S`` how long after the change a delivery is retried
``ASSAY_DAEMON_WEBHOOK_THREADS``       deliveries made in parallel within a turn
``ASSAY_DAEMON_NAMESPACE``             Kubernetes namespace of the Jobs
``ASSAY_DAEMON_KUBECONFIG``            kubeconfig path; in-cluster config when unset
``ASSAY_DAEMON_WORKER_IMAGE``          the worker image the Jobs run
``ASSAY_DAEMON_WORKER_PYTHON``         the interpreter in that image
``ASSAY_DAEMON_SERVICE_ACCOUNT``       the Jobs' Kubernetes service account
``ASSAY_DAEMON_GPU_RESOURCE``          extended resource name of a GPU (``nvidia.com/gpu``)
``ASSAY_DAEMON_GPU_COUNT``             GPUs per evaluation Job (0: evaluations run on CPU)
``ASSAY_DAEMON_NODE_SELECTOR``         node selector of the GPU pool (JSON object)
``ASSAY_DAEMON_TOLERATIONS``           tolerations for the GPU pool's taints (JSON list)
``ASSAY_DAEMON_CPU_REQUEST`` / ``…_MEMORY_REQUEST`` / ``…_SCRATCH_SIZE``  per-Job resources
``ASSAY_DAEMON_JOB_DEADLINE_S``        ``activeDeadlineSeconds`` of every Job
``ASSAY_DAEMON_JOB_TTL_S``             ``ttlSecondsAfterFinished`` of every Job
``ASSAY_DAEMON_JOB_CONFIG_MAP``        a ConfigMap the Jobs take extra environment from
``ASSAY_DAEMON_LOCAL_STATE_DIR``       LocalBackend: one directory per job (pid, exit code, log)
``ASSAY_DAEMON_LOCAL_COMMAND``         LocalBackend: the argv before the worker's (JSON list)
``ASSAY_DAEMON_LOCAL_MAX_PROCESSES``   LocalBackend: worker processes at once
=====================================  ==========================================================

The lease length and heartbeat period are the shared ``ASSAY_LEASE_SECONDS`` and
``ASSAY_HEARTBEAT_SECONDS``: the workers renew what the daemon grants, so both read one value.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


GKE_GPU_TOLERATIONS: list[dict[str, Any]] = [
    # GKE taints GPU nodes so that only Pods asking for GPUs land there.
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
]


class DaemonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ASSAY_DAEMON_", extra="ignore", frozen=True)

    backend: Literal["local", "kubernetes"] = "local"
    replica_id: str = Field(default_factory=_default_replica_id, min_length=1, max_length=200)

    # -- the loop --
    poll_interval_s: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    global_concurrency: int = Field(default=16, ge=1)
    account_concurrency: int = Field(default=4, ge=1)
    claim_threads: int = Field(default=8, ge=1, le=64)
    queue_positions: int = Field(default=100, ge=0)
    admission_lease_s: float = Field(default=15.0, gt=0)
    health_file: str | None = "/tmp/assay-daemon-alive"
    health_max_age_s: float = Field(default=120.0, gt=0)
    max_failed_turns: int = Field(default=10, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # -- webhook deliveries (daemon/webhooks.py) --
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_backoff_s: float = Field(default=30.0, gt=0)  # the first retry; doubled each time
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0)
    webhook_retry_window_s: float = Field(default=24 * 3600.0, gt=0)  # after the change, then failed
    webhook_threads: int = Field(default=4, ge=1, le=64)

    # -- Kubernetes --
    namespace: str = "assay"
    kubeconfig: str | None = None
    worker_image: str = "assay-worker:latest"
    worker_python: str = "python"
    service_account: str | None = "assay-worker"
    gpu_resource: str = "nvidia.com/gpu"
    gpu_count: int = Field(default=1, ge=0)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=lambda: list(GKE_GPU_TOLERATIONS))
    cpu_request: str = "2"
    memory_request: str = "8Gi"
    scratch_size: str = "20Gi"
    job_deadline_s: int = Field(default=6 * 3600, ge=60)
    job_ttl_s: int = Field(default=24 * 3600, ge=0)
    job_config_map: str | None = None

    # -- LocalBackend --
    local_state_dir: str = ".assay/jobs"
    local_command: list[str] | None = None  # default: this interpreter
    local_max_processes: int = Field(default=4, ge=1)

    @model_validator(mode="after")
    def _caps_are_consistent(self) -> DaemonSettings:
        if self.account_concurrency > self.global_concurrency:
            raise ValueError("account_concurrency cannot exceed global_concurrency")
        return self
