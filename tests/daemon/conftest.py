"""Fixtures for the daemon tests: fast leases, daemon settings, and daemons on the
LocalBackend running the stand-in worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_helpers import local_backend

from daemon.context import Context
from daemon.loop import Daemon
from daemon.settings import DaemonSettings
from shared.settings import Settings
from shared.store import Store


@pytest.fixture
def fast_settings(settings: Settings) -> Settings:
    """Short leases and heartbeats, so expiry is seen in seconds."""
    return settings.model_copy(update={"lease_seconds": 4.0, "heartbeat_seconds": 0.5})


@pytest.fixture
def fast_store(fast_settings, indexes) -> Store:
    return Store.from_settings(fast_settings, indexes=indexes)


@pytest.fixture
def daemon_settings(tmp_path) -> DaemonSettings:
    return DaemonSettings(
        replica_id="test-replica",
        poll_interval_s=0.2,
        max_attempts=3,
        global_concurrency=8,
        account_concurrency=4,
        claim_threads=4,
        health_file=str(tmp_path / "alive"),
        local_state_dir=str(tmp_path / "jobs"),
        local_max_processes=8,
    )


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def make_daemon(fast_settings, fast_store, daemon_settings, runs_dir, storage):
    """Build daemons on the LocalBackend (stand-in worker); all are closed at the end."""
    made: list[Daemon] = []

    def build(daemon: DaemonSettings | None = None, *, backend=None, hints=None) -> Daemon:
        daemon = daemon or daemon_settings
        backend = backend or local_backend(fast_settings, daemon, runs_dir)
        d = Daemon(Context(fast_settings, daemon, fast_store, storage, backend), hints=hints)
        made.append(d)
        return d

    yield build
    for d in made:
        for name in list(getattr(d.ctx.backend, "_children", {})):
            d.ctx.backend.cancel(name)
        d.ctx.backend.close()
