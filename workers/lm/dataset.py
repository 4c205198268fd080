"""Ingest a language-model dataset: Parquet or JSON Lines in, canonical shards out.

The upload is one file, its format told by its content (Parquet by its magic bytes, JSON
Lines when the first non-blank byte is ``{``), and its shape declared at upload:

- ``multiple_choice``: ``question`` (string), ``choices`` (1 to ``MAX_CHOICES`` non-empty
  strings), ``answer`` (an integer index into them);
- ``generate``: ``prompt`` (string), and ``targets`` (a non-empty list of strings) or
  ``target`` (a string, or such a list);
- ``perplexity``: ``text`` (string).

Every shape may have ``split`` (default ``train``) and ``id`` (a string or an integer, the
instance's id; else ``<split>-<position>``). Every other column of a scalar value (string,
integer, float, boolean) is kept as a string, so a template can name it (``{subject}``,
``{context}``): at most ``MAX_EXTRA_COLUMNS`` of them, named as identifiers (a template
could not name another), each value a text of at most ``max_text_bytes``. A column of
another name or of nested values is left out, and listed in the manifest
(``ignored_columns``). The canonical shards hold ``instance_id``, the shape's columns
(``targets`` for ``generate``) and the kept ones (``columns`` in the manifest), no label.

Rows are judged one by one, as ``workers.text.dataset`` judges them: a bad row is left
out and counted by its problem (``missing_question``, ``empty_prompt``, ``no_choices``,
``answer_out_of_range``, ``bad_target``, ``duplicate_id``, ``row_too_long``…), and the
dataset refused above ``max_invalid_fraction``. What cannot be judged row by row refuses
the whole file (``invalid_dataset``): no shape or an unknown one, a shape whose columns the
file lacks (the message names the shape and the columns found), a column of the wrong
type, more kept columns than allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from workers.canonical import (
    DEFAULT_SPLIT,
    IngestLimits,
    Media,
    Names,
    Row,
    first_byte,
    is_parquet,
    json_records,
    number_unsplit,
    open_parquet,
    text_problem,
    write_canonical,
)
from workers.failures import FailureReason, WorkerFailure
from workers.lm.shapes import REQUIRED, SHAPE_SCHEMAS, SHAPES, decoded, parse_row

MAX_EXTRA_COLUMNS = 32
MAX_ID_CHARS = 256
_RESERVED = {"id", "split", "instance_id"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MAX_IGNORED_LISTED = 50
_SCALARS = (str, int, float, bool)


class _Reader:
    """What one ingest learns while reading: the rows by split, the kept and ignored columns,
    the ids met (an id names one instance of the whole dataset)."""

    def __init__(self, shape: str, limits: IngestLimits):
        self.shape, self.limits = shape, limits
        self.names = Names(limits)
        self.own = {name for names in REQUIRED[shape] for name in names}
        self.extras: dict[str, bool] = {}  # name -> kept (False: a nested value was met)
        self.ignored: set[str] = set()
        self.seen: set[str] = set()  # every column any row had, for the message of a wrong shape
        self.ids: set[str] = set()

    def columns_of(self, keys) -> None:
        """Learn the columns of a row (or of a Parquet schema)."""
        for key in keys:
            if key in self.seen:
                continue
            if len(self.seen) < 10_000:
                self.seen.add(key)
            if key in self.own or key in _RESERVED:
                continue
            if not isinstance(key, str) or not _IDENTIFIER.fullmatch(key):
                self._ignore(key)
            elif key not in self.extras:
                if len(self.extras) >= MAX_EXTRA_COLUMNS:
                    raise WorkerFailure(
                        FailureReason.invalid_dataset,
                        f"more than {MAX_EXTRA_COLUMNS} columns besides the {self.shape} ones: "
                        "keep only those your templates name",
                    )
                self.extras[key] = True

    def _ignore(self, key: object) -> None:
        if len(self.ignored) < _MAX_IGNORED_LISTED:
            self.ignored.add(str(key)[:80])

    def drop(self, key: str) -> None:
        """A column met with a nested value: left out of every row."""
        if self.extras.get(key):
            self.extras[key] = False
            self._ignore(key)

    def add(self, record: dict[str, Any]) -> None:
        """Append one row to its split, its problem (if any) recorded."""
        split = record.get("split")
        split = DEFAULT_SPLIT if split is None or split in ("", b"") else _utf8(split)
        if split is None:
            self.names.split(DEFAULT_SPLIT).append(Row("", None, None, "invalid_utf8"))  # numbered at the end
            return
        rows = self.names.split(split)
        instance_id, problem = self._id(record.get("id"), f"{split}-{len(rows):08d}")
        value, problem = (None, problem) if problem else parse_row(self.shape, record, self.limits)
        if problem is None:
            assert value is not None
            extras, problem = self._extras(record)
            value.update(extras)
        if problem is None and _chars(value) > 2 * self.limits.max_text_bytes:
            problem = "row_too_long"
        if problem is None:
            self.ids.add(instance_id)
        rows.append(Row(instance_id, value if problem is None else None, None, problem))

    def _id(self, raw: object, position: str) -> tuple[str, str | None]:
        if raw is None or raw in ("", b""):
            instance_id = position
        elif isinstance(raw, bool) or not isinstance(raw, int | str | bytes):
            return position, "bad_id"
        else:
            decoded = str(raw) if isinstance(raw, int) else _utf8(raw)
            if not isinstance(decoded, str) or not 0 < len(decoded) <= MAX_ID_CHARS or not decoded.isprintable():
                return position, "bad_id"
            instance_id = decoded
        return instance_id, "duplicate_id" if instance_id in self.ids else None

    def _extras(self, record: dict[str, Any]) -> tuple[dict[str, str | None], str | None]:
        out: dict[str, str | None] = {}
        for name, kept in self.extras.items():
            raw = record.get(name)
            if not kept or raw is None:
                continue
            if not isinstance(raw, _SCALARS + (bytes,)):
                self.drop(name)
                continue
            if isinstance(raw, bytes | str):
                problem = text_problem(raw, self.limits)
                if problem in ("invalid_utf8", "text_too_long"):
                    return {}, "invalid_utf8" if problem == "invalid_utf8" else "field_too_long"
                out[name] = decoded(raw)
            else:
                out[name] = str(raw)
        return out, None

    def check_shape(self) -> None:
        """Refuses a file that lacks a column its shape needs (a wrong shape, most likely)."""
        missing = [" or ".join(names) for names in REQUIRED[self.shape] if not any(n in self.seen for n in names)]
        if missing:
            raise WorkerFailure(
                FailureReason.invalid_dataset,
                f"a {self.shape} dataset needs column(s) {', '.join(missing)}; the file has "
                f"{sorted(map(str, self.seen))[:30] or 'none'}: is its shape {_other_shapes(self.shape, self.seen)}?",
            )

    def media(self) -> Media:
        kept = [name for name, ok in self.extras.items() if ok]
        schema = pa.schema([("instance_id", pa.string()), *SHAPE_SCHEMAS[self.shape], *((name, pa.string()) for name in kept)])

        def columns(rows: list[Row]) -> dict[str, list]:
            values: list[dict] = [r.value for r in rows]  # type: ignore[misc]  # a valid row's value is its dict
            out: dict[str, list] = {"instance_id": [r.instance_id for r in rows]}
            for name in schema.names[1:]:
                out[name] = [v.get(name) for v in values]
            return out

        return Media(
            noun="instances",
            schema=schema,
            columns=columns,
            validate=lambda row, limits: row,  # judged while read
            too_many_invalid=FailureReason.too_many_invalid_texts,
            compression="zstd",
            labelled=False,
        )


def _other_shapes(shape: str, seen: set[str]) -> str:
    fits = [s for s in SHAPES if s != shape and all(any(n in seen for n in names) for names in REQUIRED[s])]
    return fits[0] if fits else f"one of {list(SHAPES)}, with its columns"


def _utf8(value: object) -> object:
    """A split or id value as read: bytes (Parquet strings) decoded, None when not UTF-8."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _chars(value: dict[str, Any] | None) -> int:
    if not value:
        return 0
    return sum(len(v) if isinstance(v, str) else sum(map(len, v)) if isinstance(v, list) else 0 for v in value.values())


