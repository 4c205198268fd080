"""A bounded local cache of result sets fetched from Cloud Storage.

An entry is ``{root}/{evaluation id}/{digest}/`` holding the evaluation's
``part-NNNNN.parquet`` files and its summary.json. The digest covers the object names,
their sizes and the evaluation's *version* (when its status last changed): a restarted
evaluation writes a new result set under the same id and gets a new entry.

- Atomic: files are downloaded into a private ``.partial`` folder renamed into place
  whole, so no reader ever sees half an entry; two processes racing keep the first.
- Bounded: after each fetch, least recently used entries are removed until the total
  size is under ``max_bytes`` (an entry larger than the bound is still served, alone).
- Concurrent requests: one download per entry at a time (a lock per evaluation), and
  entries in use by a request of this process are pinned, never evicted under it.
  Eviction renames an entry away before removing it, so it disappears at once.
- A known (evaluation, version) is served from disk without asking Cloud Storage.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from functions.results.resultset import PART_NAME, SUMMARY_FILE, ResultSetMissing
from shared.storage import Storage, evaluation_prefix

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 2 * 1024**3  # Settings.results_cache_bytes sets it for the API
_STALE_PARTIAL_S = 3600.0


def _size_of(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


class ResultCache:
    def __init__(self, storage: Storage, directory: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES):
        self.storage = storage
        self.root = Path(directory).resolve() / "results"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._fetch_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._pins: collections.Counter[Path] = collections.Counter()
        self._known: dict[tuple[str, str], Path] = {}
        # Recency of the entries this process used. File times can be too coarse to order
        # requests milliseconds apart; they only order entries left by other processes.
        self._used: dict[Path, int] = {}
        self._clock = itertools.count()

    @contextlib.contextmanager
    def open(self, evaluation_id: str, *, version: str) -> Iterator[Path]:
        """The local folder of an evaluation's result set, pinned for the block.

        Raises:
            ResultSetMissing: Cloud Storage holds no prediction files for the evaluation.
            Unavailable, NotFound: from Cloud Storage.
        """
        entry = self._entry(evaluation_id, version)
        try:
            yield entry
        finally:
            with self._lock:
                self._pins[entry] -= 1
                if self._pins[entry] <= 0:
                    del self._pins[entry]

    def _pinned_if_present(self, key: tuple[str, str]) -> Path | None:
        with self._lock:
            entry = self._known.get(key)
            if entry is None or not entry.is_dir():
                return None
            self._pins[entry] += 1
            self._used[entry] = next(self._clock)
        os.utime(entry)  # recency for other processes sharing the folder
        return entry

    def _entry(self, evaluation_id: str, version: str) -> Path:
        key = (evaluation_id, version)
        entry = self._pinned_if_present(key)
        if entry is not None:
            return entry
        with self._lock:
            fetch_lock = self._fetch_locks[evaluation_id]
        with fetch_lock:
            entry = self._pinned_if_present(key)  # fetched while we waited
            if entry is not None:
                return entry
            entry = self._fetch(evaluation_id, version)
            with self._lock:
                self._known[key] = entry
                self._pins[entry] += 1
                self._used[entry] = next(self._clock)
        self.evict()
        return entry

    def _fetch(self, evaluation_id: str, version: str) -> Path:
        prefix = evaluation_prefix(evaluation_id)
        wanted: list[tuple[str, int]] = []
        for name, size in self.storage.list(prefix):
            rest = name[len(prefix) :]
            if rest == SUMMARY_FILE or (rest.startswith("predictions/") and PART_NAME.fullmatch(rest[len("predictions/") :])):
                wanted.append((name, size))
        if not any(name.endswith(".parquet") for name, _ in wanted):
            raise ResultSetMissing(
                f"evaluation {evaluation_id} is complete but its result set is missing",
                details={"evaluation_id": evaluation_id},
            )
        material = "\n".join([version] + [f"{name}\t{size}" for name, size in sorted(wanted)])
        digest = hashlib.sha256(material.encode()).hexdigest()[:20]
        entry = self.root / evaluation_id / digest
        if entry.is_dir():
            os.utime(entry)
            return entry
        partial = self.root / ".partial" / f"{evaluation_id}-{digest}-{uuid.uuid4().hex}"
        partial.mkdir(parents=True)
        try:
            started = time.perf_counter()
            for name, _ in wanted:
                self.storage.download_file(name, partial / name.rsplit("/", 1)[1])
            entry.parent.mkdir(parents=True, exist_ok=True)
            try:
                partial.rename(entry)
            except OSError:
                if not entry.is_dir():
                    raise
                # another process put the same entry in place first: keep theirs
            log.info(
                "result set cached",
                extra={
                    "evaluation_id": evaluation_id,
                    "files": len(wanted),
                    "bytes": sum(size for _, size in wanted),
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return entry

    def entries(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [e for d in self.root.iterdir() if not d.name.startswith(".") and d.is_dir() for e in d.iterdir()]

    def evict(self) -> None:
        """Remove least recently used, unpinned entries until under ``max_bytes``."""
        sized = []
        for entry in self.entries():
            try:
                # Entries this process never used go first, oldest first; then its own.
                recency = (1, self._used[entry]) if entry in self._used else (0, entry.stat().st_mtime)
                sized.append((recency, entry, _size_of(entry)))
            except FileNotFoundError:
                continue  # evicted by another process meanwhile
        total = sum(size for _, _, size in sized)
        for _, entry, size in sorted(sized, key=lambda t: t[0]):
            if total <= self.max_bytes:
                break
            with self._lock:
                if self._pins[entry] > 0:
                    continue
                self._known = {k: v for k, v in self._known.items() if v != entry}
                self._used.pop(entry, None)
                trash = self.root / ".partial" / f"evicted-{uuid.uuid4().hex}"
                trash.parent.mkdir(parents=True, exist_ok=True)
                try:
                    entry.rename(trash)
                except FileNotFoundError:
                    continue
            shutil.rmtree(trash, ignore_errors=True)
            total -= size
            log.info("result set evicted", extra={"entry": str(entry), "bytes": size})
        self._remove_stale_partials()

    def _remove_stale_partials(self) -> None:
        """Downloads a crashed process left behind."""
        partials = self.root / ".partial"
        if not partials.is_dir():
            return
        cutoff = time.time() - _STALE_PARTIAL_S
        for path in partials.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)
