"""The whole system on one machine: ``make up`` / ``make down``.

``python -m shared.localstack up`` starts a supervisor in the background and returns once
everything answers: the emulators (Firestore in Datastore mode, Pub/Sub, fake-gcs-server
publishing object notifications), the ``api`` function and the ``storage_events``
function under functions-framework (object notifications reach it through a Pub/Sub push
subscription, as Eventarc would deliver them), and the daemon with the LocalBackend. It
bootstraps an account and writes ``ASSAY_URL`` and an admin ``ASSAY_API_KEY`` to
``<state>/local.env``. ``down`` stops the supervisor, which stops everything it started.

It starts ``functions`` and ``daemon`` as processes; it imports neither.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from shared.emulators import Emulators, Process, free_port
from shared.pubsub import Hints
from shared.settings import Settings
from shared.storage import Storage

DEFAULT_STATE = Path(".assay")


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


def serve(state: Path) -> int:
    """Run the stack in the foreground until SIGTERM/SIGINT; tear everything down after."""
    state.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    env_file = state / "local.env"
    env_file.unlink(missing_ok=True)

    emulators = Emulators(
        state,
        datastore_port=_port("ASSAY_STACK_DATASTORE_PORT", 0),
        pubsub_port=_port("ASSAY_STACK_PUBSUB_PORT", 0),
        storage_port=_port("ASSAY_STACK_STORAGE_PORT", 0),
    )
    api_port = _port("ASSAY_STACK_API_PORT", 8080)
    events_port = _port("ASSAY_STACK_EVENTS_PORT", 0) or free_port()
    services: list[Process] = []
    try:
        emulators.start()
        env = {
            **emulators.env(),
            "ASSAY_BUCKET": "assay-local",
            "ASSAY_CACHE_DIR": str((state / "cache").resolve()),
            "ASSAY_DAEMON_BACKEND": "local",
            "ASSAY_DAEMON_LOCAL_STATE_DIR": str((state / "jobs").resolve()),
            "ASSAY_DAEMON_LOCAL_MAX_PROCESSES": "2",
            "ASSAY_DAEMON_POLL_INTERVAL_S": "2",
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
        services = [
            Process(
                "api",
                [str(bin_dir / "functions-framework"), "--target=api", "--host=127.0.0.1", f"--port={api_port}",
                 "--source=functions/main.py"],
                f"http://127.0.0.1:{api_port}/v1/health",
                logs / "api.log",
                env=env,
            ),
            Process(
                "storage_events",
                [str(bin_dir / "functions-framework"), "--target=storage_events", "--signature-type=cloudevent",
                 "--host=127.0.0.1", f"--port={events_port}", "--source=functions/main.py"],
                f"http://127.0.0.1:{events_port}/",
                logs / "storage_events.log",
                env=env,
            ),
        ]
        for p in services:
            p.start()
        for p in services:
            p.wait_ready(timeout_s=120) if p.name == "api" else _wait_listening(p, events_port)
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
        bootstrap = subprocess.run(
            [python, "-m", "shared.admin", "create-account", "local", "--json"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        api_key = json.loads(bootstrap.stdout)["api_key"]
        daemon = Process("daemon", [python, "-m", "daemon"], "", logs / "daemon.log", env=env)
        services.append(daemon)
        daemon.start()
        env_file.write_text(
            f"ASSAY_URL=http://127.0.0.1:{api_port}\nASSAY_API_KEY={api_key}\n"
            + "".join(f"{k}={v}\n" for k, v in emulators.env().items())
        )
        os.chmod(env_file, 0o600)
        while not stop.wait(1.0):
            dead = [p.name for p in services if p.popen is not None and p.popen.poll() is not None]
            if dead:
                print(f"stack: {', '.join(dead)} exited; stopping (logs in {logs})", file=sys.stderr)
                return 1
        return 0
    finally:
        env_file.unlink(missing_ok=True)
        for p in reversed(services):
            p.stop()
        emulators.stop()


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
        [sys.executable, "-m", "shared.localstack", "serve", "--state", str(state)],
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
    parser = argparse.ArgumentParser(prog="python -m shared.localstack", description="run Assay on one machine")
    parser.add_argument("command", choices=["up", "down", "serve"])
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="directory for logs, pids and settings")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.state)
    if args.command == "up":
        return up(args.state)
    return down(args.state)


if __name__ == "__main__":
    sys.exit(main())
