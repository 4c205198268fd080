"""Idle cost: the CPU each process of the local stack uses when there is nothing to do.

Starts the whole stack (``devstack.localstack serve``, a temporary state directory, free
ports), lets it settle, then measures each process's CPU (utime + stime from
``/proc/PID/stat``, its descendants included: the emulators' JVMs run under a shell) over
a window, in three phases:

1. the stack alone: the daemon waits for hints on a streaming pull (Assay's way);
2. plus a process waiting the old way, a loop of synchronous pulls on a subscription of
   the same topic (what the daemon did before: each pull returns at once when there is
   nothing, so the loop spins, and the Pub/Sub emulator with it);
3. plus a process waiting Assay's way (``Hints.wait`` in a loop, as the daemon's sleep
   does) on another subscription: the same comparison, like for like.

Aim: idle, the daemon and each emulator under 2% of a core. ``--root DIR`` runs the stack
of another checkout (``git archive COMMIT | tar -x -C DIR``) to measure an older version.

    .venv/bin/python bench/idle_stack.py [--window 60] [--settle 20] [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.emulators import free_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
SERVICES = {  # a word of each direct child's command line -> its name in the table
    "cloud_firestore_emulator": "datastore emulator",
    "pubsub-emulator": "pubsub emulator",
    "fake-gcs-server": "fake-gcs-server",
    "--target=api": "api",
    "--target=storage_events": "storage_events",
    "-m daemon": "daemon",
}


# --- /proc --------------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError):
                continue
    return out


def cpu_seconds(pid: int, children: dict[int, list[int]]) -> float:
    """CPU time of ``pid`` and its live descendants."""
    try:
        fields = _stat(pid)
        own = (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError):
        return 0.0
    return own + sum(cpu_seconds(child, children) for child in children.get(pid, []))


def services_of(supervisor: int) -> dict[str, int]:
    names = {}
    for pid in _children().get(supervisor, []):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        for word, name in SERVICES.items():
            if word in cmdline:
                names[name] = pid
    return names


def measure(processes: dict[str, int], window_s: float, *, alone: tuple[int, ...] = ()) -> dict[str, float]:
    """Each process's share of one core over ``window_s`` (descendants included, but for
    the pids in ``alone``)."""

    def cpu(pid: int, children: dict[int, list[int]]) -> float:
        return cpu_seconds(pid, {} if pid in alone else children)

    children = _children()
    before = {n: cpu(p, children) for n, p in processes.items()}
    started = time.monotonic()
    time.sleep(window_s)
    elapsed = time.monotonic() - started
    children = _children()
    return {n: (cpu(p, children) - before[n]) / elapsed for n, p in processes.items()}


# --- the waiters --------------------------------------------------------------------------


def wait_old_way(subscription: str) -> None:
    """The daemon's wait before: a loop of synchronous pulls, 1 s timeout each."""
    from google.api_core import exceptions as gexc

    from shared.pubsub import subscriber_client
    from shared.settings import Settings

    subscriber = subscriber_client(Settings())
    while True:
        try:
            subscriber.pull(request={"subscription": subscription, "max_messages": 100}, timeout=1.0)
        except (gexc.DeadlineExceeded, gexc.RetryError):
            pass


def wait_assay_way(subscription: str) -> None:
    from shared.pubsub import Hints
    from shared.settings import Settings

    settings = Settings()
    hints = Hints(settings.model_copy(update={"hint_subscription": subscription.rsplit("/", 1)[1]}))
    hints.ensure()
    while True:
        hints.wait(timeout_s=1.0)  # as Daemon.sleep calls it


def start_waiter(way: str, env: dict[str, str], subscription: str) -> subprocess.Popen:
    from shared.pubsub import ensure_subscription, subscriber_client
    from shared.settings import Settings

    settings = Settings(project=env["ASSAY_PROJECT"], pubsub_emulator_host=env["PUBSUB_EMULATOR_HOST"])
    ensure_subscription(subscriber_client(settings), settings.project, settings.hint_topic, subscription)
    path = f"projects/{settings.project}/subscriptions/{subscription}"
    return subprocess.Popen([sys.executable, __file__, "--wait", way, path], env={**os.environ, **env})


