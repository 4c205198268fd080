"""Which Datastore queries need a composite index, and whether ``index.yaml`` covers them.

Production Datastore refuses a query that no index serves; the emulator serves anything.
So the store checks every query shape against ``infra/gcp/index.yaml`` when it is given
the file (the test suite always does): a query the code makes without an index fails in
tests exactly as it would in production.

Rules followed (Datastore's): equality filters alone are served by built-in single-property
indexes merged together; a sort order alone on one property is built in; equality filters
plus a sort need composite indexes, and a zigzag merge join may combine several composite
indexes that each hold some of the equality properties followed by the same sort order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class QueryShape:
    kind: str
    equality: tuple[str, ...]  # sorted, distinct
    order: tuple[tuple[str, str], ...]  # ((property, "asc"|"desc"), ...)

    @classmethod
    def of(cls, kind: str, equality: list[str], order: list[str]) -> QueryShape:
        parsed = tuple((p.lstrip("-"), "desc" if p.startswith("-") else "asc") for p in order)
        return cls(kind, tuple(sorted(set(equality))), parsed)

    def needs_composite(self) -> bool:
        if not self.order:
            return False
        if not self.equality and len(self.order) == 1:
            return False
        return True


@dataclass(frozen=True)
class Index:
    kind: str
    properties: tuple[tuple[str, str], ...]


def load_indexes(path: str | Path) -> list[Index]:
    doc = yaml.safe_load(Path(path).read_text()) or {}
    out = []
    for item in doc.get("indexes") or []:
        props = tuple((p["name"], p.get("direction", "asc")) for p in item["properties"])
        out.append(Index(item["kind"], props))
    return out


def covers(indexes: list[Index], shape: QueryShape) -> bool:
    """True when built-in indexes or a merge of composite ones serve ``shape``."""
    if not shape.needs_composite():
        return True
    n = len(shape.order)
    usable_prefixes: list[set[str]] = []
    for index in indexes:
        if index.kind != shape.kind or len(index.properties) < n:
            continue
        if index.properties[-n:] != shape.order:
            continue
        prefix = index.properties[:-n]
        names = {name for name, _ in prefix}
        if names <= set(shape.equality):
            usable_prefixes.append(names)
    if not shape.equality:
        return any(len(p) == 0 for p in usable_prefixes)
    covered: set[str] = set().union(*usable_prefixes) if usable_prefixes else set()
    return covered >= set(shape.equality)
