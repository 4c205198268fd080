"""No logging call passes a reserved LogRecord attribute in ``extra=``.

``logging`` raises ``KeyError`` from ``makeRecord`` when ``extra`` names an attribute every
record has (``message``, ``name``, ``args``…), and only when the level is enabled: a test
run at WARNING never sees it, production at INFO does (a worker's every refusal once ended
``internal_error (KeyError)`` that way). So the code is scanned, not run: every ``extra=``
in every Python file of the repository, with the keys of the dicts it is built from, as
far as they can be followed statically (literals, ``dict(...)``, ``**`` unpacking, names
and attributes assigned a dict in the same module, functions of the module returning one).
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

from shared.logs import RESERVED_ATTRIBUTES

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", ".cache", ".assay", "node_modules", "build", "dist", "__pycache__"}


def _source_files() -> list[Path]:
    return sorted(
        p
        for p in ROOT.rglob("*.py")
        if not any(part in SKIP_DIRS or part.startswith(".") for part in p.relative_to(ROOT).parts[:-1])
    )


def _target_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr  # self.fields, ctx.fields: matched by attribute name
    return None


class _Module:
    """The dict-valued assignments and functions of one module, to follow ``extra=`` values."""

    def __init__(self, tree: ast.Module):
        self.assigned: dict[str, list[ast.AST]] = {}
        self.returns: dict[str, list[ast.AST]] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if (name := _target_name(target)) is not None:
                        self.assigned.setdefault(name, []).append(node.value)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Return) and inner.value is not None:
                        self.returns.setdefault(node.name, []).append(inner.value)

    def keys(self, node: ast.AST, seen: frozenset[str] = frozenset()) -> set[str]:
        """Every string key the dict built by ``node`` may hold, as far as it can be followed."""
        if isinstance(node, ast.Dict):
            out: set[str] = set()
            for key, value in zip(node.keys, node.values):
                if key is None:  # {**other}
                    out |= self.keys(value, seen)
                elif isinstance(key, ast.Constant) and isinstance(key.value, str):
                    out.add(key.value)
            return out
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self.keys(node.left, seen) | self.keys(node.right, seen)
        if isinstance(node, ast.Call):
            callee = _target_name(node.func)
            if callee == "dict":
                out = {kw.arg for kw in node.keywords if kw.arg is not None}
                for kw in node.keywords:
                    if kw.arg is None:
                        out |= self.keys(kw.value, seen)
                for arg in node.args:
                    out |= self.keys(arg, seen)
                return out
            if callee is not None and callee not in seen:
                return set().union(*(self.keys(v, seen | {callee}) for v in self.returns.get(callee, [])))
            return set()
        if (name := _target_name(node)) is not None and name not in seen:
            return set().union(*(self.keys(v, seen | {name}) for v in self.assigned.get(name, [])))
        return set()


def extra_keys(source: str) -> list[tuple[int, set[str]]]:
    """(line, keys) of every call passing ``extra=`` in ``source``."""
    tree = ast.parse(source)
    module = _Module(tree)
    return [
        (node.lineno, module.keys(kw.value))
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == "extra"
    ]


def test_the_reserved_set_is_what_logging_refuses():
    logger = logging.getLogger("assay.test.reserved")
    for key in ("message", "asctime", "name", "args", "msg", "levelname", "process", "taskName"):
        if key not in RESERVED_ATTRIBUTES:
            continue  # taskName exists from Python 3.12 on
        try:
            logger.makeRecord(logger.name, logging.INFO, "f", 1, "m", (), None, extra={key: 1})
        except KeyError:
            continue
        raise AssertionError(f"logging accepted {key!r} in extra")
    assert {"message", "asctime", "name", "args", "msg", "levelname", "process"} <= RESERVED_ATTRIBUTES


def test_the_scanner_follows_the_ways_extra_is_built():
    source = """
import logging
log = logging.getLogger(__name__)
def fields(entity):
    return {"task": 1, "name": entity}
class Runner:
    def __init__(self):
        self.fields = {"entity_id": 1, "args": 2}
    def run(self, e):
        log.info("a", extra={"message": e})
        log.info("b", extra={**self.fields, "reason": 1})
        log.info("c", extra=dict(msg=1, **fields(e)))
        base = {"levelname": 1}
        log.info("d", extra=base | {"fine": 2})
"""
    found = dict(extra_keys(source))
    assert [sorted(k & RESERVED_ATTRIBUTES) for _, k in sorted(found.items())] == [
        ["message"],
        ["args"],
        ["msg", "name"],
        ["levelname"],
    ]


def test_no_logging_call_passes_a_reserved_attribute_in_extra():
    files = _source_files()
    assert any(p.parts[-2:] == ("workers", "runner.py") for p in files)  # the scan reaches the packages
    offences, calls, followed = [], 0, 0
    for path in files:
        for line, keys in extra_keys(path.read_text(encoding="utf-8")):
            calls += 1
            followed += bool(keys)
            if bad := sorted(keys & RESERVED_ATTRIBUTES):
                offences.append(f"{path.relative_to(ROOT)}:{line}: {bad}")
    assert calls > 20 and followed > calls // 2, (calls, followed)  # the scan sees the code's keys
    assert offences == [], "reserved LogRecord attributes passed in extra=:\n" + "\n".join(offences)
