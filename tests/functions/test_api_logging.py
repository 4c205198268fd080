"""The entry points set up logging on their first request: JSON lines on stderr with the
request's structured fields, so Cloud Logging shows INFO lines and their fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SERVE_ONE_REQUEST = """
import functions_framework
api = functions_framework.create_app(target="api", source="functions/main.py", signature_type="http").test_client()
assert api.get("/v1/no-such-route").status_code == 404
"""


def test_the_api_logs_json_lines_with_the_requests_fields(entry_point_env):
    done = subprocess.run(
        [sys.executable, "-c", SERVE_ONE_REQUEST],
        cwd=ROOT,
        env={**os.environ, **entry_point_env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    refused = [line for line in lines if line["message"].startswith("request refused")]
    assert len(refused) == 1, done.stderr
    assert refused[0]["severity"] == "INFO"
    assert refused[0]["path"] == "/v1/no-such-route" and refused[0]["method"] == "GET"
    assert len(refused[0]["request_id"]) == 32
