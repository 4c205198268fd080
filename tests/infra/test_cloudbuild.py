"""cloudbuild.yaml parses, and names only files, entry points and images that exist."""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BUILTINS = {"PROJECT_ID": "assay-test", "BUILD_ID": "0b1d", "PROJECT_NUMBER": "123456789012"}
SUBSTITUTION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}|\$([A-Z_][A-Z0-9_]*)")


@pytest.fixture(scope="module")
def build() -> dict:
    return yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())


@pytest.fixture(scope="module")
def values(build) -> dict[str, str]:
    """Every substitution resolved the way Cloud Build's dynamic substitutions would."""
    resolved = dict(BUILTINS)
    pending = dict(build["substitutions"])
    for _ in range(len(pending) + 1):
        for key, raw in list(pending.items()):
            names = {a or b for a, b in SUBSTITUTION.findall(raw)}
            if names <= set(resolved):
                resolved[key] = SUBSTITUTION.sub(lambda m: resolved[m.group(1) or m.group(2)], raw)
                del pending[key]
    assert not pending, f"substitutions that never resolve: {pending}"
    return resolved


def substitute(text: str, values: dict[str, str]) -> str:
    # $$ is a literal $ for the step's shell; everything else must be a known substitution.
    parts = text.split("$$")
    return "$".join(SUBSTITUTION.sub(lambda m: values[m.group(1) or m.group(2)], p) for p in parts)


