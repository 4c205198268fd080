"""The local stack survives crashes and keeps its data: a killed daemon or API is restarted
by the supervisor, and after ``down`` / ``up`` the same key finds the same completed
evaluation and its results (entities from the Datastore snapshot, objects from
fake-gcs-server's filesystem backend)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assay.client import Client
from devstack import localstack
from devstack.emulators import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def start(state: Path, api_port: int) -> tuple[subprocess.Popen, dict[str, str]]:
    """``make up``, in the foreground: the supervisor and the settings it writes."""
    env = {**os.environ, "ASSAY_STACK_API_PORT": str(api_port), "HF_HOME": str(ROOT / ".cache" / "huggingface")}
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "devstack.localstack", "serve", "--state", str(state)],
        cwd=ROOT,
        env=env,
        stdout=open(state / "supervisor.log", "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env_file = state / "local.env"
    deadline = time.monotonic() + 240
    while not env_file.exists():
        if supervisor.poll() is not None or time.monotonic() > deadline:
            supervisor.kill()
            raise RuntimeError(f"the local stack did not start:\n{(state / 'supervisor.log').read_text()[-5000:]}")
        time.sleep(0.5)
    return supervisor, dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)


def stop(supervisor: subprocess.Popen) -> None:
    """``make down``: SIGTERM, and the supervisor saves and stops everything."""
    supervisor.terminate()
    try:
        assert supervisor.wait(timeout=120) == 0
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)


def service_pid(supervisor: subprocess.Popen, word: str) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if ppid == supervisor.pid and word in cmdline:
            return int(entry)
    return None


def kill_and_see_it_restarted(supervisor: subprocess.Popen, state: Path, name: str, word: str) -> None:
    old = service_pid(supervisor, word)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = service_pid(supervisor, word)
        if new is not None and new != old:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"{name} was not restarted")
    assert supervisor.poll() is None  # the stack did not stop
    assert f"{name} exited with status -9; restarting in" in (state / "supervisor.log").read_text()


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from devstack import digits

    recipe = digits.Recipe(epochs=1)  # any weights do: this test is about keeping them
    model_dir = digits.cached_digits_vit(ROOT / ".cache" / "fixtures", recipe=recipe)
    images, labels = digits.digits_images("test")
    archive = digits.write_imagefolder_archive(
        tmp_path_factory.mktemp("data") / "digits.zip", {"test": (images[:60], labels[:60])}
    )
    return model_dir, archive


def test_crashed_services_restart_and_down_up_keeps_the_evaluation_and_its_results(tmp_path, small_inputs):
    model_dir, archive = small_inputs
    state = tmp_path / "stack"
    state.mkdir()
    api_port = free_port()
    supervisor, env = start(state, api_port)
    try:
        client = Client(env["ASSAY_URL"], env["ASSAY_API_KEY"], progress=False)
        model = client.models.upload(model_dir, name="kept-model", wait=True)
        dataset = client.datasets.upload(archive, name="kept-digits", wait=True)
        assert (model.status, dataset.status) == ("ready", "ready"), (model.message, dataset.message)
        [handle] = client.evaluations.create(model.id, dataset.id, splits=["test"])
        done = handle.wait(timeout_s=300)
        assert done.status == "complete", (done.reason, done.message)
        before = handle.results().sort_values("instance_id").reset_index(drop=True)
        summary = client.evaluations.summary(handle.id)
        assert len(before) == 60

        kill_and_see_it_restarted(supervisor, state, "daemon", "-m daemon")
        kill_and_see_it_restarted(supervisor, state, "api", "--target=api")
        deadline = time.monotonic() + 120
        while True:  # the restarted API answers again
            try:
                assert client.evaluations.get(handle.id).status == "complete"
                break
            except Exception:  # noqa: BLE001 — connection refused until it listens
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        stop(supervisor)

    assert not (state / "local.env").exists()
    localstack.shutil.rmtree(state / "cache")  # results must come back from the kept objects, not a cache
    supervisor, again = start(state, api_port)
    try:
        assert again["ASSAY_API_KEY"] == env["ASSAY_API_KEY"]
        client = Client(again["ASSAY_URL"], again["ASSAY_API_KEY"], progress=False)
        listed = list(client.evaluations.list())
        assert [(e.id, e.status) for e in listed] == [(handle.id, "complete")]
        assert {m.id for m in client.models.list()} == {model.id}
        assert client.evaluations.summary(handle.id) == summary
        after = client.evaluations.handle(handle.id).results().sort_values("instance_id").reset_index(drop=True)
        assert after.equals(before)
    finally:
        stop(supervisor)

    localstack.reset(state)  # `make reset`
    assert not (state / "data").exists()
