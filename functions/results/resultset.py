"""A result set opened for querying: prediction Parquet files behind a DuckDB connection
that can read those files and nothing else.

The connection is locked before any query runs: ``allowed_paths`` names the result set's
files, ``enable_external_access`` is off and ``lock_configuration`` on, so no statement
can read another file, write one, reach the network, load an extension or undo the lock.
Every query is parameterized besides; only view names of our own enter SQL text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import duckdb

from shared.errors import Conflict
from shared.metrics import CLASSIFICATION, LANGUAGE_MODEL
from shared.modeltasks import DEFAULT_TASK, spec_of
from shared.modeltasks.base import Column
from shared.modeltasks.text_generation import COMMON_PREDICTIONS, KIND_PREDICTIONS, kind_of_columns

log = logging.getLogger(__name__)

PART_NAME = re.compile(r"^part-\d{5,}\.parquet$")
SUMMARY_FILE = "summary.json"
VIEW_NAME = re.compile(r"^[a-z_]{1,32}$")


class ResultsNotReady(Conflict):
    """The evaluation has no results yet (or will never have: failed, cancelled)."""

    code = "results_not_ready"


class ResultSetMissing(Conflict):
    """The evaluation is complete but its result set is not in Cloud Storage."""

    code = "result_set_missing"


class ResultSetCorrupt(Conflict):
    """The stored result set cannot be read, or does not follow ``shared/results.py``."""

    code = "result_set_corrupt"


def _kind(type_name: str) -> str:
    """What a declared column type (``shared.modeltasks``: ``int32``, ``list<float64>``…)
    must read as."""
    if type_name.startswith("list<") and type_name.endswith(">"):
        return f"list<{_kind(type_name[len('list<') : -1])}>"
    if type_name.startswith("int"):
        return "integer"
    if type_name.startswith("float"):
        return "float"
    return {"bool": "boolean"}.get(type_name, type_name)


def _duckdb_kind(t: str) -> str:
    t = t.upper()
    if t.endswith("[]"):
        return f"list<{_duckdb_kind(t[:-2])}>"
    if t in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"):
        return "integer"
    if t in ("FLOAT", "DOUBLE"):
        return "float"
    if t == "VARCHAR":
        return "string"
    return t.lower()


def required_columns(columns: tuple[Column, ...]) -> dict[str, str]:
    """Column -> kind the contract requires. Integer widths are not pinned: int32 and int64
    read the same way, and a writer choosing either is no reason to refuse its results."""
    return {c.name: _kind(c.type) for c in columns if c.required}


class Source(NamedTuple):
    """A local result set to open: its folder, the model's label names (classification),
    the evaluation's task and, when the evaluation names one, its kind (language models)."""

    directory: Path
    label_names: list[str]
    task: str = DEFAULT_TASK
    kind: str | None = None


_FILE_ERRORS = (duckdb.IOException, duckdb.InvalidInputException, duckdb.ConversionException)


@contextlib.contextmanager
def translated_duckdb_errors(what: str, *, opening: bool = False) -> Iterator[None]:
    """DuckDB errors caused by the files (unreadable, truncated, mismatched) become
    ``ResultSetCorrupt``; errors in our own SQL stay what they are, a bug. While opening
    (reading footers and schemas, no SQL of ours) any DuckDB error is the files' fault."""
    try:
        yield
    except duckdb.Error as e:
        # A bare ``duckdb.Error`` is what a damaged Parquet page raises ("don't know what
        # type"); our own mistakes come as its subclasses (binder, catalog, parser errors).
        if not (opening or isinstance(e, _FILE_ERRORS) or type(e) is duckdb.Error):
            raise
        log.warning("result set unreadable", extra={"what": what, "error": str(e)})
        raise ResultSetCorrupt(f"{what}: the stored result set cannot be read", details={"error": str(e)}) from e


def prediction_files(directory: Path) -> list[Path]:
    """The ``part-NNNNN.parquet`` files of a local result set, in order."""
    files = sorted(p for p in Path(directory).iterdir() if PART_NAME.fullmatch(p.name))
    if not files:
        raise ResultSetMissing("the result set has no prediction files")
    return [p.resolve() for p in files]


def read_label_names(directory: Path) -> list[str] | None:
    """``label_names`` from the result set's summary.json, or None when it has none."""
    path = Path(directory) / SUMMARY_FILE
    if not path.exists():
        return None
    try:
        names = json.loads(path.read_text()).get("label_names")
    except (ValueError, AttributeError) as e:
        raise ResultSetCorrupt("summary.json is not a JSON object", details={"error": str(e)}) from e
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ResultSetCorrupt("summary.json: label_names is not a list of strings")
    return names


