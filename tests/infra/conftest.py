"""Fixtures for the deployment checks: the fake gcloud/kubectl, and gcloud's own parser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKES = Path(__file__).resolve().parent / "fakes"


def read_calls(log: Path) -> list[list[str]]:
    """The calls a fake recorded: argv lists, the program name first."""
    if not log.exists():
        return []
    return [record.split("\x1f")[:-1] for record in log.read_text().split("\x1e")[:-1]]


def _run_setup(tmp_path: Path, *, state: str = "fresh", **env: str) -> list[list[str]]:
    """Run infra/gcp/setup.sh against the fakes and return the calls it made."""
    log = tmp_path / f"calls-{state}.log"
    full_env = {
        "PATH": f"{FAKES}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(log),
        "FAKE_STATE": state,
        "PROJECT_ID": "assay-test",
        **env,
    }
    result = subprocess.run(
        ["bash", str(ROOT / "infra" / "gcp" / "setup.sh")], env=full_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return read_calls(log)


def gcloud_sdk_root() -> Path | None:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    root = Path(gcloud).resolve().parent.parent
    return root if (root / "lib" / "googlecloudsdk").is_dir() else None


class _GcloudParser:
    """One long-lived gcloud_parse.py process: the CLI loads once per test session."""

    def __init__(self, sdk: Path, workdir: Path):
        bundled = sdk / "platform" / "bundledpythonunix" / "bin" / "python"
        python = os.environ.get("CLOUDSDK_PYTHON") or (str(bundled) if bundled.exists() else "python3")
        config = workdir / "gcloud-config"
        config.mkdir(exist_ok=True)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(workdir),
            "CLOUDSDK_CONFIG": str(config),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
            "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
            "ASSAY_GCLOUD_SDK_ROOT": str(sdk),
            "ASSAY_GCLOUD_TMP": str(workdir),
        }
        self.process = subprocess.Popen(
            [python, str(Path(__file__).with_name("gcloud_parse.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
            text=True,
        )

    def verdicts(self, argvs: list[list[str]]) -> list[dict]:
        out = []
        for argv in argvs:
            self.process.stdin.write(json.dumps(argv) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
            assert line, f"gcloud_parse.py died (exit {self.process.poll()})"
            out.append(json.loads(line))
        return out

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _unparsed(verdicts: list[dict]) -> list[str]:
    """The commands gcloud would refuse before doing anything, with its reason."""
    bad = []
    for v in verdicts:
        if not (v["exit"] == 1 and "active account" in v["stderr"]):
            bad.append(f"gcloud {' '.join(v['argv'])}\n  -> exit {v['exit']}: {v['stderr'].strip()[-400:]}")
    return bad


@pytest.fixture(scope="session")
def run_setup():
    """``run_setup(tmp_path, state="fresh"|"existing", **env)``: the calls setup.sh made."""
    return _run_setup


@pytest.fixture(scope="session")
def gcloud_refusals(tmp_path_factory):
    """``gcloud_refusals(argvs)``: each command line gcloud's parser refuses, with its reason.

    Skips when no Cloud SDK is installed.
    """
    sdk = gcloud_sdk_root()
    if sdk is None:
        pytest.skip("the Google Cloud SDK is not installed: gcloud syntax not checked")
    parser = _GcloudParser(sdk, tmp_path_factory.mktemp("gcloud"))
    try:
        yield lambda argvs: _unparsed(parser.verdicts(argvs))
    finally:
        parser.close()
