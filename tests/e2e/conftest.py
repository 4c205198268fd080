"""The real local stack (``devstack.localstack``), started once for the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assay.client import Client
from devstack.emulators import free_port

ROOT = Path(__file__).resolve().parents[2]


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """A running stack: its settings (``ASSAY_URL``, ``ASSAY_API_KEY``, emulator hosts)."""
    state = tmp_path_factory.mktemp("stack")
    env = {
        **os.environ,
        "ASSAY_STACK_API_PORT": str(free_port()),
        "HF_HOME": str(ROOT / ".cache" / "huggingface"),
    }
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "devstack.localstack", "serve", "--state", str(state)],
        cwd=ROOT,
        env=env,
        stdout=open(state / "supervisor.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env_file = state / "local.env"
    deadline = time.monotonic() + 180
    while not env_file.exists():
        if supervisor.poll() is not None or time.monotonic() > deadline:
            supervisor.kill()
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((state / "logs").glob("*.log")))
            raise RuntimeError(f"the local stack did not start:\n{(state / 'supervisor.log').read_text()}\n{logs}")
        time.sleep(0.5)
    try:
        yield {**read_env(env_file), "STATE": str(state)}
    finally:
        supervisor.terminate()
        try:
            supervisor.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(supervisor.pid, 9)


@pytest.fixture(scope="module")
def client(stack) -> Client:
    """The SDK's client of the stack, without progress bars."""
    return Client(stack["ASSAY_URL"], stack["ASSAY_API_KEY"], progress=False)
