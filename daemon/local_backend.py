"""LocalBackend: each task attempt is a subprocess, the one-machine default.

A job's identity is a directory named after the job, so it outlives the daemon:

    <state dir>/<job name>/
        task.json   what was asked for (task, entity, attempt, argv)
        pid         written by the job's own shell before the worker starts
        exit_code   written by that shell when the worker ends (or by us on reaping)
        log         the worker's stdout and stderr
        cancelled   present once the job was cancelled

``mkdir`` of that directory is the atomic "create": a second submit of the same name
(another replica, or this daemon after a crash) finds it and adopts the job instead of
starting it twice. A process is recognised as the job's by its command line, which
names the job directory, so a recycled pid is never mistaken for a live job.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from daemon.backend import BackendBusy, JobState, JobStatus, Task
from shared.tasks import worker_command

log = logging.getLogger(__name__)

# The job's shell records its pid, runs the worker and records the worker's exit code.
# Files appear atomically (written aside, then renamed) so a reader never sees half of one.
_JOB_SHELL = r"""
d="$1"; shift
echo $$ > "$d/pid.tmp" && mv "$d/pid.tmp" "$d/pid"
"$@"
rc=$?
echo $rc > "$d/exit_code.tmp" && mv "$d/exit_code.tmp" "$d/exit_code"
exit $rc
"""

# A job directory without a pid this long after its creation never started (the daemon
# died between mkdir and spawn): it is reported failed, so the task is retried.
LAUNCH_GRACE_S = 30.0
CANCEL_GRACE_S = 3.0


class LocalBackend:
    def __init__(
        self,
        *,
        state_dir: str | Path,
        command: list[str],
        env: dict[str, str],
        max_processes: int,
        ttl_s: float,
    ):
        """``command`` is the argv before the worker's (normally just the interpreter);
        ``env`` the complete environment of the workers."""
        self.state_dir = Path(state_dir).resolve()  # the path is part of each job's identity
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.command = list(command)
        self.env = dict(env)
        self.max_processes = max_processes
        self.ttl_s = ttl_s
        self._children: dict[str, subprocess.Popen] = {}
        # Claims submit from several threads: the room check and the start are one step.
        self._submitting = threading.Lock()

    # -- the backend verbs --

    def submit(self, task: Task) -> None:
        with self._submitting:
            self._submit(task)

    def _submit(self, task: Task) -> None:
        name = task.job_name
        job_dir = self.state_dir / name
        if job_dir.exists():
            log.info("adopting existing local job", extra={"job": name, "task_id": task.entity_id})
            return
        if self.free_slots() <= 0:
            raise BackendBusy(f"{self.max_processes} local jobs running already", retry_after=1.0)
        try:
            job_dir.mkdir()
        except FileExistsError:
            log.info("adopting local job created concurrently", extra={"job": name, "task_id": task.entity_id})
            return
        argv = [*self.command, *worker_command(task.name, task.entity_id, task.attempt)]
        (job_dir / "task.json").write_text(
            json.dumps(
                {
                    "task": str(task.name),
                    "entity_id": task.entity_id,
                    "account": task.account,
                    "attempt": task.attempt,
                    "argv": argv,
                    "submitted_at": time.time(),
                }
            )
        )
        with open(job_dir / "log", "ab") as logfile:
            self._children[name] = subprocess.Popen(
                ["/bin/sh", "-c", _JOB_SHELL, "assay-job", str(job_dir), *argv],
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,  # its own process group: cancel signals the worker too
            )
        log.info("started local job", extra={"job": name, "task_id": task.entity_id, "attempt": task.attempt})

    def status(self, name: str) -> JobStatus:
        job_dir = self.state_dir / name
        if not job_dir.is_dir():
            return JobStatus.missing(name)
        self._reap(name)
        if (job_dir / "cancelled").exists():
            return JobStatus(name, JobState.failed, "cancelled")
        code = _read_int(job_dir / "exit_code")
        if code is not None:
            if code == 0:
                return JobStatus(name, JobState.succeeded)
            return JobStatus(name, JobState.failed, _describe_exit(code))
        pid = _read_int(job_dir / "pid")
        if pid is None:
            if time.time() - job_dir.stat().st_mtime < LAUNCH_GRACE_S:
                return JobStatus(name, JobState.pending)
            return JobStatus(name, JobState.failed, "the job never started")
        if _is_job_process(pid, job_dir):
            return JobStatus(name, JobState.running)
        return JobStatus(name, JobState.failed, "the job's process vanished without an exit code (killed)")

    def statuses(self) -> dict[str, JobStatus]:
        out = {}
        for job_dir in self.state_dir.iterdir():
            if not job_dir.is_dir():
                continue
            state = self.status(job_dir.name)
            if state.state in (JobState.succeeded, JobState.failed) and self._expired(job_dir):
                shutil.rmtree(job_dir, ignore_errors=True)
                continue
            out[job_dir.name] = state
        return out

    def cancel(self, name: str) -> None:
        job_dir = self.state_dir / name
        if not job_dir.is_dir():
            return
        (job_dir / "cancelled").touch()
        pid = _read_int(job_dir / "pid")
        if pid is None or not _is_job_process(pid, job_dir):
            self._reap(name)
            return
        log.info("cancelling local job", extra={"job": name, "pid": pid})
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + CANCEL_GRACE_S
        while time.monotonic() < deadline:
            self._reap(name)
            if not _is_job_process(pid, job_dir):
                return
            time.sleep(0.05)
        _signal_group(pid, signal.SIGKILL)
        self._reap(name)

    def free_slots(self) -> int:
        live = 0
        for name in list(self._children):
            self._reap(name)
        for job_dir in self.state_dir.iterdir():
            if job_dir.is_dir() and not (job_dir / "exit_code").exists() and not (job_dir / "cancelled").exists():
                pid = _read_int(job_dir / "pid")
                if pid is None or _is_job_process(pid, job_dir):
                    live += 1
        return max(0, self.max_processes - live)

    def close(self) -> None:
        """Leaves the jobs running: they are durable, and a restarted daemon adopts them."""
        for name in list(self._children):
            self._reap(name)

    # -- helpers --

    def _reap(self, name: str) -> None:
        """Collect our own finished child, recording its exit code if its shell could not."""
        child = self._children.get(name)
        if child is None or child.poll() is None:
            return
        del self._children[name]
        exit_file = self.state_dir / name / "exit_code"
        if not exit_file.exists() and (self.state_dir / name).is_dir():
            tmp = exit_file.with_suffix(".reaped")
            tmp.write_text(str(child.returncode))
            tmp.replace(exit_file)

    def _expired(self, job_dir: Path) -> bool:
        try:
            return time.time() - (job_dir / "log").stat().st_mtime > self.ttl_s
        except FileNotFoundError:
            return time.time() - job_dir.stat().st_mtime > self.ttl_s


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _describe_exit(code: int) -> str:
    if code < 0 or code > 128:
        signum = -code if code < 0 else code - 128
        try:
            return f"killed by {signal.Signals(signum).name}"
        except ValueError:
            return f"killed by signal {signum}"
    return f"exited with code {code}"


def _is_job_process(pid: int, job_dir: Path) -> bool:
    """True when ``pid`` is alive and is this job's shell (not a recycled pid, not a zombie)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self").exists():
        try:
            return str(job_dir).encode() in cmdline.read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return False
    try:  # no /proc (macOS): alive is the best we can know
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
