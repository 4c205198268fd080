"""The whole system on one machine: ``make up`` / ``make down`` / ``make reset``.

``python -m devstack.localstack up`` starts a supervisor in the background and returns once
everything answers: the emulators (Firestore in Datastore mode, Pub/Sub, fake-gcs-server
publishing object notifications), the ``api`` function and the ``storage_events``
function under functions-framework (object notifications reach it through a Pub/Sub push
subscription, as Eventarc would deliver them), and the daemon with the LocalBackend. It
writes ``ASSAY_URL`` and an admin ``ASSAY_API_KEY`` to ``<state>/local.env``. ``down``
stops the supervisor, which stops everything it started.

State outlives the stack: entities and objects are kept under ``<state>/data`` (see
``devstack.emulators``), and so is the local account's admin key, so the next ``up`` comes
back with the same data and the same key. ``reset`` stops the stack and deletes the data.

The supervisor restarts a crashed ``api``, ``storage_events`` or ``daemon`` process with
capped exponential backoff (each restart logged to ``<state>/logs/stack.log``); a process
that ran ``STABLE_AFTER_S`` before dying starts again from the shortest delay. An emulator
that dies stops the stack: the others' state depends on it (the Datastore is saved every
``SAVE_EVERY_S`` as well as at ``down``).

It starts ``functions`` and ``daemon`` as processes; it imports neither.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devstack.emulators import Emulators, Process, free_port
from shared.admin import create_account
from shared.apikeys import authenticate
from shared.errors import Unauthenticated
from shared.logs import configure_logging
from shared.pubsub import Hints
from shared.settings import Settings
from shared.storage import Storage
from shared.store import Store

log = logging.getLogger("localstack")

DEFAULT_STATE = Path(".assay")
# Restart delays: 1, 2, 4, … seconds, at most MAX_BACKOFF_S; reset once a process has run
# STABLE_AFTER_S.
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
STABLE_AFTER_S = 60.0
SAVE_EVERY_S = 60.0
# What `make reset` deletes: the data, and the job and cache directories that refer to it.
RESET_PATHS = ("data", "jobs", "cache", "local.env", "daemon.alive")


def _port(env: str, default: int) -> int:
    value = os.environ.get(env)
    return int(value) if value else default


def _pubsub(host: str, method: str, path: str, body: dict | None = None) -> None:
    req = urllib.request.Request(
        f"http://{host}/v1/{path}",
        data=json.dumps(body or {}).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        urllib.request.urlopen(req, timeout=10).close()
    except urllib.error.HTTPError as e:
        if e.code != 409:
            raise


@dataclass
class Supervised:
    """A service process the supervisor keeps running."""

    process: Process
    started_at: float = 0.0  # monotonic
    restarts: int = 0  # in a row, without a stable run between
    restart_at: float | None = None  # monotonic; set while it waits out its backoff

    def start(self) -> None:
        self.process.start()
        self.started_at = time.monotonic()

    def check(self, now: float) -> None:
        """Notice a death and schedule the restart; restart once the backoff has passed."""
        popen = self.process.popen
        if self.restart_at is None:
            if popen is None or popen.poll() is None:
                return
            if now - self.started_at >= STABLE_AFTER_S:
                self.restarts = 0
            delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2**self.restarts)
            self.restart_at = now + delay
            log.warning(
                f"{self.process.name} exited with status {popen.returncode}; restarting in {delay:.0f}s",
                extra={
                    "service": self.process.name,
                    "status": popen.returncode,
                    "restart_in_s": delay,
                    "restarts": self.restarts,
                    "log": str(self.process.log_path),
                },
            )
        elif now >= self.restart_at:
            self.restart_at = None
            self.restarts += 1
            self.start()
            pid = self.process.popen.pid if self.process.popen is not None else None
            log.info(
                f"{self.process.name} restarted (pid {pid})",
                extra={"service": self.process.name, "pid": pid, "restarts": self.restarts},
            )


def local_admin_key(store: Store, data_dir: Path) -> str:
    """The local account's admin key: the one kept in ``data_dir`` while it still works
    (the data came back with it), else a new account's, kept there for the next start."""
    path = data_dir / "admin.json"
    if path.exists():
        kept = json.loads(path.read_text())
        try:
            authenticate(store, f"Bearer {kept['api_key']}")
            return kept["api_key"]
        except Unauthenticated:
            log.warning("the kept admin key no longer works; creating a new local account")
    account, api_key = create_account(store, "local")
    path.write_text(json.dumps({"account": account.id, "api_key": api_key}))
    os.chmod(path, 0o600)
    return api_key


