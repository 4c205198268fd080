"""Logging for the server-side processes: one JSON object a line, as Cloud Logging reads
it (``severity`` and ``message``), with the structured fields a call passes as ``extra=``
(task id, account, request id…) beside them."""

from __future__ import annotations

import json
import logging

# The attributes every LogRecord has; anything else on a record came from ``extra=``. A
# logging call whose ``extra=`` names one of these raises KeyError (tests/shared scans the
# code for that).
RESERVED_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def extra_fields(record: logging.LogRecord) -> dict:
    """The structured fields a logging call passed as ``extra=``."""
    return {k: v for k, v in vars(record).items() if k not in RESERVED_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the structured fields passed as ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(extra_fields(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str | int) -> None:
    """JSON lines on stderr from the root logger at ``level``, unless the root logger has
    handlers already (a test runner's, or functions-framework's execution-id logging):
    those are left as they are."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler])