# --- the run --------------------------------------------------------------------------------


def start_stack(state: Path, root: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    env = {**os.environ, "ASSAY_STACK_API_PORT": str(free_port()), "PYTHONPATH": str(root)}
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "devstack.localstack", "serve", "--state", str(state)],
        cwd=root,
        env=env,
        stdout=open(state / "supervisor.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env_file = state / "local.env"
    deadline = time.monotonic() + 300
    while not env_file.exists():
        if supervisor.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the stack did not start; see {state}")
        time.sleep(0.5)
    stack_env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    return supervisor, stack_env


def table(title: str, shares: dict[str, float]) -> None:
    print(f"\n{title}")
    for name, share in shares.items():
        flag = "" if share < 0.02 else "   (over 2%)"
        print(f"  {name:<22} {100 * share:6.2f}% of a core{flag}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured in each phase")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to wait after start-up")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose stack to run (default: this one)")
    parser.add_argument("--wait", nargs=2, metavar=("WAY", "SUBSCRIPTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.wait:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        (wait_old_way if args.wait[0] == "old" else wait_assay_way)(args.wait[1])
        return 0

    with tempfile.TemporaryDirectory(prefix="assay-idle-") as state_dir:
        state = Path(state_dir)
        started = time.monotonic()
        supervisor, env = start_stack(state, args.root.resolve())
        print(
            f"stack of {args.root.resolve()} up in {time.monotonic() - started:.0f}s; settling {args.settle:.0f}s, then {args.window:.0f}s a phase"
        )
        waiters: list[subprocess.Popen] = []
        try:
            time.sleep(args.settle)
            stack = {**services_of(supervisor.pid), "supervisor": supervisor.pid}
            alone = measure(stack, args.window, alone=(supervisor.pid,))
            table("1. the stack, idle:", alone)

            old = start_waiter("old", env, "idle-bench-old")
            waiters.append(old)
            time.sleep(5)
            with_old = measure({**stack, "old-way waiter": old.pid}, args.window, alone=(supervisor.pid,))
            table("2. plus a waiter looping on synchronous pulls (the daemon's wait before):", with_old)
            old.terminate()
            old.wait(timeout=30)

            new = start_waiter("assay", env, "idle-bench-new")
            waiters.append(new)
            time.sleep(5)
            with_new = measure({**stack, "Assay-way waiter": new.pid}, args.window, alone=(supervisor.pid,))
            table("3. plus a waiter on Hints.wait (a streaming pull), as the daemon now:", with_new)

            pubsub = "pubsub emulator"
            extra_old = with_old[pubsub] - alone[pubsub]
            extra_new = with_new[pubsub] - alone[pubsub]
            print("\nwhat one waiter costs, old way vs Assay's:")
            print(
                f"  the waiter itself        {100 * with_old['old-way waiter']:6.2f}% vs {100 * with_new['Assay-way waiter']:5.2f}%"
                f"  ({with_old['old-way waiter'] / max(with_new['Assay-way waiter'], 1e-4):.0f}x)"
            )
            print(f"  the Pub/Sub emulator      +{100 * extra_old:5.2f}% vs {100 * extra_new:+5.2f}%")
            over = [n for n in ("daemon", "datastore emulator", pubsub, "fake-gcs-server") if alone.get(n, 0) >= 0.02]
            print(
                f"\naim (idle: the daemon and each emulator under 2% of a core): {'met' if not over else 'NOT met: ' + ', '.join(over)}"
            )
        finally:
            for waiter in waiters:
                if waiter.poll() is None:
                    waiter.terminate()
                    waiter.wait(timeout=30)
            supervisor.terminate()
            supervisor.wait(timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
