"""Hostile inputs: each is refused with its own reason, and nothing lands outside the work dir."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from devstack import digits
from workers.archive import ArchiveLimits, extract_archive
from workers.failures import FailureReason, WorkerFailure
from workers.images import ImageProblem, InvalidImage, decode_image
from workers.ingest import IngestLimits, ingest_dataset
from workers.verify import verify_model_archive


def _zip(path: Path, members: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tar(path: Path, build) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        build(tf)
    return path


def _add_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _add_special(tf: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    tf.addfile(info)


@pytest.fixture
def sandbox(tmp_path):
    """A directory holding only the archive and the work dir, to prove nothing escapes."""
    (tmp_path / "in").mkdir()
    return tmp_path


def _refused(sandbox: Path, archive: Path, reason: FailureReason, limits: ArchiveLimits = ArchiveLimits()):
    before = {p for p in sandbox.rglob("*") if p != sandbox / "work"}
    with pytest.raises(WorkerFailure) as info:
        extract_archive(archive, sandbox / "work", limits=limits)
    assert info.value.reason == reason, info.value
    after = {p for p in sandbox.rglob("*") if not p.is_relative_to(sandbox / "work")}
    assert after == before, "something was written outside the work directory"
    assert not any(p.is_symlink() for p in (sandbox / "work").rglob("*"))
    return info.value


def test_zip_slip_is_refused(sandbox):
    archive = _zip(sandbox / "in" / "a.zip", {"ok.txt": b"x", "../../evil.txt": b"pwned"})
    _refused(sandbox, archive, FailureReason.unsafe_archive)
    assert not (sandbox / "evil.txt").exists() and not (sandbox.parent / "evil.txt").exists()


def test_tar_slip_is_refused(sandbox):
    archive = _tar(sandbox / "in" / "a.tar.gz", lambda tf: _add_file(tf, "a/../../evil.txt", b"pwned"))
    _refused(sandbox, archive, FailureReason.unsafe_archive)


@pytest.mark.parametrize("name", ["/tmp/assay-evil.txt", "C:/evil.txt", "a\\..\\evil.txt"])
def test_absolute_and_windows_paths_are_refused(sandbox, name):
    archive = _zip(sandbox / "in" / "a.zip", {name: b"pwned"})
    _refused(sandbox, archive, FailureReason.unsafe_archive)
    assert not Path("/tmp/assay-evil.txt").exists()


def test_absolute_path_in_tar_is_refused(sandbox):
    archive = _tar(sandbox / "in" / "a.tar.gz", lambda tf: _add_file(tf, "/tmp/assay-evil.txt", b"pwned"))
    _refused(sandbox, archive, FailureReason.unsafe_archive)
    assert not Path("/tmp/assay-evil.txt").exists()


def test_symlink_in_zip_is_refused(sandbox):
    archive = _zip(sandbox / "in" / "a.zip", {}, symlinks={"config.json": "/etc/passwd"})
    _refused(sandbox, archive, FailureReason.unsafe_archive)


def test_symlink_then_write_through_it_in_tar_is_refused(sandbox):
    def build(tf):
        _add_special(tf, "escape", tarfile.SYMTYPE, str(sandbox))
        _add_file(tf, "escape/evil.txt", b"pwned")

    _refused(sandbox, _tar(sandbox / "in" / "a.tar.gz", build), FailureReason.unsafe_archive)
    assert not (sandbox / "evil.txt").exists()


def test_hard_link_in_tar_is_refused(sandbox):
    archive = _tar(sandbox / "in" / "a.tar.gz", lambda tf: _add_special(tf, "passwd", tarfile.LNKTYPE, "/etc/passwd"))
    _refused(sandbox, archive, FailureReason.unsafe_archive)


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_device_files_in_tar_are_refused(sandbox, kind):
    archive = _tar(sandbox / "in" / "a.tar.gz", lambda tf: _add_special(tf, "dev", kind))
    _refused(sandbox, archive, FailureReason.unsafe_archive)


def test_zip_bomb_is_stopped_by_the_ratio_cap(sandbox):
    archive = _zip(sandbox / "in" / "bomb.zip", {"zeros.bin": bytes(64 * 1024**2)})
    assert archive.stat().st_size < 200_000
    limits = ArchiveLimits(max_ratio=100, ratio_floor_bytes=1024**2)
    _refused(sandbox, archive, FailureReason.archive_bomb, limits)
    # Bytes are counted as written: the bomb stopped early, not after 64 MiB.
    assert sum(p.stat().st_size for p in (sandbox / "work").rglob("*") if p.is_file()) < 16 * 1024**2


def test_zip_bomb_with_a_lying_header_is_stopped_while_writing(sandbox):
    archive = _zip(sandbox / "in" / "bomb.zip", {"zeros.bin": bytes(8 * 1024**2)})
    _refused(sandbox, archive, FailureReason.archive_too_large, ArchiveLimits(max_total_bytes=1024**2))


def test_too_many_files_is_refused(sandbox):
    archive = _zip(sandbox / "in" / "many.zip", {f"f{i}.txt": b"x" for i in range(20)})
    _refused(sandbox, archive, FailureReason.archive_too_large, ArchiveLimits(max_files=10))


def test_not_an_archive_is_refused(sandbox):
    path = sandbox / "in" / "x.zip"
    path.write_bytes(b"this is not an archive")
    _refused(sandbox, path, FailureReason.invalid_archive)


def test_duplicate_members_are_refused(sandbox):
    def build(tf):
        _add_file(tf, "config.json", b"{}")
        _add_file(tf, "config.json", b'{"evil": 1}')

    _refused(sandbox, _tar(sandbox / "in" / "a.tar.gz", build), FailureReason.unsafe_archive)


# --- models ---------------------------------------------------------------------------------


def _model_variant(model_dir: Path, tmp_path: Path, change) -> Path:
    staged = tmp_path / "staged"
    shutil.copytree(model_dir, staged)
    change(staged)
    return digits.archive_directory(staged, tmp_path / "model.zip")


class _Evil:
    def __reduce__(self):
        return (print, ("pickle executed",))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "training_args.bin", "weights.pt"])
def test_pickle_weights_are_refused_without_being_read(digits_model_dir, tmp_path, name):
    archive = _model_variant(digits_model_dir, tmp_path, lambda d: (d / name).write_bytes(pickle.dumps(_Evil())))
    with pytest.raises(WorkerFailure) as info:
        verify_model_archive(archive, tmp_path / "work")
    assert info.value.reason == FailureReason.pickle_weights_refused


def test_pickle_disguised_as_safetensors_is_refused(digits_model_dir, tmp_path):
    archive = _model_variant(digits_model_dir, tmp_path, lambda d: (d / "model.safetensors").write_bytes(pickle.dumps(_Evil())))
    with pytest.raises(WorkerFailure) as info:
        verify_model_archive(archive, tmp_path / "work")
    assert info.value.reason == FailureReason.pickle_weights_refused


def test_config_asking_for_remote_code_is_refused(digits_model_dir, tmp_path):
    def change(d: Path):
        config = json.loads((d / "config.json").read_text())
        config["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.EvilModel"}
        (d / "config.json").write_text(json.dumps(config))

    with pytest.raises(WorkerFailure) as info:
        verify_model_archive(_model_variant(digits_model_dir, tmp_path, change), tmp_path / "work")
    assert info.value.reason == FailureReason.remote_code_refused


def test_model_code_files_are_refused(digits_model_dir, tmp_path):
    archive = _model_variant(
        digits_model_dir, tmp_path, lambda d: (d / "modeling_evil.py").write_text("import os; os.system('id')")
    )
    with pytest.raises(WorkerFailure) as info:
        verify_model_archive(archive, tmp_path / "work")
    assert info.value.reason == FailureReason.remote_code_refused


# --- images ---------------------------------------------------------------------------------


def _png_bomb(side: int = 30_000) -> bytes:
    """A PNG whose header claims side × side pixels; a few hundred KiB on disk."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    return _png_bomb()


