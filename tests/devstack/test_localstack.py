"""The local stack's supervisor, its kept admin key and ``reset`` (the whole stack end to end
is in tests/e2e/test_stack_persistence.py)."""

from __future__ import annotations

import json
import logging
import stat
import sys

import pytest

from devstack import localstack
from devstack.emulators import Process
from shared.apikeys import authenticate


def test_a_dead_service_is_restarted_with_growing_logged_backoff_reset_by_a_stable_run(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="localstack")
    service = localstack.Supervised(Process("flaky", [sys.executable, "-c", "raise SystemExit(3)"], "", tmp_path / "flaky.log"))
    service.start()
    delays = []
    now = service.started_at
    for _ in range(4):
        service.process.popen.wait(timeout=60)
        service.check(now)  # notices the death: schedules the restart
        delays.append(service.restart_at - now)
        first_pid = service.process.popen.pid
        service.check(now + delays[-1] - 0.01)  # too early: still waiting
        assert service.process.popen.pid == first_pid
        now += delays[-1]
        service.check(now)  # restarts it
        assert service.process.popen.pid != first_pid
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert sum("flaky exited with status 3; restarting in" in r.getMessage() for r in caplog.records) == 4
    assert sum("flaky restarted" in r.getMessage() for r in caplog.records) == 4

    service.process.popen.wait(timeout=60)
    service.check(service.started_at + localstack.STABLE_AFTER_S)  # it had run long enough: a fresh failure
    assert service.restart_at - (service.started_at + localstack.STABLE_AFTER_S) == 1.0
    many = localstack.Supervised(service.process, started_at=now, restarts=20)
    many.check(now)
    assert many.restart_at - now == localstack.MAX_BACKOFF_S


def test_the_local_admin_key_is_kept_while_its_account_exists(store, emulators, tmp_path):
    first = localstack.local_admin_key(store, tmp_path)
    kept = tmp_path / "admin.json"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert json.loads(kept.read_text())["api_key"] == first
    assert localstack.local_admin_key(store, tmp_path) == first  # the data came back: the same key
    emulators.reset_datastore()  # the data is gone: a new account and key, kept in its place
    second = localstack.local_admin_key(store, tmp_path)
    assert second != first and json.loads(kept.read_text())["api_key"] == second
    assert authenticate(store, f"Bearer {second}").scopes == ["admin"]


def test_reset_deletes_the_data_jobs_and_caches_and_keeps_the_logs(tmp_path, capsys):
    for d in ("data/storage/assay-local", "jobs/x", "cache/y", "logs"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "data" / "datastore.snapshot").write_bytes(b"x")
    (tmp_path / "logs" / "stack.log").write_text("kept")
    (tmp_path / "local.env").write_text("ASSAY_URL=x\n")
    assert localstack.reset(tmp_path) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]
    assert "stack data deleted" in capsys.readouterr().out


def test_the_test_suites_own_emulators_keep_nothing(emulators):
    assert emulators.data_dir is None and emulators.datastore_snapshot is None
    storage = next(p for p in emulators.processes if p.name == "storage")
    assert storage.argv[storage.argv.index("-backend") + 1] == "memory"
    assert emulators.save_datastore() == 0


@pytest.mark.parametrize("command", ["up", "down", "reset", "serve"])
def test_every_command_is_accepted(command):
    with pytest.raises(SystemExit) as info:
        localstack.main([command, "--help"])
    assert info.value.code == 0
