"""Safe extraction of user archives (zip, tar.gz) into a work directory.

An upload is hostile until proven otherwise. Only regular files and directories are
extracted; any absolute path, ``..`` component, drive letter, backslash, symbolic link, hard
link, device or FIFO refuses the whole archive. Sizes declared in headers are not trusted:
bytes are counted as they are written, so a lying zip bomb is stopped at the cap, and the
compression ratio (bytes out / archive bytes) is checked the same way. Files are created
with ``O_EXCL | O_NOFOLLOW`` inside a fresh directory, so nothing can land outside it.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from workers.failures import FailureReason, WorkerFailure
from workers.workdir import inside

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    max_total_bytes: int = 4 * 1024**3
    max_files: int = 200_000
    max_ratio: float = 200.0
    # Directories deep: far beyond any real layout, far below what recursive tree walks
    # (pathlib's mkdir and glob, shutil.rmtree) survive (~1,000 levels end in RecursionError).
    max_depth: int = 16
    max_name_chars: int = 1024  # a member's whole path
    # A ratio check only means something once enough bytes came out; tiny archives of
    # text (config.json) compress well and are harmless.
    ratio_floor_bytes: int = 8 * 1024**2


@dataclass(frozen=True)
class Extracted:
    root: Path
    files: list[str]  # posix paths relative to root
    total_bytes: int


def archive_format(path: str | Path) -> str:
    """``zip`` or ``tar.gz`` from the magic bytes (never from the file name)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    raise WorkerFailure(FailureReason.invalid_archive, "not a zip or tar.gz archive")


def safe_member_path(name: str, limits: ArchiveLimits = ArchiveLimits()) -> PurePosixPath:
    """The relative path a member may be written to; refuses anything that could escape,
    and paths longer or deeper than ``limits`` allow."""
    if len(name) > limits.max_name_chars:
        raise WorkerFailure(
            FailureReason.archive_too_large, f"member name longer than {limits.max_name_chars} characters: {name[:80]!r}…"
        )
    if not name or "\x00" in name or "\\" in name:
        raise WorkerFailure(FailureReason.unsafe_archive, f"member name not allowed: {name!r}")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise WorkerFailure(FailureReason.unsafe_archive, f"absolute path in archive: {name!r}")
    if any(part == ".." for part in path.parts):
        raise WorkerFailure(FailureReason.unsafe_archive, f"'..' in archive path: {name!r}")
    if path.parts and ":" in path.parts[0]:
        raise WorkerFailure(FailureReason.unsafe_archive, f"drive letter in archive path: {name!r}")
    parts = [p for p in path.parts if p != "."]
    if not parts:
        raise WorkerFailure(FailureReason.unsafe_archive, f"empty member path: {name!r}")
    if len(parts) > limits.max_depth:
        raise WorkerFailure(
            FailureReason.archive_too_large,
            f"member nested {len(parts)} levels deep, more than the limit of {limits.max_depth}: {name[:80]!r}",
        )
    return PurePosixPath(*parts)