def serve(state: Path) -> int:
    """Run the stack in the foreground until SIGTERM/SIGINT; tear everything down after."""
    configure_logging(logging.INFO)
    state.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    env_file = state / "local.env"
    env_file.unlink(missing_ok=True)

    data_dir = state / "data"
    emulators = Emulators(
        state,
        datastore_port=_port("ASSAY_STACK_DATASTORE_PORT", 0),
        pubsub_port=_port("ASSAY_STACK_PUBSUB_PORT", 0),
        storage_port=_port("ASSAY_STACK_STORAGE_PORT", 0),
        data_dir=data_dir,
    )
    api_port = _port("ASSAY_STACK_API_PORT", 8080)
    events_port = _port("ASSAY_STACK_EVENTS_PORT", 0) or free_port()
    services: list[Supervised] = []
    try:
        emulators.start()
        env = {
            **emulators.env(),
            "ASSAY_BUCKET": "assay-local",
            "ASSAY_CACHE_DIR": str((state / "cache").resolve()),
            "ASSAY_DAEMON_BACKEND": "local",
            "ASSAY_DAEMON_LOCAL_STATE_DIR": str((state / "jobs").resolve()),
            "ASSAY_DAEMON_LOCAL_MAX_PROCESSES": "2",
            # Hints wake the daemon for all the API and storage events create; the poll only
            # catches what nothing announces (a worker done, a lease expired). Each idle turn
            # is ~14 Datastore calls: every 2 s that kept the emulator at ~6% of a core.
            "ASSAY_DAEMON_POLL_INTERVAL_S": os.environ.get("ASSAY_DAEMON_POLL_INTERVAL_S", "10"),
            # A webhook receiver on this machine (plain http to loopback) is fine locally.
            "ASSAY_WEBHOOK_ALLOW_HTTP_LOOPBACK": "true",
            # Frequent heartbeats so progress bars move on short local evaluations.
            "ASSAY_HEARTBEAT_SECONDS": "1",
            "ASSAY_DAEMON_HEALTH_FILE": str((state / "daemon.alive").resolve()),
            "HF_HOME": str((state / "huggingface").resolve()),
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        # What `infra/gcp/setup.sh` creates in production: the bucket, the hint topic and
        # the daemon's subscription.
        settings = Settings(
            project=emulators.project,
            bucket=env["ASSAY_BUCKET"],
            storage_topic=emulators.storage_topic,
            datastore_emulator_host=emulators.datastore_host,
            pubsub_emulator_host=emulators.pubsub_host,
            storage_emulator_host=emulators.storage_host,
        )
        Storage.from_settings(settings).ensure_bucket()
        Hints(settings).ensure()
        python = sys.executable
        bin_dir = Path(python).parent
        logs = state / "logs"
        api = Process(
            "api",
            [
                str(bin_dir / "functions-framework"),
                "--target=api",
                "--host=127.0.0.1",
                f"--port={api_port}",
                "--source=functions/main.py",
            ],
            f"http://127.0.0.1:{api_port}/v1/health",
            logs / "api.log",
            env=env,
        )
        events = Process(
            "storage_events",
            [
                str(bin_dir / "functions-framework"),
                "--target=storage_events",
                "--signature-type=cloudevent",
                "--host=127.0.0.1",
                f"--port={events_port}",
                "--source=functions/main.py",
            ],
            f"http://127.0.0.1:{events_port}/",
            logs / "storage_events.log",
            env=env,
        )
        services = [Supervised(api), Supervised(events)]
        for service in services:
            service.start()
        api.wait_ready(timeout_s=120)
        _wait_listening(events, events_port)
        # Eventarc's role locally: push object notifications to storage_events.
        _pubsub(
            emulators.pubsub_host,
            "PUT",
            f"projects/{emulators.project}/subscriptions/storage-events-push",
            {
                "topic": f"projects/{emulators.project}/topics/{emulators.storage_topic}",
                "pushConfig": {"pushEndpoint": f"http://127.0.0.1:{events_port}/"},
                "ackDeadlineSeconds": 60,
            },
        )
        api_key = local_admin_key(Store.from_settings(settings), data_dir)
        daemon = Supervised(Process("daemon", [python, "-m", "daemon"], "", logs / "daemon.log", env=env))
        services.append(daemon)
        daemon.start()
        env_file.write_text(
            f"ASSAY_URL=http://127.0.0.1:{api_port}\nASSAY_API_KEY={api_key}\n"
            + "".join(f"{k}={v}\n" for k, v in emulators.env().items())
        )
        os.chmod(env_file, 0o600)
        log.info("stack up", extra={"url": f"http://127.0.0.1:{api_port}", "state": str(state)})
        return _supervise(services, emulators, stop)
    finally:
        env_file.unlink(missing_ok=True)
        for service in reversed(services):
            service.process.stop()
        emulators.stop()


def _supervise(services: list[Supervised], emulators: Emulators, stop: threading.Event) -> int:
    """Until asked to stop: restart dead services, save the Datastore now and then.
    Returns 0 when asked to stop, 1 when an emulator died."""
    next_save = time.monotonic() + SAVE_EVERY_S
    while not stop.wait(1.0):
        now = time.monotonic()
        dead = [p.name for p in emulators.processes if p.popen is not None and p.popen.poll() is not None]
        if dead:
            log.error(f"emulator {', '.join(dead)} exited; stopping the stack", extra={"emulators": dead})
            return 1
        for service in services:
            service.check(now)
        if now >= next_save:
            next_save = now + SAVE_EVERY_S
            try:
                emulators.save_datastore()
            except Exception:  # noqa: BLE001 — the previous snapshot stays; the next save may work
                log.warning("could not save the datastore", exc_info=True)
    log.info("stopping: asked to")
    return 0


def _wait_listening(process: Process, port: int, timeout_s: float = 120.0) -> None:
    """Any HTTP answer (even a 4xx to an empty GET) means the server is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.popen is not None and process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited early; see {process.log_path}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"{process.name} not listening after {timeout_s}s")


def up(state: Path, timeout_s: float = 180.0) -> int:
    pid_file = state / "stack.pid"
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        print(f"stack already running (pid {pid_file.read_text().strip()}); `make down` first")
        return 0
    state.mkdir(parents=True, exist_ok=True)
    (state / "logs").mkdir(exist_ok=True)
    log = open(state / "logs" / "stack.log", "ab")
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "devstack.localstack", "serve", "--state", str(state)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    pid_file.write_text(str(supervisor.pid))
    env_file = state / "local.env"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if env_file.exists():
            print(f"stack up; settings in {env_file}:")
            print("".join(line + "\n" for line in env_file.read_text().splitlines()[:1]), end="")
            return 0
        if supervisor.poll() is not None:
            print(f"stack failed to start; see {state / 'logs'}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    print(f"stack not ready after {timeout_s}s; see {state / 'logs'}", file=sys.stderr)
    down(state)
    return 1


def down(state: Path) -> int:
    pid_file = state / "stack.pid"
    if not pid_file.exists():
        print("stack not running")
        return 0
    pid = int(pid_file.read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    print("stack down")
    return 0


def reset(state: Path) -> int:
    """Stop the stack and delete its data (entities, objects, the local admin key), jobs
    and caches; logs stay."""
    down(state)
    for name in RESET_PATHS:
        path = state / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    print(f"stack data deleted from {state}")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.localstack", description="run Assay on one machine")
    parser.add_argument("command", choices=["up", "down", "reset", "serve"])
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="directory for logs, pids and settings")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.state)
    if args.command == "up":
        return up(args.state)
    if args.command == "reset":
        return reset(args.state)
    return down(args.state)


if __name__ == "__main__":
    sys.exit(main())
