"""Gallery images: one instance's image bytes, read from the dataset's canonical shard.

Images live inside the dataset's Parquet shards (``datasets/{id}/{split}/part-NNNNN.parquet``),
not as objects of their own, so a Cloud Storage signed URL cannot point at one. The console
signs its own short-lived URL per image instead (``session.image_signature``) and serves
the bytes itself: the prediction file that holds an instance names the shard it came from
(``shared/results.py``), the shard is fetched once into the local cache (datasets are
immutable once ready), and only the requested row's ``image`` column is read.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.errors import NotFound
from shared.storage import Storage, dataset_shard

PART = re.compile(r"^part-(\d{5,})\.parquet$")
# Only formats a browser shows and that cannot carry script (no SVG).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def media_type(data: bytes) -> str | None:
    for magic, kind in _SIGNATURES:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


class ShardCache:
    """Dataset shards on local disk, fetched whole once (atomically: a temporary name, then
    a rename), under ``{cache_dir}/console/shards/``."""

    def __init__(self, storage: Storage, cache_dir: str | Path):
        self.storage = storage
        self.root = Path(cache_dir).resolve() / "console" / "shards"
        self._lock = threading.Lock()

    def path(self, dataset_id: str, split: str, part: str) -> Path:
        match = PART.fullmatch(part)
        if match is None:
            raise NotFound("no such image")
        local = self.root / dataset_id / split / part
        if local.exists():
            return local
        with self._lock:
            if not local.exists():
                local.parent.mkdir(parents=True, exist_ok=True)
                partial = local.with_name(f".{part}.{uuid.uuid4().hex}.partial")
                try:
                    self.storage.download_file(dataset_shard(dataset_id, split, int(match.group(1))), partial)
                    os.replace(partial, local)
                finally:
                    partial.unlink(missing_ok=True)
        return local

    def image(self, dataset_id: str, split: str, part: str, instance_id: str) -> tuple[bytes, str]:
        """The image bytes and media type; NotFound when the shard lacks the instance or
        holds no image a browser can safely show."""
        table = pq.read_table(
            self.path(dataset_id, split, part),
            columns=["instance_id", "image"],
            filters=pc.field("instance_id") == instance_id,
        )
        if table.num_rows == 0:
            raise NotFound("no such image")
        data = table.column("image")[0].as_py()
        kind = media_type(data or b"")
        if kind is None:
            raise NotFound("no such image")
        return data, kind