def load_stage_functions():
    """infra/gcp/stage_functions.py, loaded by path: infra/ is not a package."""
    spec = importlib.util.spec_from_file_location("stage_functions", ROOT / "infra" / "gcp" / "stage_functions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def steps_by_id(build) -> dict[str, dict]:
    return {step["id"]: step for step in build["steps"]}


def gcloud_argvs(build, values) -> list[list[str]]:
    """Every gcloud command line the build runs, substitutions filled."""
    out = []
    for step in build["steps"]:
        args = [substitute(a, values) for a in step.get("args", [])]
        if step.get("entrypoint") == "gcloud":
            out.append(args)
        elif step.get("entrypoint") == "bash":
            for line in args[-1].splitlines():
                if line.strip().startswith("gcloud "):
                    out.append(shlex.split(line)[1:])
    return out


def test_steps_are_wired(build, values):
    ids = [step["id"] for step in build["steps"]]
    assert len(ids) == len(set(ids))
    for step in build["steps"]:
        for dependency in step.get("waitFor", []):
            assert dependency == "-" or dependency in ids[: ids.index(step["id"])], (step["id"], dependency)
        for arg in step.get("args", []):
            substitute(arg, values)  # KeyError: a substitution nobody defines


def test_every_declared_substitution_is_used(build):
    text = (ROOT / "cloudbuild.yaml").read_text()
    for key in build["substitutions"]:
        assert len(re.findall(rf"\$\{{{key}\}}", text)) >= 1, key


def test_nothing_ships_unless_the_tests_pass(build):
    steps = steps_by_id(build)
    assert "make test" in steps["test"]["args"][-1]

    def ancestors(step_id: str) -> set[str]:
        found = set()
        for dep in steps[step_id].get("waitFor", []):
            if dep != "-":
                found |= {dep} | ancestors(dep)
        return found

    for step_id, step in steps.items():
        text = " ".join(step.get("args", []))
        if any(word in text for word in ("deploy", "push", "apply", "indexes")) and step_id != "test":
            if step_id.startswith("build-"):
                continue
            assert "test" in ancestors(step_id), f"{step_id} can run before the tests pass"


def test_named_files_exist(build, values):
    for step in build["steps"]:
        for arg in step.get("args", []):
            for path in re.findall(r"(?:infra|tests|functions|daemon|workers|shared)/[\w./-]+\.(?:py|sh|yaml|json)", arg):
                assert (ROOT / path).is_file(), path
            match = re.match(r"--file=(.+)", arg)
            if match:
                assert (ROOT / match.group(1)).is_file(), arg
    assert (ROOT / ".dockerignore").is_file()


def test_functions_source_is_the_staged_directory(build, values):
    steps = steps_by_id(build)
    staged = steps["stage-functions"]["args"][-1]
    for step_id in ("deploy-api", "deploy-storage-events"):
        args = steps[step_id]["args"]
        assert f"--source={staged}" in args
        assert "stage-functions" in steps[step_id]["waitFor"]
        assert "--gen2" in args


def test_entry_points_exist(build):
    stage_functions = load_stage_functions()
    declared = {a.split("=", 1)[1] for s in build["steps"] for a in s.get("args", []) if a.startswith("--entry-point=")}
    assert declared == {"api", "storage_events"}
    assert declared <= set(stage_functions.ENTRY_POINTS)
    main = ROOT / "functions" / "main.py"
    if not main.exists():
        pytest.skip("functions/main.py does not exist yet")
    tree = ast.parse(main.read_text())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert declared <= defined


def test_function_triggers(build, values):
    steps = steps_by_id(build)
    api = steps["deploy-api"]["args"]
    assert "--trigger-http" in api and "--allow-unauthenticated" in api
    events = [substitute(a, values) for a in steps["deploy-storage-events"]["args"]]
    # the topic the bucket's notification publishes to (infra/gcp/setup.sh)
    assert f"--trigger-topic={Settings().storage_topic}" in events
    assert "--retry" in events


# functions-framework's own: gunicorn workers and threads per instance.
SERVER_VARIABLES = {"THREADS", "WORKERS"}


def test_function_environment_names_real_settings(build, values):
    known = {f"ASSAY_{name}".upper() for name in Settings.model_fields} | SERVER_VARIABLES
    for step in build["steps"]:
        for arg in step.get("args", []):
            if arg.startswith("--set-env-vars="):
                names = {pair.split("=", 1)[0] for pair in substitute(arg, values).split("=", 1)[1].split(",")}
                assert names <= known, names - known


def test_the_api_runs_a_thread_per_concurrent_request(build, values):
    """Otherwise gunicorn runs 4 threads per core and queues the rest of the requests
    Cloud Run sends the instance (Google's advice: THREADS = concurrency)."""
    api = [substitute(a, values) for a in steps_by_id(build)["deploy-api"]["args"]]
    concurrency = next(a.split("=", 1)[1] for a in api if a.startswith("--concurrency="))
    env = dict(pair.split("=", 1) for a in api if a.startswith("--set-env-vars=") for pair in a.split("=", 1)[1].split(","))
    assert env["THREADS"] == concurrency


def test_images_built_are_the_images_deployed(build, values):
    steps = steps_by_id(build)
    tags = {}
    for step_id in ("build-daemon", "build-worker"):
        args = [substitute(a, values) for a in steps[step_id]["args"]]
        tag = next(a.split("=", 1)[1] for a in args if a.startswith("--tag="))
        dockerfile = next(a.split("=", 1)[1] for a in args if a.startswith("--file="))
        tags[dockerfile] = tag
        assert tag.endswith(":" + BUILTINS["BUILD_ID"])
    assert set(tags) == {"Dockerfile.daemon", "Dockerfile.worker"}
    push = substitute(steps["push-images"]["args"][-1], values)
    for tag in tags.values():
        assert f'docker push --quiet "{tag}"' in push
    deploy = substitute(steps["deploy-daemon"]["args"][-1], values)
    assert "daemon-image" in deploy and "worker-image" in deploy and "infra/k8s/render.sh app" in deploy


def test_builder_images_are_pinned(build):
    for step in build["steps"]:
        image = step["name"]
        if image.startswith("gcr.io/cloud-builders/"):
            continue  # Google's builders: maintained images without version tags
        tag = image.split("@")[0].rsplit(":", 1)[-1]
        assert re.match(r"^\d+\.\d+\.\d+", tag), f"{step['id']}: {image} is not pinned to a version"


def test_every_gcloud_command_parses(build, values, gcloud_refusals):
    argvs = gcloud_argvs(build, values)
    assert len(argvs) >= 4
    assert gcloud_refusals(argvs) == []


# Secret Manager secret -> the environment name the settings read it from.
SECRETS = {"assay-webhook-signing-key": "ASSAY_WEBHOOK_SIGNING_KEY", "assay-console-secret": "ASSAY_CONSOLE_SECRET"}


def _set_secrets(args: list[str], values: dict[str, str]) -> dict[str, str]:
    pairs = [substitute(a, values).split("=", 1)[1] for a in args if a.startswith("--set-secrets=")]
    return dict(pair.split("=", 1) for joined in pairs for pair in joined.split(","))


def test_the_api_reads_both_secrets_and_storage_events_none(build, values):
    steps = steps_by_id(build)
    api = _set_secrets(steps["deploy-api"]["args"], values)
    assert api == {env: f"{secret}:latest" for secret, env in SECRETS.items()}
    known = {f"ASSAY_{name}".upper() for name in Settings.model_fields}
    assert set(api) <= known
    assert _set_secrets(steps["deploy-storage-events"]["args"], values) == {}
    setup = (ROOT / "infra" / "gcp" / "setup.sh").read_text()
    for secret in SECRETS:  # the names setup.sh creates
        assert f"={secret}\n" in setup


def test_the_daemon_gets_the_webhook_key_as_its_deployment_reads_it(build, values):
    script = substitute(steps_by_id(build)["deploy-daemon"]["args"][-1], values)
    lines = [line.strip() for line in script.splitlines()]
    assert "set -o pipefail" in lines  # a failed read of the key fails the step
    access = next(line for line in lines if line.startswith("gcloud secrets versions access"))
    assert '--secret="assay-webhook-signing-key"' in access and "latest" in access
    assert "--out-file=" in access  # never echoed into the build log
    create = script[script.index("kubectl --namespace=assay create secret generic") :]
    secret_name, key = re.match(r"kubectl --namespace=assay create secret generic (\S+) --from-file=([\w-]+)=", create).groups()
    assert "--dry-run=client" in create and "kubectl apply --server-side" in create
    assert script.index("create secret") < script.index("kubectl apply -f build/k8s")
    daemon = yaml.safe_load((ROOT / "infra" / "k8s" / "app" / "daemon.yaml").read_text())
    env = {e["name"]: e for e in daemon["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["ASSAY_WEBHOOK_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (secret_name, key)
    assert "WEBHOOK_KEY_DIGEST=" in script and "ASSAY_CONSOLE_SECRET" not in script