@dataclass
class ResultSet:
    """One evaluation's predictions as the view ``view`` of a locked connection.

    ``family`` is the metric family of the evaluation's task (``shared.metrics``); a
    language model's result set also has a ``kind`` (multiple_choice, generate or
    perplexity) and no label names.
    """

    con: duckdb.DuckDBPyConnection
    view: str
    label_names: list[str]
    files: list[Path]
    # Every required column, and the optional text ones a task adds (``text_excerpt``).
    columns: frozenset[str] = frozenset()
    family: str = CLASSIFICATION
    kind: str | None = None
    task: str = DEFAULT_TASK

    def describe(self) -> str:
        """What it is, for messages: ``a text-generation evaluation (generate)``."""
        return f"a {self.task} evaluation" + (f" ({self.kind})" if self.kind else "")

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
        """Run ``sql`` (``{view}`` stands for this result set's view) with bound ``params``."""
        with translated_duckdb_errors("result set"):
            return self.con.execute(sql.format(view=self.view), params or {})

    def name_of(self, index: int) -> str:
        if not 0 <= index < len(self.label_names):
            raise ResultSetCorrupt(
                f"class index {index} is outside the {len(self.label_names)} label names",
                details={"index": int(index), "classes": len(self.label_names)},
            )
        return self.label_names[index]

    def check_indices(self, *arrays: Any) -> None:
        """Raise ``ResultSetCorrupt`` unless every class index has a label name."""
        for values in arrays:
            if len(values) and (values.min() < 0 or values.max() >= len(self.label_names)):
                bad = values.max() if values.max() >= len(self.label_names) else values.min()
                self.name_of(int(bad))


def locked_connection(files: list[Path]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection that may read exactly ``files``, then nothing else."""
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        con.execute("SET allowed_paths = $paths", {"paths": [str(p) for p in files]})
        # A page (at most 1,000 rows + 1) is sorted on narrow columns first and only its
        # rows are read whole; DuckDB's default stops doing that above 50 rows.
        con.execute("SET late_materialization_max_rows = 1024")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def _expected_columns(found: set[str], source: Source) -> tuple[str | None, tuple[Column, ...]]:
    """The kind and the prediction columns of a result set of ``source``'s task.

    A language model's shards have the common columns and those of one kind: the one its
    evaluation names, else the one whose columns are there.
    """
    spec = spec_of(source.task)
    if spec.family != LANGUAGE_MODEL:
        return None, spec.prediction_columns
    kind = source.kind or kind_of_columns(found)
    if kind not in KIND_PREDICTIONS:
        raise ResultSetCorrupt(
            "the result set has the prediction columns of no language-model kind (shared/modeltasks/text_generation.py)",
            details={"kinds": {k: [c.name for c in cs] for k, cs in KIND_PREDICTIONS.items()}, "found": sorted(found)},
        )
    return kind, COMMON_PREDICTIONS + KIND_PREDICTIONS[kind]


def _check_schema(con: duckdb.DuckDBPyConnection, view: str, source: Source) -> tuple[str | None, frozenset[str]]:
    """The view's kind and columns; raises ``ResultSetCorrupt`` unless the required ones are there."""
    found = {row[0]: _duckdb_kind(row[1]) for row in con.execute(f"DESCRIBE {view}").fetchall()}
    kind, expected = _expected_columns(set(found), source)
    required = required_columns(expected)
    problems = {name: {"expected": t, "found": found.get(name)} for name, t in required.items() if found.get(name) != t}
    if problems:
        raise ResultSetCorrupt(
            f"the result set does not follow the prediction columns of {source.task}"
            + (f" ({kind})" if kind else "")
            + " (shared/modeltasks)",
            details={"columns": problems},
        )
    return kind, frozenset(name for name, t in found.items() if name in required or t == "string")


def open_result_sets(sets: dict[str, Source]) -> dict[str, ResultSet]:
    """Open several local result sets in one locked connection, each as the view its key names.

    The caller closes the connection (``ResultSet.con``), shared by all of them.

    Raises:
        ResultSetMissing: a directory has no prediction files.
        ResultSetCorrupt: a file is unreadable or does not have its task's columns.
    """
    files = {view: prediction_files(source.directory) for view, source in sets.items()}
    con = locked_connection([f for fs in files.values() for f in fs])
    try:
        out = {}
        for view, source in sets.items():
            if not VIEW_NAME.fullmatch(view):
                raise ValueError(f"bad view name {view!r}")
            with translated_duckdb_errors("result set", opening=True):
                con.read_parquet([str(f) for f in files[view]]).create_view(view)
                kind, columns = _check_schema(con, view, source)
            family = spec_of(source.task).family
            out[view] = ResultSet(con, view, list(source.label_names), files[view], columns, family, kind, source.task)
        return out
    except BaseException:
        con.close()
        raise


@contextlib.contextmanager
def opened(directory: Path, label_names: list[str], *, task: str = DEFAULT_TASK) -> Iterator[ResultSet]:
    """One result set as the view ``predictions``, closed on exit."""
    result_set = open_result_sets({"predictions": Source(directory, label_names, task)})["predictions"]
    try:
        yield result_set
    finally:
        result_set.con.close()
