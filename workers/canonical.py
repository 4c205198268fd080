"""The canonical form of a dataset, whatever its upload: sharded Parquet plus a manifest.

What every dataset task shares once its rows are read: the checks on split and class names
met while reading (``Names``, by the rules of ``shared.entities``: a split becomes a
directory here and part of object names, a class name is text kept on the entity), the
bounds on what the data controls (``IngestLimits``), label names from the ``huggingface``
schema metadata, and ``write_canonical``: each row validated, the valid ones written as
``out/{split}/part-NNNNN.parquet``, the invalid ones counted by problem (the whole dataset
refused above ``max_invalid_fraction``), and ``out/manifest.json`` with a content digest.
A ``Media`` says what a row holds (``workers.ingest``: images; ``workers.text.dataset``: texts;
``workers.lm.dataset``: a language model's questions, prompts or texts, without labels).
The readers of files that tasks share (JSON Lines, a text's checks) are here too.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shared.entities import (
    MAX_CLASSES,
    MAX_SPLITS,
    check_class_name,
    check_class_names,
    check_split_name,
)
from workers.archive import ArchiveLimits
from workers.failures import FailureReason, WorkerFailure
from workers.images import DEFAULT_MAX_PIXELS
from workers.workdir import inside

MANIFEST_NAME = "manifest.json"
DEFAULT_SPLIT = "train"
_MAX_EXAMPLES = 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class IngestLimits:
    max_invalid_fraction: float = 0.05
    max_pixels: int = DEFAULT_MAX_PIXELS
    shard_rows: int = 1000
    archive: ArchiveLimits = field(default_factory=ArchiveLimits)
    decode_threads: int = 2
    max_splits: int = MAX_SPLITS
    max_classes: int = MAX_CLASSES  # also bounds integer labels: 0 <= label < max_classes
    max_text_bytes: int = 1_000_000  # one text (or text pair member), UTF-8 encoded


@dataclass
class Row:
    instance_id: str
    # Images: bytes, or a Path read when validated, so an archive is never all in memory.
    # Texts: (text, text_pair), validated while read.
    value: object
    label_name: str | None
    problem: str | None = None


@dataclass(frozen=True)
class Media:
    """What the rows of a dataset hold, for ``write_canonical``."""

    noun: str  # plural, for messages: "images"
    schema: pa.Schema  # the canonical shard's, ending with ``label`` when labelled
    columns: Callable[[list[Row]], dict[str, list]]  # every column of a shard but ``label``
    validate: Callable[[Row, IngestLimits], Row]  # sets ``problem`` on a row to leave out
    too_many_invalid: FailureReason
    compression: str
    labelled: bool = True  # False: rows carry no class (a language model's), no ``label`` column


class Names:
    """The split and class names met while reading, each checked once when first seen and
    counted against the limits as they appear, so a million distinct values stop at the
    first one over the bound instead of being collected."""

    def __init__(self, limits: IngestLimits):
        self.limits = limits
        self.splits: dict[str, list[Row]] = {}
        self.classes: set[str] = set()

    def split(self, name: object) -> list[Row]:
        rows = self.splits.get(name) if isinstance(name, str) else None
        if rows is not None:
            return rows
        if not isinstance(name, str):
            raise WorkerFailure(FailureReason.invalid_dataset, f"split names must be strings, not {type(name).__name__}")
        try:
            check_split_name(name)
        except ValueError as e:
            raise WorkerFailure(FailureReason.invalid_dataset, str(e)) from e
        if len(self.splits) >= self.limits.max_splits:
            raise WorkerFailure(FailureReason.invalid_dataset, f"more than {self.limits.max_splits} splits")
        return self.splits.setdefault(name, [])

    def label(self, name: str) -> str:
        if name in self.classes:
            return name
        _check_class(name)
        if len(self.classes) >= self.limits.max_classes:
            raise WorkerFailure(FailureReason.invalid_dataset, f"more than {self.limits.max_classes} distinct labels")
        self.classes.add(name)
        return name

    def label_of(self, label: object, declared: list[str] | None) -> str | None:
        """The class name of a label value read from a file: an index into the ``declared``
        names, an integer standing for itself when none are declared (bounded: the label
        space is 0..max), or a name. None when the row has no usable label.

        Raises:
            WorkerFailure: ``invalid_dataset`` when an integer label without declared names
                is out of bounds, or a name breaks the rules or the limit on classes.
        """
        if label is None or isinstance(label, bool | float):
            return None
        if isinstance(label, int) and declared is not None:
            return declared[label] if 0 <= label < len(declared) else None
        if isinstance(label, int):
            if not 0 <= label < self.limits.max_classes:
                raise WorkerFailure(
                    FailureReason.invalid_dataset,
                    f"integer label {label} is outside 0..{self.limits.max_classes - 1} and the file declares "
                    f"no label names (a ClassLabel feature); at most {self.limits.max_classes} classes",
                )
            return self.label(str(label))
        if isinstance(label, str):
            return self.label(label)
        return None


def _check_class(name: str) -> None:
    try:
        check_class_name(name)
    except ValueError as e:
        raise WorkerFailure(FailureReason.invalid_dataset, str(e)) from e


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def is_parquet(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def hf_label_names(schema: pa.Schema, limits: IngestLimits) -> list[str] | None:
    """The names of a ``ClassLabel`` ``label`` feature in the ``huggingface`` schema metadata
    ``datasets`` writes; None when there is none.

    Raises:
        WorkerFailure: ``invalid_dataset`` when the names break the rules or the limits.
    """
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        features = json.loads(raw)["info"]["features"]
        names = features["label"]["names"]
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(names, list):
        return None
    try:
        if len(names) > limits.max_classes:
            raise ValueError(f"{len(names)} classes, more than the limit of {limits.max_classes}")
        return check_class_names([str(n) for n in names])
    except ValueError as e:
        raise WorkerFailure(FailureReason.invalid_dataset, f"the label feature's names: {e}") from e


# --- reading an upload ------------------------------------------------------------------------


def first_byte(path: Path) -> bytes:
    """The first non-blank byte of a file (after a UTF-8 BOM): tells JSON Lines from the rest."""
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf")
    stripped = head.lstrip()
    return stripped[:1]


def text_problem(value: object, limits: IngestLimits) -> str | None:
    """Why ``value`` is not a usable text, or None."""
    if value is None:
        return "missing_text"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return "invalid_utf8"
    if not isinstance(value, str):
        return "text_not_string"
    if len(value) > limits.max_text_bytes:  # no need to encode: a character is at least a byte
        return "text_too_long"
    try:
        encoded = value.encode("utf-8")  # lone surrogates: from JSON escapes or undecodable CSV bytes
    except UnicodeEncodeError:
        return "invalid_utf8"
    if len(encoded) > limits.max_text_bytes:
        return "text_too_long"
    if "\x00" in value:
        return "nul_bytes"
    if not value.strip():
        return "empty_text"
    return None


def json_lines(path: Path, limit: int) -> Iterator[bytes | None]:
    """Each line's bytes, or None for a line longer than ``limit`` (skipped unread)."""
    with open(path, "rb") as f:
        while line := f.readline(limit + 1):
            if len(line) <= limit or line.endswith(b"\n"):
                yield line
                continue
            while (more := f.readline(_CHUNK)) and not more.endswith(b"\n"):
                pass
            yield None


