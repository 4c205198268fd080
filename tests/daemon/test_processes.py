"""The daemon as real processes: SIGKILL at the worst moments, SIGTERM, two replicas."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import STAND_IN, make_dataset, make_evaluation, make_model, runs

from daemon.admission import AdmissionLease
from daemon.environment import worker_environment
from shared.entities import Evaluation
from shared.store import ANY_ACCOUNT

ROOT = Path(__file__).resolve().parents[2]
CRASHING = Path(__file__).with_name("crashing_daemon.py")

pytestmark = pytest.mark.slow


@pytest.fixture
def start_daemon(fast_settings, tmp_path, runs_dir, storage):
    """Start ``python -m daemon`` (or the crashing variant) on the LocalBackend; ``storage``
    makes the bucket the stand-in worker writes to."""
    started: list[subprocess.Popen] = []

    def start(replica: str, *, crash_at: str | None = None, local_command: list[str] | None = None, **extra) -> subprocess.Popen:
        env = {
            **os.environ,
            **worker_environment(fast_settings),
            "STANDIN_RUNS": str(runs_dir),
            "ASSAY_DAEMON_BACKEND": "local",
            "ASSAY_DAEMON_REPLICA_ID": replica,
            "ASSAY_DAEMON_POLL_INTERVAL_S": "0.2",
            "ASSAY_DAEMON_LOCAL_STATE_DIR": str(tmp_path / "jobs"),
            "ASSAY_DAEMON_LOCAL_COMMAND": json.dumps(local_command or [sys.executable, str(STAND_IN)]),
            "ASSAY_DAEMON_HEALTH_FILE": str(tmp_path / f"alive-{replica}"),
            **{k: str(v) for k, v in extra.items()},
        }
        argv = [sys.executable, str(CRASHING)] if crash_at else [sys.executable, "-m", "daemon"]
        if crash_at:
            env["CRASH_AT"] = crash_at
        log = open(tmp_path / f"daemon-{replica}.log", "ab")
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    for job_dir in (tmp_path / "jobs").glob("*"):  # stop stand-in workers still running
        pid_file = job_dir / "pid"
        if pid_file.exists() and not (job_dir / "exit_code").exists():
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def put_evaluations(store, n: int, *, accounts: int = 1, **labels) -> list[Evaluation]:
    out = []
    for a in range(accounts):
        model, dataset = make_model(f"acc_{a}"), make_dataset(f"acc_{a}")
        store.put(model)
        store.put(dataset)
        for k in range(n // accounts):
            e = make_evaluation(model, dataset, top_k=1 + k % 100, split=f"s{k}", labels=labels)
            store.put(e)
            out.append(e)
    return out


def wait_for(condition, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def statuses(store, evaluations) -> list[str]:
    return [store.get(Evaluation, e.id, account=ANY_ACCOUNT).status for e in evaluations]


@pytest.mark.parametrize("crash_at", ["before_submit", "after_submit"])
def test_a_daemon_killed_around_a_submit_loses_nothing_and_runs_nothing_twice(crash_at, start_daemon, fast_store, runs_dir):
    evaluations = put_evaluations(fast_store, 4)
    # A lease long enough for a worker to start on a loaded machine (an expired one would
    # rightly retry, and then a task runs twice); one claim at a time, so the kill never
    # lands inside another open transaction, whose locks Datastore would hold for a minute.
    settings = dict(ASSAY_LEASE_SECONDS=30, ASSAY_DAEMON_CLAIM_THREADS=1)
    crashing = start_daemon("crashy", crash_at=crash_at, **settings)
    assert crashing.wait(timeout=60) == -signal.SIGKILL
    assert "admitted" in statuses(fast_store, evaluations)  # claimed before it died

    start_daemon("restarted", **settings)
    wait_for(lambda: set(statuses(fast_store, evaluations)) == {"complete"}, timeout=90, what="every evaluation")
    for e in evaluations:
        assert len(runs(runs_dir, e.id)) == 1, (e.id, runs(runs_dir, e.id))


def test_sigterm_stops_the_daemon_cleanly_and_hands_over_admission(start_daemon, fast_store, tmp_path):
    process = start_daemon("graceful")
    wait_for(lambda: (tmp_path / "alive-graceful").exists(), timeout=60, what="a first good turn")
    assert fast_store.find(AdmissionLease, AdmissionLease.ID, account=ANY_ACCOUNT).holder == "graceful"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert fast_store.find(AdmissionLease, AdmissionLease.ID, account=ANY_ACCOUNT) is None
    log = (tmp_path / "daemon-graceful.log").read_text()
    assert "stopping: asked to" in log and "daemon stopped" in log


# A job that records its run and then stays up, so nothing is retried while we count.
RECORD_AND_STAY = [
    "/bin/sh",
    "-c",
    'mkdir -p "$STANDIN_RUNS" && echo "$3 $6" >> "$STANDIN_RUNS/$4" && exec sleep 120',
    "job",
]


def test_two_replicas_submit_each_of_200_pending_evaluations_exactly_once(start_daemon, fast_store, runs_dir, tmp_path):
    evaluations = put_evaluations(fast_store, 200, accounts=4)
    caps = dict(
        ASSAY_DAEMON_GLOBAL_CONCURRENCY=1000,
        ASSAY_DAEMON_ACCOUNT_CONCURRENCY=1000,
        ASSAY_DAEMON_LOCAL_MAX_PROCESSES=1000,
        ASSAY_LEASE_SECONDS=600,
        ASSAY_DAEMON_ADMISSION_LEASE_S=1,
    )
    first = start_daemon("replica-1", local_command=RECORD_AND_STAY, **caps)
    second = start_daemon("replica-2", local_command=RECORD_AND_STAY, **caps)

    wait_for(lambda: all(runs(runs_dir, e.id) for e in evaluations), timeout=120, what="200 submissions")
    time.sleep(2)  # a few more turns of both replicas: nothing may be submitted again
    assert first.poll() is None and second.poll() is None
    for e in evaluations:
        assert runs(runs_dir, e.id) == ["evaluate 1"]
    assert set(statuses(fast_store, evaluations)) == {"admitted"}
    assert len(list((tmp_path / "jobs").iterdir())) == 200
