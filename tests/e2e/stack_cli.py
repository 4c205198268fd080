"""The CLI run as a user runs it, against the e2e tests' stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cli(stack: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``assay ARGS`` in a fresh process with the stack's URL and key, and a config file of its own."""
    env = {
        **os.environ,
        "ASSAY_URL": stack["ASSAY_URL"],
        "ASSAY_API_KEY": stack["ASSAY_API_KEY"],
        "ASSAY_CONFIG": str(Path(stack["STATE"]) / "cli-config.json"),
    }
    return subprocess.run([sys.executable, "-m", "assay.cli", *args], env=env, capture_output=True, text=True, timeout=600)