def json_records(path: Path, limit: int) -> Iterator[dict | str]:
    """Each JSON Lines record (blank lines skipped, a UTF-8 BOM allowed): the object, or
    what stops it being one: ``too_long`` (over ``limit`` bytes, skipped unread),
    ``invalid_utf8`` or ``invalid_json`` (not JSON, or JSON that is not an object)."""
    for line in json_lines(path, limit):
        if line is None:
            yield "too_long"
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
        except UnicodeDecodeError:
            yield "invalid_utf8"
            continue
        except ValueError:
            yield "invalid_json"
            continue
        yield record if isinstance(record, dict) else "invalid_json"


def number_unsplit(names: Names) -> None:
    """Rows refused before their split could be read count against the default split,
    each under an id of its own."""
    rows = names.splits.get(DEFAULT_SPLIT, [])
    for i, row in enumerate(rows):
        if not row.instance_id:
            row.instance_id = f"{DEFAULT_SPLIT}-unread-{i:08d}"


def open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise WorkerFailure(FailureReason.invalid_dataset, f"unreadable Parquet file: {e}") from e


def check_column_types(schema: pa.Schema) -> None:
    """``label`` an integer or a string, ``split`` (when present) a string.

    Raises:
        WorkerFailure: ``invalid_dataset``.
    """
    label_type = schema.field("label").type
    if not (pa.types.is_integer(label_type) or pa.types.is_string(label_type) or pa.types.is_large_string(label_type)):
        raise WorkerFailure(FailureReason.invalid_dataset, f"'label' must be an integer or a string, not {label_type}")
    split_type = schema.field("split").type if "split" in schema.names else pa.string()
    if not (pa.types.is_string(split_type) or pa.types.is_large_string(split_type)):
        raise WorkerFailure(FailureReason.invalid_dataset, f"'split' must be a string, not {split_type}")


