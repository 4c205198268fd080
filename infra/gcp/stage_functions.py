"""Stage the Cloud Functions source: what `gcloud functions deploy --source` uploads.

Cloud Functions builds a Python function from a directory holding ``main.py`` and
``requirements.txt``. Assay's entry points live in ``functions/main.py`` and import
``shared/``, so the staged directory holds both packages, a ``main.py`` that re-exports the
entry points, and the requirements of the ``api`` extra read from ``pyproject.toml`` (the one
list of dependencies; nothing here repeats it).

    python infra/gcp/stage_functions.py build/functions

Standard library only: it runs in a bare ``python`` image in Cloud Build.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("functions", "shared")
ENTRY_POINTS = ("api", "storage_events")
EXTRA = "api"

SHIM = '''"""Cloud Functions entry points, re-exported from the functions package (staged beside)."""

from functions.main import {names}  # noqa: F401
'''


def requirements(pyproject: dict, extra: str) -> list[str]:
    """The project's core dependencies plus ``extra``, with ``assay[...]`` self-references expanded.

    Raises KeyError for an extra the project does not declare.
    """
    project = pyproject["project"]
    name = project["name"]
    extras = project.get("optional-dependencies", {})
    self_ref = re.compile(rf"^{re.escape(name)}\[([^\]]+)\]$")
    out: list[str] = []
    pending = list(project.get("dependencies", [])) + list(extras[extra])
    seen_extras = {extra}
    while pending:
        req = pending.pop(0).strip()
        match = self_ref.match(req)
        if match:
            for inner in (e.strip() for e in match.group(1).split(",")):
                if inner not in seen_extras:
                    seen_extras.add(inner)
                    pending.extend(extras[inner])
        elif req not in out:
            out.append(req)
    return out


def stage(out: Path, *, root: Path = ROOT) -> Path:
    """Write the function source into ``out`` (replacing it) and return it."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(root / package, out / package, ignore=ignore)
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    (out / "requirements.txt").write_text("\n".join(requirements(pyproject, EXTRA)) + "\n")
    (out / "main.py").write_text(SHIM.format(names=", ".join(ENTRY_POINTS)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write (replaced if it exists)")
    args = parser.parse_args(argv)
    staged = stage(args.out)
    print(f"staged {', '.join(PACKAGES)} and main.py into {staged}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
