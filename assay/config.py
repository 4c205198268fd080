"""Where the SDK finds its URL and API key: arguments, then ``ASSAY_URL`` /
``ASSAY_API_KEY``, then the config file ``assay login`` writes (mode 0600)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def config_path() -> Path:
    base = os.environ.get("ASSAY_CONFIG") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "assay", "config.json"
    )
    return Path(base)


def load() -> dict[str, str]:
    path = config_path()
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def save(url: str, api_key: str) -> Path:
    """Write the config readable only by the user (created 0600, never widened)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "api_key": api_key}, f)
    os.chmod(path, 0o600)
    return path


def resolve(url: str | None, api_key: str | None) -> tuple[str, str | None]:
    stored = load()
    url = url or os.environ.get("ASSAY_URL") or stored.get("url")
    api_key = api_key or os.environ.get("ASSAY_API_KEY") or stored.get("api_key")
    if not url:
        raise ValueError("no Assay URL: pass url=, set ASSAY_URL, or run `assay login`")
    return url, api_key
