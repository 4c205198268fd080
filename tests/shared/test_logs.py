"""Server-side logs are JSON lines that Cloud Logging reads: severity, message and the
structured fields passed as ``extra=``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from shared.logs import JsonFormatter


def test_a_record_becomes_one_json_line_with_its_fields():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("assay.test", logging.WARNING, __file__, 1, "claimed %s", ("evl_1",), sys.exc_info())
    record.account = "acc_1"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["severity"] == "WARNING" and out["logger"] == "assay.test" and out["message"] == "claimed evl_1"
    assert out["account"] == "acc_1"
    assert "ValueError: boom" in out["exception"]


def run(code: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]


def test_configure_logging_writes_json_at_the_level_asked():
    lines = run(
        "import logging; from shared.logs import configure_logging; configure_logging('INFO');"
        "logging.getLogger('x').debug('hidden'); logging.getLogger('x').info('shown', extra={'task': 't1'})"
    )
    assert [(line["message"], line["task"]) for line in lines] == [("shown", "t1")]


def test_configure_logging_leaves_a_configured_root_logger_alone():
    lines = run(
        "import logging, sys; logging.basicConfig(stream=sys.stderr, format='plain %(message)s', level='INFO');"
        "from shared.logs import configure_logging; configure_logging('DEBUG'); logging.getLogger('x').info('once')"
    )
    assert lines == []
