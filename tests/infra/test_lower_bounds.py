"""``testing/constraints-3.11.txt`` pins every dependency in ``pyproject.toml`` to its
declared minimum, so the oldest versions the project claims to support can be installed
(``pip install -c testing/constraints-3.11.txt -e '.[dev]'``) and tried.

The floors are read by google-cloud-testutils' lower-bound checker (``_lower_bound``, what
its ``lower-bound-checker`` command runs). Its command reads the installed package's
metadata and stops at an extra that names this project (``assay[cloud]``), so this test
hands it the requirements from ``pyproject.toml`` itself, without those self-references.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from test_utils.lower_bound_checker.lower_bound_checker import _lower_bound, _parse_requirements_file

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "testing" / "constraints-3.11.txt"


def declared_floors() -> dict[str, str]:
    """Each dependency (core and every extra) and its minimum version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    floors: dict[str, str] = {}
    for text in texts:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
            continue  # another extra of this project, whose own requirements are listed too
        # The checker reads `>=` alone or with a `<` cap; an inclusive cap (`<=`, torch's)
        # says nothing about the floor, so it is left out here.
        floor_only = Requirement(requirement.name + ",".join(str(s) for s in requirement.specifier if s.operator != "<="))
        floor = _lower_bound(floor_only)
        name = canonicalize_name(requirement.name)
        assert floors.setdefault(name, floor) == floor, f"{name} has two minimum versions: {floors[name]} and {floor}"
    return dict(sorted(floors.items()))


def test_the_constraints_file_pins_every_dependency_to_its_declared_minimum():
    expected = declared_floors()
    pinned = {}
    for requirement in _parse_requirements_file(str(CONSTRAINTS)):
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{requirement}: a constraint pins one version"
        pinned[canonicalize_name(requirement.name)] = spec.version
    content = "".join(f"{name}=={version}\n" for name, version in expected.items())
    as_versions = {name: Version(v) for name, v in expected.items()}
    assert {name: Version(v) for name, v in pinned.items()} == as_versions, (
        f"write this to {CONSTRAINTS.relative_to(ROOT)}:\n{content}"
    )