def _label_names(splits: dict[str, list[Row]], declared: list[str] | None) -> list[str]:
    if declared is not None:
        return declared
    found = {row.label_name for rows in splits.values() for row in rows if row.label_name is not None}
    if found and all(name.isdigit() for name in found):  # integer labels without names
        return [str(i) for i in range(max(int(n) for n in found) + 1)]
    return sorted(found)


def _write_shards(rows: Iterable[Row], out: Path, label_index: dict[str, int], media: Media, shard_rows: int) -> list[dict]:
    shards: list[dict] = []

    def flush(chunk: list[Row]) -> None:
        columns = media.columns(chunk)
        if media.labelled:
            columns["label"] = [label_index[r.label_name] for r in chunk]  # type: ignore[index]  # valid rows have one
        table = pa.table(columns, schema=media.schema)
        path = inside(out, shard_name(len(shards)))
        pq.write_table(table, path, compression=media.compression)
        shards.append({"name": path.name, "rows": len(chunk), "sha256": _sha256(path)})

    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == shard_rows:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    return shards


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _validated(rows: list[Row], media: Media, limits: IngestLimits, pool: ThreadPoolExecutor) -> Iterator[Row]:
    # PIL releases the GIL while decoding, so threads do overlap.
    yield from pool.map(lambda r: media.validate(r, limits), rows, chunksize=64)


def write_canonical(
    splits: dict[str, list[Row]],
    declared: list[str] | None,
    out_dir: Path,
    *,
    media: Media,
    source_format: str,
    limits: IngestLimits,
    ignored_files: int = 0,
    extra: dict | None = None,
) -> dict:
    """Validate the rows read from an upload, write the valid ones as canonical shards under
    ``out_dir/<split>/`` and the manifest; returns the manifest. ``declared`` are the label
    names the file declares (None: the names found, sorted, or 0..max for integers);
    ``extra`` holds the media's own manifest fields (a language-model dataset's shape).

    Raises:
        WorkerFailure: ``empty_dataset``, ``invalid_dataset`` (the label set as a whole), or
            ``media.too_many_invalid`` above ``limits.max_invalid_fraction``.
    """
    total = sum(len(rows) for rows in splits.values())
    if total == 0:
        raise WorkerFailure(FailureReason.empty_dataset, f"no {media.noun} found")
    label_names = _label_names(splits, declared)
    try:
        check_class_names(label_names)  # the set as a whole: its total length
    except ValueError as e:
        raise WorkerFailure(FailureReason.invalid_dataset, str(e)) from e
    label_index = {name: i for i, name in enumerate(label_names)}

    problems: Counter[str] = Counter()
    examples: list[dict] = []
    manifest_splits: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=max(1, limits.decode_threads)) as pool:
        for split in sorted(splits):
            invalid_before = sum(problems.values())

            def valid(rows=splits[split]) -> Iterator[Row]:
                for row in _validated(rows, media, limits, pool):
                    if row.problem is None:
                        yield row
                        continue
                    problems[row.problem] += 1
                    if len(examples) < _MAX_EXAMPLES:
                        examples.append({"instance_id": row.instance_id, "problem": row.problem})

            split_dir = inside(out_dir, split)
            split_dir.mkdir(parents=True, exist_ok=True)
            shards = _write_shards(valid(), split_dir, label_index, media, limits.shard_rows)
            manifest_splits[split] = {
                "instances": sum(s["rows"] for s in shards),
                "invalid": sum(problems.values()) - invalid_before,
                "shards": shards,
            }
            splits[split] = []  # let the bytes go

    invalid = sum(problems.values())
    details = {"invalid": invalid, "total": total, "problems": dict(problems), "examples": examples}
    if invalid / total > limits.max_invalid_fraction:
        raise WorkerFailure(
            media.too_many_invalid,
            f"{invalid} of {total} {media.noun} are invalid ({dict(problems)}), "
            f"above the limit of {limits.max_invalid_fraction:.0%}; fix or remove them (examples in details)",
            details=details,
        )
    manifest = {
        "format_version": 1,
        "source_format": source_format,
        "label_names": label_names,
        "splits": manifest_splits,
        "instances": total - invalid,
        "invalid_instances": invalid,
        "invalid_problems": dict(problems),
        "invalid_examples": examples,
        "ignored_files": ignored_files,
        **(extra or {}),
    }
    # The content digest: of the canonical shards, in order, independent of upload wrapping.
    material = json.dumps(
        {"label_names": label_names, "shards": {s: [x["sha256"] for x in v["shards"]] for s, v in manifest_splits.items()}},
        sort_keys=True,
    )
    manifest["digest"] = hashlib.sha256(material.encode()).hexdigest()
    inside(out_dir, MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest
