"""``python -m workers <task> <entity id> --attempt N``: run one task attempt and exit.

Only parses, builds the one settings object and the clients, and hands over to
``TaskRunner``; the exit code is the runner's (see ``workers.runner``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# A worker forks decoder and replica processes that never use gRPC. gRPC's fork handlers
# would restart its poller threads inside them, and grpcio 1.85 can abort such a child when
# the parent had calls in flight (the heartbeat's). Turned off before gRPC is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from shared.logs import extra_fields  # noqa: E402 (after the variable above)
from shared.settings import Settings
from shared.tasks import TaskName


class FieldsFormatter(logging.Formatter):
    """Appends the structured fields passed as ``extra=`` (task, entity_id, reason…) as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return line + "".join(f" {k}={v!r}" for k, v in extra_fields(record).items())


LOG_LEVEL = logging.INFO
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def log_handler() -> logging.Handler:
    """The workers' production log handler (the tests install the same one)."""
    handler = logging.StreamHandler()
    handler.setFormatter(FieldsFormatter(LOG_FORMAT))
    return handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=[str(t) for t in TaskName])
    parser.add_argument("entity_id")
    parser.add_argument("--attempt", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=LOG_LEVEL, handlers=[log_handler()])
    settings = Settings()
    # Models and processors are only ever read from local files; never reach the hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HOME", os.path.join(settings.cache_dir, "huggingface"))

    from shared.storage import Storage
    from shared.store import Store
    from workers.runner import TaskRunner

    runner = TaskRunner(
        settings=settings,
        store=Store.from_settings(settings, component="worker"),
        storage=Storage.from_settings(settings),
        task=TaskName(args.task),
        entity_id=args.entity_id,
        attempt=args.attempt,
    )
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
