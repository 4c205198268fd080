"""Every pattern that validates a user's value matches the whole value.

``re.match`` with a pattern ending in ``$`` accepts a trailing newline (``$`` matches just
before one), so ``"mdl_…\\n"`` passed as an id and ``"name\\n"`` as a name. Validation uses
``fullmatch``; this test finds any ``.match(`` or ``re.match(`` creeping back into the
packages that take user input.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared.apikeys import parse_key
from shared.errors import Unauthenticated
from shared.ids import is_valid_id, new_id

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "functions", "daemon", "workers", "assay")


def _match_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "match"
    ]


def test_no_validation_uses_a_prefix_match():
    found = [
        f"{p.relative_to(ROOT)}:{line}"
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        for line in _match_calls(p)
    ]
    assert found == [], "use fullmatch (a pattern's $ matches before a trailing newline): " + ", ".join(found)


def test_a_trailing_newline_makes_an_id_or_key_invalid():
    good = new_id("mdl")
    assert is_valid_id(good)
    assert not is_valid_id(good + "\n")
    key = "assay_key_" + "a" * 20 + "_" + "B" * 43
    assert parse_key(key) == ("key_" + "a" * 20, "B" * 43)
    with pytest.raises(Unauthenticated):
        parse_key(key + "\n")
