"""Ingest a text classification dataset: Parquet, JSON Lines or CSV in, canonical shards out.

The upload is the raw file; its format is told by its content, never its name: Parquet by
its magic bytes, JSON Lines when the first non-blank byte is ``{``, CSV otherwise. Columns:
``text``, an optional ``text_pair``, ``label`` (a name, or an integer: an index into the
``ClassLabel`` names of Parquet as ``datasets`` writes it, or itself when none are
declared) and an optional ``split`` (default ``train``).

Canonical shards (``workers.canonical``) hold ``instance_id``, ``text``, ``text_pair``
(null when absent) and ``label``, with the same manifest as images.

Rows are judged one by one, and a bad row is left out, counted by its problem, never
fatal on its own: ``text_too_long`` (over ``IngestLimits.max_text_bytes``, 1 MB of UTF-8 by
default: a 10 MB text is counted here and the dataset refused only if too many are),
``invalid_utf8``, ``nul_bytes``, ``empty_text``, ``text_not_string``, ``missing_text``,
``missing_label``, ``bad_label``, ``invalid_json``, ``malformed_row``. Above
``max_invalid_fraction`` the dataset is refused (``too_many_invalid_texts``). What cannot be
judged row by row refuses the whole file (``invalid_dataset``): a Parquet file that does
not read, a missing column, a CSV field beyond ``_CSV_FIELD_BYTES`` (the CSV reader cannot
skip it), a JSON array instead of JSON Lines, a split or class name that breaks the rules.
A JSON line longer than any valid row could be is skipped unread, so memory stays bounded.
"""

from __future__ import annotations

import csv
import io
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa

from workers.canonical import (
    DEFAULT_SPLIT,
    IngestLimits,
    Media,
    Names,
    Row,
    check_column_types,
    first_byte,
    hf_label_names,
    is_parquet,
    json_records,
    number_unsplit,
    open_parquet,
    text_problem,
    write_canonical,
)
from workers.failures import FailureReason, WorkerFailure

SHARD_SCHEMA = pa.schema([("instance_id", pa.string()), ("text", pa.string()), ("text_pair", pa.string()), ("label", pa.int64())])
_CSV_FIELD_BYTES = 64 * 1024**2

TEXTS = Media(
    noun="texts",
    schema=SHARD_SCHEMA,
    columns=lambda rows: {
        "instance_id": [r.instance_id for r in rows],
        "text": [r.value[0] for r in rows],  # type: ignore[index]  # (text, text_pair), see _row
        "text_pair": [r.value[1] for r in rows],  # type: ignore[index]  # as above
    },
    validate=lambda row, limits: row,  # judged while read: _row
    too_many_invalid=FailureReason.too_many_invalid_texts,
    compression="zstd",
)


def ingest_dataset(source: str | Path, out_dir: str | Path, *, work_dir: str | Path, limits: IngestLimits | None = None) -> dict:
    """Turn an uploaded Parquet, JSON Lines or CSV file into canonical shards and a manifest
    (``out_dir/<split>/part-NNNNN.parquet``, ``out_dir/manifest.json``); returns the manifest.
    ``work_dir`` is unused: a text upload is one file, read in place.

    Raises:
        WorkerFailure: ``invalid_dataset``, ``empty_dataset`` or ``too_many_invalid_texts``.
    """
    source, out_dir, limits = Path(source), Path(out_dir), limits or IngestLimits()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = Names(limits)
    declared = None
    if is_parquet(source):
        fmt = "parquet"
        declared = _read_parquet(source, names, limits)
    elif first_byte(source) == b"{":
        fmt = "jsonl"
        _read_jsonl(source, names, limits)
    elif first_byte(source) == b"[":
        raise WorkerFailure(FailureReason.invalid_dataset, "a JSON array: upload JSON Lines, one object per line")
    else:
        fmt = "csv"
        _read_csv(source, names, limits)
    return write_canonical(names.splits, declared, out_dir, media=TEXTS, source_format=fmt, limits=limits)


def _as_text(value: object) -> object:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _row(
    names: Names, split: object, text: object, pair: object, label: object, declared: list[str] | None, limits: IngestLimits
) -> None:
    """Append one row to its split, its problem (if any) recorded."""
    split = DEFAULT_SPLIT if split is None or split == "" else split
    rows = names.split(split)
    instance_id = f"{split}-{len(rows):08d}"
    problem = text_problem(text, limits)
    if problem is None and pair is not None and pair != "" and pair != b"":
        problem = text_problem(pair, limits)
    else:
        pair = None
    if problem is not None:
        rows.append(Row(instance_id, None, None, problem))
        return
    if isinstance(label, str) and not _encodable(label):
        rows.append(Row(instance_id, None, None, "invalid_utf8"))
        return
    label_name = names.label_of(label, declared)
    if label_name is None:
        rows.append(Row(instance_id, None, None, "missing_label" if label is None or label == "" else "bad_label"))
        return
    rows.append(Row(instance_id, (_as_text(text), _as_text(pair)), label_name))


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- Parquet ---------------------------------------------------------------------------------


def _read_parquet(path: Path, names: Names, limits: IngestLimits) -> list[str] | None:
    pf = open_parquet(path)
    schema = pf.schema_arrow
    missing = {"text", "label"} - set(schema.names)
    if missing:
        raise WorkerFailure(FailureReason.invalid_dataset, f"Parquet file lacks column(s) {sorted(missing)}")
    for column in ("text", "text_pair"):
        if column in schema.names and not _is_texty(schema.field(column).type):
            raise WorkerFailure(
                FailureReason.invalid_dataset, f"{column!r} must be a string column, not {schema.field(column).type}"
            )
    declared = hf_label_names(schema, limits)
    check_column_types(schema)
    columns = [c for c in ("text", "text_pair", "label", "split") if c in schema.names]
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            # Texts as bytes: invalid UTF-8 in a string column is then one row's problem.
            data = {
                name: (column.cast(pa.large_binary()) if name in ("text", "text_pair") else column).to_pylist()
                for name, column in zip(batch.schema.names, batch.columns)
            }
            nones = [None] * batch.num_rows
            for text, pair, label, split in zip(
                data["text"], data.get("text_pair", nones), data["label"], data.get("split", nones)
            ):
                _row(names, split, text, pair, label, declared, limits)
    except (pa.ArrowException, OSError) as e:
        raise WorkerFailure(FailureReason.invalid_dataset, f"unreadable Parquet file: {e}") from e
    return declared


def _is_texty(type_: pa.DataType) -> bool:
    return any(
        check(type_) for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
    )


# --- JSON Lines ------------------------------------------------------------------------------


def _read_jsonl(path: Path, names: Names, limits: IngestLimits) -> None:
    # A row's two texts, JSON-escaped (at most 6 bytes a byte: \u0000), and its other fields.
    limit = 2 * 6 * limits.max_text_bytes + 64 * 1024
    for record in json_records(path, limit):
        if isinstance(record, str):  # a line too long for any valid row, or not a JSON object
            names.split(DEFAULT_SPLIT).append(Row("", None, None, "text_too_long" if record == "too_long" else record))
            continue
        _row(names, record.get("split"), record.get("text"), record.get("text_pair"), record.get("label"), None, limits)
    number_unsplit(names)


# --- CSV -------------------------------------------------------------------------------------


@contextmanager
def _csv_field_limit(limit: int):
    previous = csv.field_size_limit(limit)  # module-wide state: restored on the way out
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_csv(path: Path, names: Names, limits: IngestLimits) -> None:
    # Undecodable bytes become lone surrogates, found per row by text_problem.
    with open(path, "rb") as raw, _csv_field_limit(_CSV_FIELD_BYTES):
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline=""))
        try:
            header = next(reader, None)
            if header is None:
                raise WorkerFailure(FailureReason.empty_dataset, "the CSV file is empty")
            index = {name: i for i, name in enumerate(header)}
            missing = {"text", "label"} - set(index)
            if missing:
                raise WorkerFailure(
                    FailureReason.invalid_dataset,
                    f"the CSV header lacks column(s) {sorted(missing)} (found {[h[:40] for h in header[:20]]})",
                )
            for record in reader:
                if not record:
                    continue
                if len(record) != len(header):
                    names.split(DEFAULT_SPLIT).append(Row("", None, None, "malformed_row"))
                    continue
                field = {name: record[i] for name, i in index.items()}
                split = field.get("split")
                if split is not None and not _encodable(split):
                    names.split(DEFAULT_SPLIT).append(Row("", None, None, "invalid_utf8"))
                    continue
                _row(names, split, field["text"], field.get("text_pair"), field["label"] or None, None, limits)
        except csv.Error as e:
            raise WorkerFailure(
                FailureReason.invalid_dataset,
                f"unreadable CSV at line {reader.line_num}: {e} (no field may exceed {_CSV_FIELD_BYTES:,} bytes)",
            ) from e
    number_unsplit(names)