def test_png_decompression_bomb_is_refused_before_decoding(png_bomb):
    assert len(png_bomb) < 1024**2
    with pytest.raises(InvalidImage) as info:
        decode_image(png_bomb)
    assert info.value.problem == ImageProblem.decompression_bomb


def test_corrupt_image_is_undecodable(digits_test):
    data = digits.png_bytes(digits_test[0][0])
    with pytest.raises(InvalidImage) as info:
        decode_image(data[: len(data) // 2])
    assert info.value.problem == ImageProblem.undecodable


def test_bad_images_are_counted_and_reported_then_refused_above_the_threshold(digits_test, png_bomb, tmp_path):
    images, labels = digits_test
    encoded = [digits.png_bytes(image) for image in images[:40]]
    encoded[3] = encoded[3][:50]  # truncated
    encoded[7] = b"not an image at all"
    encoded[11] = png_bomb
    source = digits.write_hf_parquet(tmp_path / "d.parquet", images[:40], labels[:40], encoded=encoded)

    manifest = ingest_dataset(source, tmp_path / "ok", work_dir=tmp_path / "w1", limits=IngestLimits(max_invalid_fraction=0.1))
    assert manifest["instances"] == 37
    assert manifest["invalid_instances"] == 3
    assert manifest["invalid_problems"] == {"undecodable": 2, "decompression_bomb": 1}
    assert {e["instance_id"] for e in manifest["invalid_examples"]} == {"train-00000003", "train-00000007", "train-00000011"}

    with pytest.raises(WorkerFailure) as info:
        ingest_dataset(source, tmp_path / "refused", work_dir=tmp_path / "w2", limits=IngestLimits(max_invalid_fraction=0.05))
    assert info.value.reason == FailureReason.too_many_invalid_images
    assert info.value.details["problems"] == {"undecodable": 2, "decompression_bomb": 1}
