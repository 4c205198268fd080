"""Ingest a dataset upload into Assay's canonical form: sharded Parquet plus a manifest.

Accepted inputs:
- an image-folder archive (zip or tar.gz): ``split/class_name/file.{png,jpg,jpeg}``, or
  ``class_name/file`` for a single split named ``train`` (the Hugging Face convention);
- a Parquet file as Hugging Face ``datasets`` writes it: ``image`` as bytes or
  ``{bytes, path}``, ``label`` as a ``ClassLabel`` integer (names read from the schema's
  ``huggingface`` metadata) or a string, and an optional ``split`` column.

Output: ``out/{split}/part-NNNNN.parquet`` with ``instance_id`` (string), ``image`` (the
original encoded bytes, untouched) and ``label`` (index into the manifest's label names),
and ``out/manifest.json``. Every image is decoded once here; undecodable ones and
decompression bombs are left out, counted and reported, and above ``max_invalid_fraction``
the dataset is refused.

Names from the data are checked before they are used, by the rules of ``shared.entities``:
a split becomes a directory here and part of object names (``check_split_name``); a class
name is text kept on the entity (``check_class_name``). The sizes the data controls are
bounded (``IngestLimits``): the number of splits, the label space (integer labels with no
names span 0..max), the length of a name. Each breach is ``invalid_dataset``, found while
reading, before anything is decoded or written.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shared.entities import MAX_CLASSES, MAX_SPLITS, check_class_name, check_class_names, check_split_name
from workers.archive import ArchiveLimits, extract_archive
from workers.failures import FailureReason, WorkerFailure
from workers.images import DEFAULT_MAX_PIXELS, InvalidImage, decode_image
from workers.workdir import inside

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
SHARD_SCHEMA = pa.schema([("instance_id", pa.string()), ("image", pa.binary()), ("label", pa.int64())])
MANIFEST_NAME = "manifest.json"
DEFAULT_SPLIT = "train"
_MAX_EXAMPLES = 20


@dataclass(frozen=True)
class IngestLimits:
    max_invalid_fraction: float = 0.05
    max_pixels: int = DEFAULT_MAX_PIXELS
    shard_rows: int = 1000
    archive: ArchiveLimits = field(default_factory=ArchiveLimits)
    decode_threads: int = 2
    max_splits: int = MAX_SPLITS
    max_classes: int = MAX_CLASSES  # also bounds integer labels: 0 <= label < max_classes


class _Names:
    """The split and class names met while reading, each checked once when first seen and
    counted against the limits as they appear, so a million distinct values stop at the
    first one over the bound instead of being collected."""

    def __init__(self, limits: IngestLimits):
        self.limits = limits
        self.splits: dict[str, list[_Row]] = {}
        self.classes: set[str] = set()

    def split(self, name: object) -> list[_Row]:
        if not isinstance(name, str):
            raise WorkerFailure(FailureReason.invalid_dataset, f"split names must be strings, not {type(name).__name__}")
        rows = self.splits.get(name)
        if rows is not None:
            return rows
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


def _check_class(name: str) -> None:
    try:
        check_class_name(name)
    except ValueError as e:
        raise WorkerFailure(FailureReason.invalid_dataset, str(e)) from e


@dataclass
class _Row:
    instance_id: str
    image: bytes | Path | None  # a Path is read when validated, so an archive is never all in memory
    label_name: str | None
    problem: str | None = None


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


# --- reading the two input formats ---------------------------------------------------------


def _imagefolder_root(root: Path) -> Path:
    """Descend through a lone wrapper directory only while images sit deeper than
    ``split/class/file``: a zip holding just ``test/…`` has one split, not a wrapper."""
    while True:
        entries = [p for p in root.iterdir() if p.name != "__MACOSX"]
        depth = max((len(p.relative_to(root).parts) for p in root.rglob("*") if p.is_file()), default=0)
        if depth > 3 and len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
            root = entries[0]
        else:
            return root


def _imagefolder_rows(root: Path, limits: IngestLimits) -> tuple[dict[str, list[_Row]], int]:
    """Rows per split, and how many non-image files were ignored."""
    names = _Names(limits)
    ignored = 0
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        rel = path.relative_to(root)
        if any(part.startswith(".") or part == "__MACOSX" for part in rel.parts):
            ignored += 1
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            ignored += 1
            continue
        if len(rel.parts) == 3:
            split, label_name, _ = rel.parts
        elif len(rel.parts) == 2:
            split, (label_name, _) = DEFAULT_SPLIT, rel.parts
        else:
            raise WorkerFailure(
                FailureReason.invalid_dataset,
                f"{rel.as_posix()!r}: expected split/class_name/file or class_name/file",
            )
        names.split(split).append(_Row(rel.as_posix(), path, names.label(label_name)))
    return names.splits, ignored


def _hf_label_names(schema: pa.Schema, limits: IngestLimits) -> list[str] | None:
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


def _image_bytes(value) -> bytes | None:
    if isinstance(value, dict):  # {bytes, path}: a path alone points outside the upload
        return value.get("bytes")
    return value


def _parquet_rows(path: Path, limits: IngestLimits) -> tuple[dict[str, list[_Row]], list[str] | None]:
    """Rows per split, and the label names the schema declares (None when it declares none)."""
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise WorkerFailure(FailureReason.invalid_dataset, f"unreadable Parquet file: {e}") from e
    schema = pf.schema_arrow
    missing = {"image", "label"} - set(schema.names)
    if missing:
        raise WorkerFailure(FailureReason.invalid_dataset, f"Parquet file lacks column(s) {sorted(missing)}")
    image_type = schema.field("image").type
    if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type) or pa.types.is_struct(image_type)):
        raise WorkerFailure(FailureReason.invalid_dataset, f"'image' must be bytes or {{bytes, path}}, not {image_type}")
    declared = _hf_label_names(schema, limits)
    label_type = schema.field("label").type
    if not (pa.types.is_integer(label_type) or pa.types.is_string(label_type) or pa.types.is_large_string(label_type)):
        raise WorkerFailure(FailureReason.invalid_dataset, f"'label' must be an integer or a string, not {label_type}")
    split_type = schema.field("split").type if "split" in schema.names else pa.string()
    if not (pa.types.is_string(split_type) or pa.types.is_large_string(split_type)):
        raise WorkerFailure(FailureReason.invalid_dataset, f"'split' must be a string, not {split_type}")
    columns = ["image", "label"] + (["split"] if "split" in schema.names else [])
    names = _Names(limits)
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            data = batch.to_pydict()
            split_values = data.get("split") or [DEFAULT_SPLIT] * batch.num_rows
            for image, label, split in zip(data["image"], data["label"], split_values):
                rows = names.split(split if split is not None else DEFAULT_SPLIT)
                row = _Row(f"{split or DEFAULT_SPLIT}-{len(rows):08d}", _image_bytes(image), None)
                if label is None or (isinstance(label, int) and declared is not None and not 0 <= label < len(declared)):
                    row.problem = "bad_label"
                elif isinstance(label, int) and declared is not None:
                    row.label_name = declared[label]
                elif isinstance(label, int):  # no names: the label space is 0..max, bounded
                    if not 0 <= label < limits.max_classes:
                        raise WorkerFailure(
                            FailureReason.invalid_dataset,
                            f"integer label {label} is outside 0..{limits.max_classes - 1} and the file declares "
                            "no label names (a ClassLabel feature); at most "
                            f"{limits.max_classes} classes",
                        )
                    row.label_name = names.label(str(label))
                else:
                    row.label_name = names.label(label)
                rows.append(row)
    except (pa.ArrowException, OSError) as e:
        raise WorkerFailure(FailureReason.invalid_dataset, f"unreadable Parquet file: {e}") from e
    return names.splits, declared


def _label_names(splits: dict[str, list[_Row]], declared: list[str] | None) -> list[str]:
    if declared is not None:
        return declared
    found = {row.label_name for rows in splits.values() for row in rows if row.label_name is not None}
    if found and all(name.isdigit() for name in found):  # integer labels without names
        return [str(i) for i in range(max(int(n) for n in found) + 1)]
    return sorted(found)


# --- validating and writing ----------------------------------------------------------------


def _check_image(row: _Row, max_pixels: int) -> _Row:
    if row.problem is not None:
        return row
    if isinstance(row.image, Path):
        row.image = row.image.read_bytes()
    if not row.image:
        row.problem = "missing_bytes"
        return row
    try:
        decode_image(row.image, max_pixels=max_pixels).close()
    except InvalidImage as e:
        row.problem = str(e.problem)
    return row


def _write_shards(rows: Iterable[_Row], out: Path, label_index: dict[str, int], shard_rows: int) -> list[dict]:
    shards: list[dict] = []

    def flush(chunk: list[_Row]) -> None:
        table = pa.table(
            {
                "instance_id": [r.instance_id for r in chunk],
                "image": [r.image for r in chunk],
                "label": [label_index[r.label_name] for r in chunk],  # type: ignore[index]  # a valid row has one
            },
            schema=SHARD_SCHEMA,
        )
        path = inside(out, shard_name(len(shards)))
        pq.write_table(table, path, compression="none")  # images are compressed already
        shards.append({"name": path.name, "rows": len(chunk), "sha256": _sha256(path)})

    chunk: list[_Row] = []
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


def _validated(rows: list[_Row], limits: IngestLimits, pool: ThreadPoolExecutor) -> Iterator[_Row]:
    # PIL releases the GIL while decoding, so threads do overlap.
    yield from pool.map(lambda r: _check_image(r, limits.max_pixels), rows, chunksize=64)


def ingest_dataset(
    source: str | Path, out_dir: str | Path, *, work_dir: str | Path, limits: IngestLimits = IngestLimits()
) -> dict:
    """Turn an upload (archive or Parquet file) into canonical shards and a manifest.

    ``work_dir`` is a fresh directory an archive is extracted into; ``out_dir`` then holds
    exactly what is published. Returns the manifest (also written to ``out_dir/manifest.json``).

    Raises:
        WorkerFailure: an archive refusal, ``invalid_dataset``, ``empty_dataset`` or
            ``too_many_invalid_images``.
    """
    source, out_dir = Path(source), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ignored = 0
    if _is_parquet(source):
        fmt = "parquet"
        splits, declared = _parquet_rows(source, limits)
    else:
        fmt = "imagefolder"
        extracted = extract_archive(source, work_dir, limits=limits.archive)
        splits, ignored = _imagefolder_rows(_imagefolder_root(extracted.root), limits)
        declared = None
    total = sum(len(rows) for rows in splits.values())
    if total == 0:
        raise WorkerFailure(FailureReason.empty_dataset, "no images found")
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

            def valid(rows=splits[split]) -> Iterator[_Row]:
                for row in _validated(rows, limits, pool):
                    if row.problem is None:
                        yield row
                        continue
                    problems[row.problem] += 1
                    if len(examples) < _MAX_EXAMPLES:
                        examples.append({"instance_id": row.instance_id, "problem": row.problem})

            split_dir = inside(out_dir, split)
            split_dir.mkdir(parents=True, exist_ok=True)
            shards = _write_shards(valid(), split_dir, label_index, limits.shard_rows)
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
            FailureReason.too_many_invalid_images,
            f"{invalid} of {total} images are invalid ({dict(problems)}), "
            f"above the limit of {limits.max_invalid_fraction:.0%}",
            details=details,
        )
    manifest = {
        "format_version": 1,
        "source_format": fmt,
        "label_names": label_names,
        "splits": manifest_splits,
        "instances": total - invalid,
        "invalid_instances": invalid,
        "invalid_problems": dict(problems),
        "invalid_examples": examples,
        "ignored_files": ignored,
    }
    # The content digest: of the canonical shards, in order, independent of upload wrapping.
    material = json.dumps(
        {"label_names": label_names, "shards": {s: [x["sha256"] for x in v["shards"]] for s, v in manifest_splits.items()}},
        sort_keys=True,
    )
    manifest["digest"] = hashlib.sha256(material.encode()).hexdigest()
    inside(out_dir, MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest
