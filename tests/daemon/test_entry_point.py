"""The process edges: the liveness probe, and the environment handed to workers."""

from __future__ import annotations

import os
import time

from daemon.__main__ import main
from daemon.environment import worker_environment
from shared.settings import Settings


def test_check_health_passes_on_a_fresh_file_and_fails_on_a_stale_or_missing_one(tmp_path, monkeypatch):
    health = tmp_path / "alive"
    monkeypatch.setenv("ASSAY_DAEMON_HEALTH_FILE", str(health))
    monkeypatch.setenv("ASSAY_DAEMON_HEALTH_MAX_AGE_S", "60")
    assert main(["--check-health"]) == 1
    health.write_text("now")
    assert main(["--check-health"]) == 0
    stale = time.time() - 120
    os.utime(health, (stale, stale))
    assert main(["--check-health"]) == 1


def test_a_worker_rebuilds_the_daemons_settings_from_the_environment_it_is_given(monkeypatch):
    daemon_side = Settings(
        project="p",
        bucket="b",
        namespace="ns",
        lease_seconds=7.5,
        heartbeat_seconds=1.5,
        datastore_emulator_host="127.0.0.1:1",
        pubsub_emulator_host="127.0.0.1:2",
        storage_emulator_host="http://127.0.0.1:3",
    )
    for name in list(os.environ):
        if name.startswith("ASSAY_") or name.endswith("_EMULATOR_HOST"):
            monkeypatch.delenv(name)
    for name, value in worker_environment(daemon_side).items():
        monkeypatch.setenv(name, value)
    assert Settings() == daemon_side


def test_a_worker_is_never_handed_the_daemons_secrets(monkeypatch):
    daemon_side = Settings(project="p", bucket="b", webhook_signing_key="webhook-key", console_secret="console-key")
    env = worker_environment(daemon_side)
    assert "ASSAY_WEBHOOK_SIGNING_KEY" not in env and "ASSAY_CONSOLE_SECRET" not in env
    assert not any("key" in value and "*" in value for value in env.values())  # no masked stand-ins either
    for name in list(os.environ):
        if name.startswith("ASSAY_") or name.endswith("_EMULATOR_HOST"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == daemon_side.model_copy(update={"webhook_signing_key": None, "console_secret": None})