def ingest_dataset(
    source: str | Path,
    out_dir: str | Path,
    *,
    work_dir: str | Path,
    shape: str | None = None,
    limits: IngestLimits | None = None,
) -> dict:
    """Turn an uploaded Parquet or JSON Lines file of the declared ``shape`` into canonical
    shards and a manifest (``out_dir/<split>/part-NNNNN.parquet``, ``out_dir/manifest.json``,
    with ``shape``, ``columns`` and ``ignored_columns``); returns the manifest. ``work_dir``
    is unused: the upload is one file, read in place.

    Raises:
        WorkerFailure: ``invalid_dataset`` (also above the invalid fraction) or ``empty_dataset``.
    """
    if shape not in SHAPES:
        given = "no shape" if shape is None else f"shape {shape!r}"
        raise WorkerFailure(FailureReason.invalid_dataset, f"{given}: a language-model dataset declares one of {list(SHAPES)}")
    source, out_dir, limits = Path(source), Path(out_dir), limits or IngestLimits()
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = _Reader(shape, limits)
    if is_parquet(source):
        fmt = "parquet"
        _read_parquet(source, reader)
    elif first_byte(source) == b"{":
        fmt = "jsonl"
        _read_jsonl(source, reader)
    elif first_byte(source) == b"[":
        raise WorkerFailure(FailureReason.invalid_dataset, "a JSON array: upload JSON Lines, one object per line")
    else:
        raise WorkerFailure(FailureReason.invalid_dataset, "neither Parquet nor JSON Lines (one JSON object per line)")
    number_unsplit(reader.names)
    media = reader.media()
    extra = {"shape": shape, "columns": media.schema.names, "ignored_columns": sorted(reader.ignored)}
    return write_canonical(reader.names.splits, None, out_dir, media=media, source_format=fmt, limits=limits, extra=extra)


