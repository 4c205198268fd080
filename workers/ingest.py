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

The writing half (validation, shards, the manifest and its digest, the name checks and
bounds) is ``workers.canonical``, shared with text datasets (``workers.text.dataset``).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from workers.archive import extract_archive
from workers.canonical import (
    DEFAULT_SPLIT,
    MANIFEST_NAME,
    IngestLimits,
    Media,
    Names,
    Row,
    check_column_types,
    hf_label_names,
    is_parquet,
    open_parquet,
    write_canonical,
)
from workers.failures import FailureReason, WorkerFailure
from workers.images import InvalidImage, decode_image

__all__ = ["DEFAULT_SPLIT", "MANIFEST_NAME", "IngestLimits", "ingest_dataset"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
SHARD_SCHEMA = pa.schema([("instance_id", pa.string()), ("image", pa.binary()), ("label", pa.int64())])
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


def _imagefolder_rows(root: Path, limits: IngestLimits) -> tuple[dict[str, list[Row]], int]:
    """Rows per split, and how many non-image files were ignored."""
    names = Names(limits)
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
        names.split(split).append(Row(rel.as_posix(), path, names.label(label_name)))
    return names.splits, ignored


def _image_bytes(value) -> bytes | None:
    if isinstance(value, dict):  # {bytes, path}: a path alone points outside the upload
        return value.get("bytes")
    return value


def _parquet_rows(path: Path, limits: IngestLimits) -> tuple[dict[str, list[Row]], list[str] | None]:
    """Rows per split, and the label names the schema declares (None when it declares none)."""
    pf = open_parquet(path)
    schema = pf.schema_arrow
    missing = {"image", "label"} - set(schema.names)
    if missing:
        raise WorkerFailure(FailureReason.invalid_dataset, f"Parquet file lacks column(s) {sorted(missing)}")
    image_type = schema.field("image").type
    if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type) or pa.types.is_struct(image_type)):
        raise WorkerFailure(FailureReason.invalid_dataset, f"'image' must be bytes or {{bytes, path}}, not {image_type}")
    declared = hf_label_names(schema, limits)
    check_column_types(schema)
    columns = ["image", "label"] + (["split"] if "split" in schema.names else [])
    names = Names(limits)
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            data = batch.to_pydict()
            split_values = data.get("split") or [DEFAULT_SPLIT] * batch.num_rows
            for image, label, split in zip(data["image"], data["label"], split_values):
                rows = names.split(split if split is not None else DEFAULT_SPLIT)
                row = Row(f"{split or DEFAULT_SPLIT}-{len(rows):08d}", _image_bytes(image), names.label_of(label, declared))
                if row.label_name is None:
                    row.problem = "bad_label"
                rows.append(row)
    except (pa.ArrowException, OSError) as e:
        raise WorkerFailure(FailureReason.invalid_dataset, f"unreadable Parquet file: {e}") from e
    return names.splits, declared


# --- validating and writing ----------------------------------------------------------------


def _check_image(row: Row, limits: IngestLimits) -> Row:
    if row.problem is not None:
        return row
    if isinstance(row.value, Path):
        row.value = row.value.read_bytes()
    if not isinstance(row.value, bytes) or not row.value:
        row.problem = "missing_bytes"
        return row
    try:
        decode_image(row.value, max_pixels=limits.max_pixels).close()
    except InvalidImage as e:
        row.problem = str(e.problem)
    return row


IMAGES = Media(
    noun="images",
    schema=SHARD_SCHEMA,
    columns=lambda rows: {"instance_id": [r.instance_id for r in rows], "image": [r.value for r in rows]},
    validate=_check_image,
    too_many_invalid=FailureReason.too_many_invalid_images,
    compression="none",  # images are compressed already
)


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
    if is_parquet(source):
        fmt = "parquet"
        splits, declared = _parquet_rows(source, limits)
    else:
        fmt = "imagefolder"
        extracted = extract_archive(source, work_dir, limits=limits.archive)
        splits, ignored = _imagefolder_rows(_imagefolder_root(extracted.root), limits)
        declared = None
    return write_canonical(splits, declared, out_dir, media=IMAGES, source_format=fmt, limits=limits, ignored_files=ignored)
