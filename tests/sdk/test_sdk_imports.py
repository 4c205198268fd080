"""The SDK installs without the server: importing it loads none of the server's heavy
dependencies, and of ``shared`` only the wire models and the errors.

import-linter (``pyproject.toml``) checks the import graph; this checks what a fresh
interpreter really loads, in its own process so the test session's imports do not count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Server-side packages `pip install 'assay[sdk]'` does not install. pyarrow and pandas are
# in the `sdk` extra, but only a results download needs them, so they load only then.
SERVER_ONLY = (
    "torch",
    "transformers",
    "google.cloud",
    "google.api_core",
    "pyarrow",
    "pandas",
    "flask",
    "duckdb",
    "kubernetes",
    "grpc",
)
# What the SDK may use of shared: the wire models, the errors, and what those import.
WIRE = {
    "shared",
    "shared.api",
    "shared.results_api",
    "shared.errors",
    "shared.entities",
    "shared.events",
    "shared.ids",
    "shared.webhooks",
    "shared.metrics",
    "shared.summaries",
    "shared.modeltasks",
    "shared.modeltasks.base",
    "shared.modeltasks.image_classification",
    "shared.modeltasks.text_classification",
    "shared.modeltasks.text_generation",
}

# Modules loaded before the import are the interpreter's own (a site-packages .pth file
# may register the empty ``google.cloud`` namespace at start-up): only new ones count.
PROBE = """
import json, sys
before = set(sys.modules)
import assay, assay.client, assay.cli
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def loaded_by_importing_the_sdk() -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_importing_the_sdk_loads_no_server_dependency_and_only_the_wire_models():
    loaded = loaded_by_importing_the_sdk()
    heavy = sorted(m for m in loaded if any(m == p or m.startswith(p + ".") for p in SERVER_ONLY))
    assert heavy == []
    assert {m for m in loaded if m.split(".")[0] == "shared"} <= WIRE
    assert not any(m.split(".")[0] in {"functions", "daemon", "workers", "devstack"} for m in loaded)
