"""``build_job`` on its own: what the Job asks for, and that Kubernetes 1.33 accepts it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient
from kubernetes_validate import validate

from daemon.backend import Task
from daemon.context import task_of
from daemon.job_spec import build_job
from daemon.settings import DaemonSettings
from shared.entities import Evaluation, Model
from shared.modeltasks import SPECS
from shared.tasks import TaskName

EVALUATE = Task(TaskName.evaluate, "evl_0123456789abcdefghij", "acc_0123456789abcdefghij", 2, gpu=True)
VERIFY = Task(TaskName.verify_model, "mdl_0123456789abcdefghij", "acc_0123456789abcdefghij", 1)
INGEST = Task(TaskName.ingest_dataset, "dst_0123456789abcdefghij", "acc_0123456789abcdefghij", 3)

GPU_POOL = DaemonSettings(
    worker_image="europe-docker.pkg.dev/p/assay/worker@sha256:" + "a" * 64,
    node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
    gpu_count=1,
    job_deadline_s=7200,
    job_ttl_s=3600,
    service_account="assay-worker",
    job_config_map="assay-worker-env",
)


def as_manifest(job) -> dict:
    """What the client sends: camelCase keys, no nulls."""
    return ApiClient().sanitize_for_serialization(job)


@pytest.mark.parametrize("task", [EVALUATE, VERIFY, INGEST], ids=lambda t: str(t.name))
@pytest.mark.parametrize(
    "settings",
    [GPU_POOL, DaemonSettings(), DaemonSettings(gpu_count=0, service_account=None, tolerations=[])],
    ids=["gpu-pool", "defaults", "cpu-only"],
)
def test_every_job_validates_strictly_against_kubernetes_1_33(task, settings):
    manifest = as_manifest(build_job(task, settings, env={"ASSAY_PROJECT": "p", "ASSAY_BUCKET": "b"}))
    assert validate(manifest, "1.33.0", strict=True) == "1.33"


def test_an_evaluation_job_asks_for_a_gpu_on_the_gpu_pool():
    job = as_manifest(build_job(EVALUATE, GPU_POOL, env={"ASSAY_BUCKET": "b"}))
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert job["metadata"]["name"] == EVALUATE.job_name
    assert job["metadata"]["namespace"] == "assay"
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 7200
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "assay-worker"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["image"] == GPU_POOL.worker_image
    assert container["command"] == ["python", "-m", "workers", "evaluate", EVALUATE.entity_id, "--attempt", "2"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "ASSAY_BUCKET", "value": "b"} in container["env"]
    assert container["envFrom"] == [{"configMapRef": {"name": "assay-worker-env"}}]
    labels = job["metadata"]["labels"]
    assert labels["assay.dev/task-id"] == EVALUATE.entity_id
    assert labels["assay.dev/attempt"] == "2"
    assert labels["app.kubernetes.io/managed-by"] == "assay-daemon"
    assert labels["app.kubernetes.io/component"] == "evaluate"
    assert spec["template"]["metadata"]["labels"] == labels


def test_verification_runs_on_cpu_nodes_without_gpu_scheduling():
    pod = as_manifest(build_job(VERIFY, GPU_POOL))["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert "nodeSelector" not in pod and "tolerations" not in pod


@pytest.mark.parametrize("model_task", sorted(SPECS))
def test_the_task_table_decides_who_gets_a_gpu(model_task):
    """An evaluation goes to the GPU pool when its model task says so; verifying and
    ingesting never do, whatever the task."""
    evaluation = Evaluation(
        id="evl_0123456789abcdefghij",
        account="acc_0123456789abcdefghij",
        name="e",
        model_id="mdl_0123456789abcdefghij",
        dataset_id="dst_0123456789abcdefghij",
        split="test",
        fingerprint="f",
        task=model_task,
        attempts=1,
    )
    model = Model(
        id="mdl_0123456789abcdefghij",
        account="acc_0123456789abcdefghij",
        name="m",
        task=model_task,
        declared_size=1,
        content_type="application/zip",
        upload_object="uploads/models/x/model.zip",
    )
    assert task_of(evaluation).gpu is SPECS[model_task].gpu
    assert task_of(model).gpu is False
    assert ("nodeSelector" in as_manifest(build_job(task_of(evaluation), GPU_POOL))["spec"]["template"]["spec"]) is SPECS[
        model_task
    ].gpu


def test_the_pod_meets_the_restricted_security_profile():
    pod = as_manifest(build_job(EVALUATE, GPU_POOL))["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def test_build_job_is_pure_same_inputs_same_job():
    assert as_manifest(build_job(EVALUATE, GPU_POOL, env={"A": "1"})) == as_manifest(
        build_job(EVALUATE, GPU_POOL, env={"A": "1"})
    )


def test_the_command_line_validator_accepts_the_jobs_too(tmp_path):
    """The same check as a deploy pipeline would run: ``kubernetes-validate --strict``."""
    manifests = [as_manifest(build_job(task, GPU_POOL, env={"ASSAY_BUCKET": "b"})) for task in (EVALUATE, VERIFY)]
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump_all(manifests))
    validator = Path(sys.executable).with_name("kubernetes-validate")
    done = subprocess.run([str(validator), "--strict", "-k", "1.33.0", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (done.stdout + done.stderr).count("passed for resource job/") == 2
