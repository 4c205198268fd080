"""infra/k8s: every manifest is valid Kubernetes 1.33 (strict), and says what the design says."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
KUBERNETES_VERSION = "1.33"
SAMPLE = {
    "PROJECT_ID": "assay-test",
    "BUCKET": "assay-test-assay",
    "DAEMON_IMAGE": "us-central1-docker.pkg.dev/assay-test/assay/daemon@sha256:" + "a" * 64,
    "WORKER_IMAGE": "us-central1-docker.pkg.dev/assay-test/assay/worker@sha256:" + "b" * 64,
    "WEBHOOK_KEY_DIGEST": "0123456789abcdef",
}


def render(part: str, out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(K8S / "render.sh"), part, str(out)],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """Every rendered document, keyed by (kind, name)."""
    out = tmp_path_factory.mktemp("k8s")
    docs = {}
    for part in ("cluster", "app"):
        result = render(part, out / part, **SAMPLE)
        assert result.returncode == 0, result.stderr
        for path in sorted((out / part).glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def test_every_manifest_validates_strictly(rendered):
    assert len(rendered) >= 9
    for (kind, name), doc in rendered.items():
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{kind}/{name}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{kind}/{name}: {e.message}")


def test_strict_validation_catches_a_misspelt_field(rendered):
    deployment = yaml.safe_load(yaml.safe_dump(rendered[("Deployment", "assay-daemon")]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_cli_agrees(tmp_path):
    for part in ("cluster", "app"):
        assert render(part, tmp_path, **SAMPLE).returncode == 0
    files = sorted(str(p) for p in tmp_path.glob("*.yaml"))
    cli = Path(os.environ.get("VIRTUAL_ENV", Path(os.sys.executable).parent.parent)) / "bin" / "kubernetes-validate"
    command = [str(cli)] if cli.exists() else ["kubernetes-validate"]
    result = subprocess.run(
        [*command, "--strict", "--kubernetes-version", "1.33.0", *files], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARN" not in result.stdout  # a missing schema is only a warning to the CLI


def test_render_refuses_missing_values_and_leaves_no_placeholder(tmp_path):
    result = render("app", tmp_path / "partial", PROJECT_ID="p", BUCKET="b", DAEMON_IMAGE="d")
    assert result.returncode != 0 and "WORKER_IMAGE" in result.stderr
    assert render("app", tmp_path / "full", **SAMPLE).returncode == 0
    for path in (tmp_path / "full").glob("*.yaml"):
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        assert "${" not in code, path.name


def test_daemon_deployment(rendered):
    deployment = rendered[("Deployment", "assay-daemon")]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 2
    assert container["image"] == SAMPLE["DAEMON_IMAGE"]
    assert pod["serviceAccountName"] == "assay-daemon"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probe in container
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    config_maps = {ref["configMapRef"]["name"] for ref in container["envFrom"]}
    assert {("ConfigMap", name) for name in config_maps} <= set(rendered)
    # the restricted Pod Security profile, which the namespace enforces
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert rendered[("Namespace", "assay")]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # the health file lives on a writable volume under a read-only root
    settings = rendered[("ConfigMap", "assay-daemon")]["data"]
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(settings["ASSAY_DAEMON_HEALTH_FILE"].startswith(m + "/") for m in mounts)


@pytest.mark.parametrize("age_s, healthy", [(5, True), (600, False), (None, False)])
def test_the_probe_reads_the_heartbeat_file(rendered, tmp_path, age_s, healthy):
    container = rendered[("Deployment", "assay-daemon")]["spec"]["template"]["spec"]["containers"][0]
    settings = rendered[("ConfigMap", "assay-daemon")]["data"]
    heartbeat = tmp_path / "heartbeat"
    if age_s is not None:
        heartbeat.touch()
        then = heartbeat.stat().st_mtime - age_s
        os.utime(heartbeat, (then, then))
    env = {
        "PATH": os.environ["PATH"],
        "ASSAY_DAEMON_HEALTH_FILE": str(heartbeat),
        "ASSAY_DAEMON_HEALTH_MAX_AGE_S": settings["ASSAY_DAEMON_HEALTH_MAX_AGE_S"],
    }
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = container[probe]["exec"]["command"]
        result = subprocess.run(command, env=env, capture_output=True, timeout=10)
        assert (result.returncode == 0) is healthy, probe


def test_the_daemon_alone_gets_the_webhook_key_from_its_secret(rendered):
    pod = rendered[("Deployment", "assay-daemon")]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["ASSAY_WEBHOOK_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "assay-webhook", "key": "signing-key", "optional": False}
    # created by the build from Secret Manager, never a manifest holding the key
    assert not any(kind == "Secret" for kind, _ in rendered)
    # a rotated key changes the Pod template, so the Deployment rolls
    assert pod["metadata"]["annotations"]["assay/webhook-key-digest"] == SAMPLE["WEBHOOK_KEY_DIGEST"]
    # no secret setting in any ConfigMap: assay-settings is what every worker Job gets
    secret_names = {f"ASSAY_{name}".upper() for name, field in Settings.model_fields.items() if "Secret" in str(field.annotation)}
    assert {"ASSAY_WEBHOOK_SIGNING_KEY", "ASSAY_CONSOLE_SECRET"} <= secret_names
    for (kind, _), doc in rendered.items():
        if kind == "ConfigMap":
            assert secret_names.isdisjoint(doc["data"])
    assert "ASSAY_CONSOLE_SECRET" not in env  # the console runs in the api function only


def test_nothing_restricts_the_daemons_egress(rendered):
    """The daemon POSTs webhooks to receivers on the internet (it refuses private, link-local
    and loopback addresses itself, daemon/webhooks.py). No NetworkPolicy exists to block
    that; one added later must allow egress to the internet (infra/README.md, "Secrets")."""
    assert not any(kind == "NetworkPolicy" for kind, _ in rendered)


def test_pod_disruption_budget_keeps_one_daemon(rendered):
    pdb = rendered[("PodDisruptionBudget", "assay-daemon")]
    labels = rendered[("Deployment", "assay-daemon")]["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_daemon_role_manages_only_jobs_and_reads_pods(rendered):
    role = rendered[("Role", "assay-daemon")]
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert set(rules) == {("batch", "jobs"), ("", "pods"), ("", "pods/log")}
    assert rules[("", "pods")] == {"get", "list", "watch"}
    assert rules[("", "pods/log")] == {"get"}
    assert "*" not in rules[("batch", "jobs")]
    binding = rendered[("RoleBinding", "assay-daemon")]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "assay-daemon"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "assay-daemon", "namespace": "assay"}]
    assert not any(kind == "ClusterRole" or kind == "ClusterRoleBinding" for kind, _ in rendered)


def test_service_accounts_carry_workload_identity(rendered):
    for name in ("assay-daemon", "assay-worker"):
        sa = rendered[("ServiceAccount", name)]
        assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == (
            f"{name}@{SAMPLE['PROJECT_ID']}.iam.gserviceaccount.com"
        )
    assert rendered[("ServiceAccount", "assay-worker")]["automountServiceAccountToken"] is False
    daemon_settings = rendered[("ConfigMap", "assay-daemon")]["data"]
    assert daemon_settings["ASSAY_DAEMON_SERVICE_ACCOUNT"] == "assay-worker"
    assert daemon_settings["ASSAY_DAEMON_WORKER_IMAGE"] == SAMPLE["WORKER_IMAGE"]
    assert daemon_settings["ASSAY_DAEMON_JOB_CONFIG_MAP"] in {name for kind, name in rendered if kind == "ConfigMap"}


def _env_names(settings_class: type[BaseSettings]) -> set[str]:
    prefix = settings_class.model_config.get("env_prefix", "")
    names = set()
    for name, field in settings_class.model_fields.items():
        names.add(f"{prefix}{name}".upper())
        alias = field.validation_alias
        for choice in getattr(alias, "choices", [alias] if isinstance(alias, str) else []):
            names.add(str(choice).upper())
    return names


def test_every_setting_in_the_config_maps_is_read_by_someone(rendered):
    known = _env_names(Settings)
    if importlib.util.find_spec("daemon.settings") is not None:
        from daemon.settings import DaemonSettings

        known |= _env_names(DaemonSettings)
    else:  # before the daemon has settings, its names cannot be checked
        known |= {k for (_, _), d in rendered.items() for k in d.get("data", {}) if k.startswith("ASSAY_DAEMON_")}
    container = rendered[("Deployment", "assay-daemon")]["spec"]["template"]["spec"]["containers"][0]
    set_names = {e["name"] for e in container["env"]}
    for (kind, _), doc in rendered.items():
        if kind == "ConfigMap":
            set_names |= set(doc["data"])
    assert set_names - known == set(), "settings nobody reads (a typo is silently ignored)"


def test_daemon_settings_in_the_config_map_parse(monkeypatch):
    if importlib.util.find_spec("daemon.settings") is None:
        pytest.skip("daemon/settings.py does not exist yet")
    from daemon.settings import DaemonSettings

    docs = list(yaml.safe_load_all((K8S / "app" / "configmap.yaml").read_text()))
    data = next(d for d in docs if d["metadata"]["name"] == "assay-daemon")["data"]
    for key, value in data.items():  # from the environment, as in the Pod: JSON values parse
        monkeypatch.setenv(key, value.replace("${WORKER_IMAGE}", SAMPLE["WORKER_IMAGE"]))
    settings = DaemonSettings()
    assert settings.backend == "kubernetes"
    assert settings.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert settings.gpu_count == 1
