"""Pack what a user has on disk into what Assay accepts.

- a ``save_pretrained`` directory → a zip of its files (the model upload);
- an image folder ``split/class/file.png`` → a zip (the dataset upload);
- a Parquet file → uploaded as it is.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

PARQUET_MAGIC = b"PAR1"


def pack_directory(directory: str | Path, *, into: str | Path | None = None) -> Path:
    """Zip a directory's regular files with paths relative to it (links are skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    if into is None:
        fd, name = tempfile.mkstemp(prefix="assay-", suffix=".zip")
        os.close(fd)
        into = name
    into = Path(into)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink())
    if not files:
        raise ValueError(f"{directory} has no files")
    # Images and safetensors barely compress: store them, deflate the rest.
    with zipfile.ZipFile(into, "w") as archive:
        for path in files:
            method = (
                zipfile.ZIP_STORED if path.suffix.lower() in {".png", ".jpg", ".jpeg", ".safetensors"} else zipfile.ZIP_DEFLATED
            )
            archive.write(path, path.relative_to(directory).as_posix(), compress_type=method)
    return into


def dataset_format(path: str | Path) -> str:
    """``parquet`` for a Parquet file, ``jsonl``/``csv`` by the file's suffix,
    ``imagefolder-zip`` for a zip or a directory."""
    path = Path(path)
    if path.is_dir():
        return "imagefolder-zip"
    with open(path, "rb") as f:
        head = f.read(4)
    if head == PARQUET_MAGIC:
        return "parquet"
    if path.suffix.lower() in {".jsonl", ".ndjson"}:
        return "jsonl"
    if path.suffix.lower() == ".csv":
        return "csv"
    if zipfile.is_zipfile(path):
        return "imagefolder-zip"
    if path.name.endswith((".tar.gz", ".tgz")):
        return "imagefolder-tar.gz"
    raise ValueError(f"{path}: expected a directory, a zip, a .tar.gz, a Parquet file, .jsonl or .csv")
