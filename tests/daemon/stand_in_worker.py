"""A stand-in for ``python -m workers``: keeps the worker's side of the contract
(shared/tasks.py) without doing the work, so the daemon's tests run in seconds.

Run as ``python stand_in_worker.py -m workers <task> <entity id> --attempt N``. It records
each run by appending ``<task> <attempt>`` to ``$STANDIN_RUNS/<entity id>``, then, as the
entity's ``standin`` label says:

- ``ok`` (default): admitted → running (evaluations), heartbeat for ``standin-seconds``,
  write a result object, then report success;
- ``die``: exit 3 without reporting (after moving to running);
- ``die-once``: die on attempt 1, succeed afterwards;
- ``hang``: move to running, then neither heartbeat nor exit.

A ``standin-once`` label makes ``standin-seconds`` apply to the first attempt only.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

from shared.entities import KINDS, Dataset, Evaluation, utcnow
from shared.settings import Settings
from shared.storage import Storage, prediction_shard
from shared.store import ANY_ACCOUNT, Store
from shared.tasks import KIND_FOR_TASK, TaskName


def main(argv: list[str]) -> int:
    if argv[:2] == ["-m", "workers"]:
        argv = argv[2:]
    task, entity_id, _, attempt_text = argv
    attempt = int(attempt_text)
    runs = Path(os.environ["STANDIN_RUNS"])
    runs.mkdir(parents=True, exist_ok=True)
    with open(runs / entity_id, "a") as f:
        f.write(f"{task} {attempt}\n")

    settings = Settings()
    store = Store.from_settings(settings, component="worker")
    cls = KINDS[KIND_FOR_TASK[TaskName(task)]]
    entity = store.get(cls, entity_id, account=ANY_ACCOUNT)
    behaviour = entity.labels.get("standin", "ok")
    seconds = float(entity.labels.get("standin-seconds", "0"))
    if entity.labels.get("standin-once") and attempt > 1:
        seconds = 0.0
    mine = lambda current: current.attempts == attempt  # noqa: E731
    lease = lambda: utcnow() + dt.timedelta(seconds=settings.lease_seconds)  # noqa: E731
    active = "verifying"
    if cls is Evaluation:
        store.transition(
            cls,
            entity_id,
            account=ANY_ACCOUNT,
            expected="admitted",
            to="running",
            check=mine,
            started_at=utcnow(),
            heartbeat_at=utcnow(),
            lease_expires_at=lease(),
        )
        active = "running"
    if behaviour == "die" or (behaviour == "die-once" and attempt == 1):
        return 3
    if behaviour == "hang":
        time.sleep(3600)
    if cls is Evaluation:
        Storage.from_settings(settings).write_bytes(prediction_shard(entity_id, 0), b"stand-in predictions")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(settings.heartbeat_seconds, max(0.0, deadline - time.monotonic())))
        store.update(
            cls, entity_id, account=ANY_ACCOUNT, expected=active, check=mine, heartbeat_at=utcnow(), lease_expires_at=lease()
        )
    final = {"summary": {"accuracy": 1.0}} if cls is Evaluation else {"digest": "sha256:stand-in"}
    if cls is Dataset:
        final["splits"] = {"test": 10}
    done = "complete" if cls is Evaluation else "ready"
    store.transition(
        cls,
        entity_id,
        account=ANY_ACCOUNT,
        expected=active,
        to=done,
        check=mine,
        finished_at=utcnow(),
        lease_expires_at=None,
        **final,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