class _Writer:
    """Writes members under ``root``, counting bytes and files against the limits."""

    def __init__(self, root: Path, archive_bytes: int, limits: ArchiveLimits):
        self.root = root
        self.archive_bytes = max(archive_bytes, 1)
        self.limits = limits
        self.total = 0
        self.files: list[str] = []
        self.seen: set[str] = set()

    def _target(self, rel: PurePosixPath) -> Path:
        key = rel.as_posix()
        if key in self.seen:
            raise WorkerFailure(FailureReason.unsafe_archive, f"duplicate member: {key!r}")
        self.seen.add(key)
        return self._inside(rel)

    def _inside(self, rel: PurePosixPath) -> Path:
        # Belt and braces: safe_member_path already forbids every way out.
        try:
            return inside(self.root, rel)
        except WorkerFailure as e:
            raise WorkerFailure(FailureReason.unsafe_archive, e.message) from e

    def directory(self, rel: PurePosixPath) -> None:
        self._inside(rel).mkdir(parents=True, exist_ok=True)

    def file(self, rel: PurePosixPath, source: IO[bytes]) -> None:
        if len(self.files) >= self.limits.max_files:
            raise WorkerFailure(FailureReason.archive_too_large, f"more than {self.limits.max_files} files")
        target = self._target(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(target, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(_CHUNK):
                self.total += len(chunk)
                self._check_totals()
                out.write(chunk)
        self.files.append(rel.as_posix())

    def _check_totals(self) -> None:
        if self.total > self.limits.max_total_bytes:
            raise WorkerFailure(FailureReason.archive_too_large, f"extracted size exceeds {self.limits.max_total_bytes} bytes")
        if self.total > self.limits.ratio_floor_bytes and self.total / self.archive_bytes > self.limits.max_ratio:
            raise WorkerFailure(
                FailureReason.archive_bomb,
                f"compression ratio exceeds {self.limits.max_ratio:g} (a decompression bomb?)",
            )


def _zip_members(zf: zipfile.ZipFile, limits: ArchiveLimits) -> Iterator[tuple[zipfile.ZipInfo, PurePosixPath, bool]]:
    for info in zf.infolist():
        rel = safe_member_path(info.filename, limits)
        # Unix zips keep st_mode in the high bits; a type of 0 (no type recorded) is a file.
        file_type = stat.S_IFMT(info.external_attr >> 16)
        if info.create_system == 3 and file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
            kind = "symbolic link" if file_type == stat.S_IFLNK else "special file"
            raise WorkerFailure(FailureReason.unsafe_archive, f"{kind} in archive: {info.filename!r}")
        yield info, rel, info.is_dir()


def _extract_zip(path: Path, writer: _Writer) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            members = list(_zip_members(zf, writer.limits))  # refuse before writing anything
            declared = sum(info.file_size for info, _, _ in members)
            if declared > writer.limits.max_total_bytes:
                raise WorkerFailure(FailureReason.archive_too_large, f"declares {declared} bytes uncompressed")
            for info, rel, is_dir in members:
                if is_dir:
                    writer.directory(rel)
                    continue
                with zf.open(info) as source:
                    writer.file(rel, source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, OSError) as e:
        raise WorkerFailure(FailureReason.invalid_archive, f"corrupt zip archive: {e}") from e


def _extract_tar(path: Path, writer: _Writer) -> None:
    try:
        with tarfile.open(path, mode="r:gz") as tf:
            # Streaming: members are checked one by one as the gzip stream is read, and
            # bytes counted as written, so neither headers nor sizes are taken on trust.
            for member in tf:
                rel = safe_member_path(member.name, writer.limits)
                if member.isdir():
                    writer.directory(rel)
                elif member.isfile():
                    source = tf.extractfile(member)
                    if source is None:
                        raise WorkerFailure(FailureReason.invalid_archive, f"unreadable member {member.name!r}")
                    writer.file(rel, source)
                else:
                    kind = "symbolic link" if member.issym() else "hard link" if member.islnk() else "device or special file"
                    raise WorkerFailure(FailureReason.unsafe_archive, f"{kind} in archive: {member.name!r}")
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, FileExistsError):
            raise WorkerFailure(FailureReason.unsafe_archive, f"member written twice: {e.filename}") from e
        raise WorkerFailure(FailureReason.invalid_archive, f"corrupt tar.gz archive: {e}") from e


def extract_archive(archive: str | Path, dest: str | Path, *, limits: ArchiveLimits = ArchiveLimits()) -> Extracted:
    """Extract ``archive`` into ``dest`` (created; must not exist or be empty).

    Raises:
        WorkerFailure: ``invalid_archive``, ``unsafe_archive``, ``archive_too_large`` or
            ``archive_bomb``. What was written so far stays under ``dest`` only.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"extraction directory {dest} is not empty")
    writer = _Writer(dest, archive.stat().st_size, limits)
    fmt = archive_format(archive)
    if fmt == "zip":
        _extract_zip(archive, writer)
    else:
        _extract_tar(archive, writer)
    return Extracted(root=dest, files=sorted(writer.files), total_bytes=writer.total)


def strip_common_root(extracted: Extracted) -> Path:
    """Users zip a folder as often as its contents: descend through one lone top directory."""
    root = extracted.root
    while True:
        entries = [p for p in root.iterdir() if p.name not in {"__MACOSX"}]
        if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
            root = entries[0]
        else:
            return root
