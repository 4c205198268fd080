"""``python -m daemon``: build the settings, the clients and the backend; run the loop.

``python -m daemon --check-health`` is the liveness probe: it exits 0 when the health
file was touched within ``ASSAY_DAEMON_HEALTH_MAX_AGE_S`` seconds, 1 otherwise. The
settings and their environment names are listed in ``daemon/settings.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

# The LocalBackend forks worker processes (fork, then exec). gRPC's fork handlers would
# restart its poller threads in the child before the exec, and grpcio 1.85 can abort such a
# child while the parent has calls in flight. Turned off before gRPC is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from daemon.context import Context  # noqa: E402 (after the variable above)
from daemon.environment import worker_environment
from daemon.loop import Daemon, Exit
from daemon.settings import DaemonSettings
from shared.logs import configure_logging
from shared.pubsub import Hints
from shared.settings import Settings
from shared.storage import Storage
from shared.store import Store

log = logging.getLogger("daemon")


def build_backend(settings: Settings, daemon: DaemonSettings, *, base_env: dict[str, str]):
    env = worker_environment(settings)
    if daemon.backend == "kubernetes":
        from daemon.kubernetes_backend import KubernetesBackend, api_client_from_settings

        return KubernetesBackend(daemon, api_client=api_client_from_settings(daemon), env=env)
    from daemon.local_backend import LocalBackend

    return LocalBackend(
        state_dir=daemon.local_state_dir,
        command=daemon.local_command or [sys.executable],
        env={**base_env, **env},
        max_processes=daemon.local_max_processes,
        ttl_s=daemon.job_ttl_s,
    )


def check_health(daemon: DaemonSettings) -> int:
    if not daemon.health_file:
        return 0
    try:
        age = time.time() - Path(daemon.health_file).stat().st_mtime
    except FileNotFoundError:
        print("no health file yet", file=sys.stderr)
        return 1
    if age > daemon.health_max_age_s:
        print(f"last good turn {age:.0f}s ago", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon", description=__doc__.splitlines()[0])
    parser.add_argument("--check-health", action="store_true", help="liveness probe: is the last good turn recent?")
    args = parser.parse_args(argv)

    settings = Settings()
    daemon_settings = DaemonSettings()
    if args.check_health:
        return check_health(daemon_settings)

    configure_logging(daemon_settings.log_level)
    if daemon_settings.job_ttl_s < settings.lease_seconds:
        log.warning("job_ttl_s is shorter than the lease: a finished job may vanish before it is seen")

    store = Store.from_settings(settings, component="daemon")
    storage = Storage.from_settings(settings)
    backend = build_backend(settings, daemon_settings, base_env=dict(os.environ))
    daemon = Daemon(Context(settings, daemon_settings, store, storage, backend), hints=Hints(settings))

    def on_signal(signum, _frame):
        log.info("signal received; stopping after this turn", extra={"signal": signal.Signals(signum).name})
        daemon.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return 0 if daemon.run() == Exit.stopped else 1


if __name__ == "__main__":
    sys.exit(main())
