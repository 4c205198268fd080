"""The images and the functions' source: pinned, non-root, and built from files that exist.

No Docker engine runs here, so the Dockerfiles are read, not built; what a build would
trip over first (a missing COPY source, an unknown extra, a module that is not there) is
checked from the repository.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"Dockerfile.daemon": "daemon", "Dockerfile.worker": "workers"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def load_stage_functions():
    spec = importlib.util.spec_from_file_location("stage_functions", ROOT / "infra" / "gcp" / "stage_functions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dockerfile", sorted(DOCKERFILES))
def test_base_is_pinned_by_version_and_digest(dockerfile):
    (base,) = [args for word, args in instructions(ROOT / dockerfile) if word == "FROM"]
    assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*@sha256:[0-9a-f]{64}", base), base


@pytest.mark.parametrize("dockerfile", sorted(DOCKERFILES))
def test_runs_as_the_non_root_uid_the_pods_expect(dockerfile):
    users = [args for word, args in instructions(ROOT / dockerfile) if word == "USER"]
    assert users and users[-1] == "10001:10001"
    # the daemon's Deployment and the Jobs the daemon builds name the same uid
    assert "runAsUser: 10001" in (ROOT / "infra" / "k8s" / "app" / "daemon.yaml").read_text()
    job_spec = ROOT / "daemon" / "job_spec.py"
    if job_spec.exists():
        assert re.search(r"WORKER_UID\s*=\s*10001\b", job_spec.read_text())


@pytest.mark.parametrize("dockerfile", sorted(DOCKERFILES))
def test_copies_exist_and_extras_are_declared(dockerfile):
    steps = instructions(ROOT / dockerfile)
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for word, args in steps:
        if word == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source not in ignored, f"{source} is excluded from the build context"
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    for word, args in steps:
        if word == "RUN":
            for extra in re.findall(r'"\.\[(\w+)\]"', args):
                assert extra in extras


@pytest.mark.parametrize("dockerfile, package", sorted(DOCKERFILES.items()))
def test_entrypoint_module_exists(dockerfile, package):
    (entrypoint,) = [args for word, args in instructions(ROOT / dockerfile) if word == "ENTRYPOINT"]
    assert entrypoint == f'["python", "-m", "{package}"]'
    if not (ROOT / package / "__main__.py").exists():
        pytest.skip(f"{package}/__main__.py does not exist yet")


def test_dockerignore_keeps_local_state_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".cache", "tests", ".env"} <= ignored


def test_worker_keeps_the_base_cuda_torch():
    text = (ROOT / "Dockerfile.worker").read_text()
    assert "torch.version.cuda" in text  # the build fails if pip replaced the CUDA build
    torch_pins = [r for r in PYPROJECT["project"]["optional-dependencies"]["worker"] if r.startswith("torch")]
    base_version = re.search(r"pytorch/pytorch:(\d+\.\d+\.\d+)", text).group(1)
    # the worker extra must admit the base's torch, or pip would replace it
    from packaging.specifiers import SpecifierSet

    assert all(base_version in SpecifierSet(pin.removeprefix("torch")) for pin in torch_pins)


def test_staged_functions_source(tmp_path):
    stage_functions = load_stage_functions()
    out = stage_functions.stage(tmp_path / "functions-src")
    assert (out / "functions").is_dir() and (out / "shared").is_dir()
    assert not list(out.rglob("__pycache__"))
    shim = ast.parse((out / "main.py").read_text())
    (imported,) = [n for n in shim.body if isinstance(n, ast.ImportFrom)]
    assert imported.module == "functions.main"
    assert {a.name for a in imported.names} == set(stage_functions.ENTRY_POINTS)
    requirements = (out / "requirements.txt").read_text().split()
    names = {re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower() for r in requirements}
    assert {"functions-framework", "flask", "google-cloud-datastore", "pydantic", "gunicorn-h1c"} <= names
    assert not names & {"torch", "transformers", "kubernetes", "assay"}


def test_functions_framework_serves_with_gunicorns_c_request_parser():
    """gunicorn parses requests with gunicorn_h1c when it is installed and compatible with
    the configuration functions-framework gives it (a silent fallback costs ~0.2 ms of CPU
    per request: bench/README.md, api_latency)."""
    from functions_framework._http.gunicorn import GunicornApplication
    from gunicorn.http.message import _check_fast_parser

    server = GunicornApplication(object(), "127.0.0.1", 0, False)
    assert _check_fast_parser(server.cfg)


def _distribution_closure(requirements: list[str]) -> set[str]:
    """The installed distributions ``requirements`` pull in, transitively (by this venv's metadata)."""
    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    seen: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        req = pending.pop()
        if norm(req.name) in seen:
            continue
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            continue
        seen.add(norm(req.name))
        for sub in dist.requires or []:
            sub_req = Requirement(sub)
            # a dependency behind an extra counts only when that extra was asked for
            if sub_req.marker is None or any(sub_req.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                pending.append(sub_req)
    return seen


def test_staged_functions_import_only_what_their_requirements_install(tmp_path):
    """A module imported at the top of functions/ or shared/ but installed by nothing in
    requirements.txt would pass every local test and fail on the first cold start."""
    stage_functions = load_stage_functions()
    out = stage_functions.stage(tmp_path / "functions-src")
    installed = _distribution_closure((out / "requirements.txt").read_text().split("\n")[:-1])
    providers = importlib.metadata.packages_distributions()
    local = {"functions", "shared"}
    missing = {}
    for path in out.rglob("*.py"):
        tree = ast.parse(path.read_text())
        # top-level imports only: a lazy import inside a function is a deliberate choice
        for node in tree.body:
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in local or top in sys.stdlib_module_names or top == "__future__":
                    continue
                dists = {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(top, [])}
                if not dists & installed:
                    missing.setdefault(module, []).append(str(path.relative_to(out)))
    assert missing == {}, f"imported by the functions but not in their requirements: {missing}"