# --- Parquet ---------------------------------------------------------------------------------

_TEXT_COLUMNS = {"question", "prompt", "text", "split"}
_LIST_COLUMNS = {"choices", "targets"}


def _is_string(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def _is_string_list(type_: pa.DataType) -> bool:
    return (pa.types.is_list(type_) or pa.types.is_large_list(type_)) and _is_string(type_.value_type)


def _check_types(schema: pa.Schema, reader: _Reader) -> list[str]:
    """The columns to read; refuses one of the wrong type."""
    read = []
    for f in schema:
        name, type_ = f.name, f.type
        if name in _TEXT_COLUMNS and name in reader.own | {"split"}:
            ok, wanted = _is_string(type_), "a string"
        elif name in _LIST_COLUMNS and name in reader.own:
            ok, wanted = _is_string_list(type_), "a list of strings"
        elif name == "target" and "target" in reader.own:
            ok, wanted = _is_string(type_) or _is_string_list(type_), "a string or a list of strings"
        elif name == "answer" and "answer" in reader.own:
            ok, wanted = pa.types.is_integer(type_), "an integer"
        elif name == "id":
            ok, wanted = _is_string(type_) or pa.types.is_integer(type_), "a string or an integer"
        elif name in reader.extras:
            ok, wanted = True, ""
            if not (_is_string(type_) or pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_boolean(type_)):
                reader.drop(name)
                continue
        else:
            continue
        if not ok:
            raise WorkerFailure(FailureReason.invalid_dataset, f"column {name!r} must be {wanted}, not {type_}")
        read.append(name)
    return read


def _as_bytes(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Strings read as bytes, so that invalid UTF-8 is one row's problem, not the file's."""
    type_ = column.type
    if _is_string(type_):
        return column.cast(pa.large_binary())
    if _is_string_list(type_):
        return column.cast(pa.large_list(pa.large_binary()))
    return column


def _read_parquet(path: Path, reader: _Reader) -> None:
    pf = open_parquet(path)
    schema = pf.schema_arrow
    reader.columns_of(schema.names)
    reader.check_shape()
    columns = _check_types(schema, reader)
    try:
        for batch in pf.iter_batches(batch_size=256, columns=columns):
            data = {name: _as_bytes(column).to_pylist() for name, column in zip(batch.schema.names, batch.columns)}
            for i in range(batch.num_rows):
                reader.add({name: values[i] for name, values in data.items()})
    except (pa.ArrowException, OSError) as e:
        raise WorkerFailure(FailureReason.invalid_dataset, f"unreadable Parquet file: {e}") from e


# --- JSON Lines ------------------------------------------------------------------------------


def _read_jsonl(path: Path, reader: _Reader) -> None:
    # A row's texts, JSON-escaped (at most 6 bytes a byte: \u0000), and its other fields.
    limit = 2 * 6 * reader.limits.max_text_bytes + 64 * 1024
    for record in json_records(path, limit):
        if isinstance(record, str):  # a line too long for any valid row, or not a JSON object
            reader.names.split(DEFAULT_SPLIT).append(Row("", None, None, "row_too_long" if record == "too_long" else record))
            continue
        reader.columns_of(record)
        reader.add(record)
    reader.check_shape()
