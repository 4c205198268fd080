"""Model verification and dataset ingestion on well-formed inputs, in every accepted format."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from devstack import digits
from workers.failures import FailureReason, WorkerFailure
from workers.ingest import IngestLimits, ingest_dataset
from workers.verify import verify_model_archive


def test_a_good_model_is_verified_and_described(digits_model_zip, tmp_path):
    root, report = verify_model_archive(digits_model_zip, tmp_path / "work")
    assert report.label_names == digits.LABEL_NAMES
    assert report.architecture == "ViTForImageClassification"
    assert 100_000 < report.parameter_count < 300_000
    assert report.files == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert report.size == sum((root / f).stat().st_size for f in report.files)


def test_a_model_zipped_inside_a_folder_and_tarred_is_verified(digits_model_dir, tmp_path):
    shutil.copytree(digits_model_dir, tmp_path / "src" / "my-model")
    archive = digits.archive_directory(tmp_path / "src", tmp_path / "m.tar.gz", fmt="tar.gz")
    _, report = verify_model_archive(archive, tmp_path / "work")
    assert report.label_names == digits.LABEL_NAMES


def _variant(model_dir, tmp_path, change):
    staged = tmp_path / "staged"
    shutil.copytree(model_dir, staged)
    change(staged)
    return digits.archive_directory(staged, tmp_path / "model.zip")


def _edit_config(**fields):
    def change(d):
        config = json.loads((d / "config.json").read_text())
        config.update(fields)
        (d / "config.json").write_text(json.dumps(config))

    return change


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: (d / "notes.txt").write_text("hi"), FailureReason.file_not_allowed),
        (lambda d: (d / "model.safetensors").unlink(), FailureReason.missing_weights),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!"), FailureReason.load_error),
        (lambda d: (d / "preprocessor_config.json").unlink(), FailureReason.load_error),
        (lambda d: (d / "config.json").write_text("{not json"), FailureReason.load_error),
        (
            _edit_config(model_type="bert", architectures=["BertForSequenceClassification"]),
            FailureReason.unsupported_architecture,
        ),
        (_edit_config(model_type="no-such-model"), FailureReason.unsupported_architecture),
        (_edit_config(architectures=["ViTForMaskedImageModeling"]), FailureReason.unsupported_architecture),
        (_edit_config(hidden_size=32), FailureReason.weights_mismatch),  # every tensor of another shape
    ],
    ids=[
        "extra-file",
        "no-weights",
        "bad-safetensors",
        "no-processor",
        "bad-json",
        "text-model",
        "unknown-type",
        "not-a-classifier",
        "wrong-shapes",
    ],
)
def test_bad_models_fail_with_a_specific_reason(digits_model_dir, tmp_path, change, reason):
    with pytest.raises(WorkerFailure) as info:
        verify_model_archive(_variant(digits_model_dir, tmp_path, change), tmp_path / "work")
    assert info.value.reason == reason, info.value


def _read_split(out, manifest, split):
    tables = [pq.read_table(out / split / s["name"]) for s in manifest["splits"][split]["shards"]]
    return [row for t in tables for row in t.to_pylist()]


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_imagefolder_archives_become_canonical_shards(digits_test, tmp_path, fmt):
    images, labels = digits_test
    archive = digits.write_imagefolder_archive(
        tmp_path / f"d.{fmt}", {"test": (images[:50], labels[:50]), "validation": (images[50:70], labels[50:70])}, fmt=fmt
    )
    out = tmp_path / "out"
    manifest = ingest_dataset(archive, out, work_dir=tmp_path / "work", limits=IngestLimits(shard_rows=16))
    assert manifest["label_names"] == sorted({digits.LABEL_NAMES[label] for label in labels[:70]})
    assert {s: v["instances"] for s, v in manifest["splits"].items()} == {"test": 50, "validation": 20}
    assert [s["rows"] for s in manifest["splits"]["test"]["shards"]] == [16, 16, 16, 2]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    rows = _read_split(out, manifest, "test")
    by_id = {r["instance_id"]: r for r in rows}
    for i in range(50):
        name = digits.LABEL_NAMES[labels[i]]
        row = by_id[f"test/{name}/{i:05d}.png"]
        assert manifest["label_names"][row["label"]] == name
        assert row["image"] == digits.png_bytes(images[i])  # bytes kept as uploaded
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test", "validation"]


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "inside-a-folder"])
def test_an_archive_with_a_single_split_keeps_its_name(digits_test, tmp_path, wrapped):
    """``test/class/file`` is one split called test, not a wrapper folder around classes."""
    images, labels = digits_test
    archive = digits.write_imagefolder_archive(tmp_path / "one.zip", {"test": (images[:20], labels[:20])})
    if wrapped:
        shutil.unpack_archive(archive, tmp_path / "unpacked" / "my-digits")
        archive = digits.archive_directory(tmp_path / "unpacked", tmp_path / "wrapped.zip")
    manifest = ingest_dataset(archive, tmp_path / "out", work_dir=tmp_path / "work")
    assert {s: v["instances"] for s, v in manifest["splits"].items()} == {"test": 20}


@pytest.mark.parametrize("as_struct", [True, False], ids=["struct", "bytes"])
def test_hf_parquet_becomes_canonical_shards(digits_test, tmp_path, as_struct):
    images, labels = digits_test
    source = digits.write_hf_parquet(tmp_path / "d.parquet", images[:30], labels[:30], image_as_struct=as_struct)
    manifest = ingest_dataset(source, tmp_path / "out", work_dir=tmp_path / "work")
    assert manifest["label_names"] == digits.LABEL_NAMES  # from the ClassLabel metadata
    rows = _read_split(tmp_path / "out", manifest, "train")
    assert [r["label"] for r in rows] == labels[:30]
    assert rows[0]["instance_id"] == "train-00000000"


def test_parquet_written_by_datasets_itself_is_ingested(digits_test, tmp_path):
    datasets = pytest.importorskip("datasets")
    images, labels = digits_test
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=digits.LABEL_NAMES)})
    ds = datasets.Dataset.from_dict({"image": images[:25], "label": labels[:25]}, features=features)
    ds.to_parquet(tmp_path / "d.parquet")
    manifest = ingest_dataset(tmp_path / "d.parquet", tmp_path / "out", work_dir=tmp_path / "work")
    assert manifest["label_names"] == digits.LABEL_NAMES
    assert manifest["splits"]["train"]["instances"] == 25
    assert [r["label"] for r in _read_split(tmp_path / "out", manifest, "train")] == labels[:25]


def test_parquet_with_a_split_column_and_string_labels(digits_test, tmp_path):
    import pyarrow as pa

    images, labels = digits_test
    table = pa.table(
        {
            "image": [digits.png_bytes(i) for i in images[:20]],
            "label": [digits.LABEL_NAMES[label] for label in labels[:20]],
            "split": ["test"] * 12 + ["validation"] * 8,
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    manifest = ingest_dataset(tmp_path / "d.parquet", tmp_path / "out", work_dir=tmp_path / "work")
    assert {s: v["instances"] for s, v in manifest["splits"].items()} == {"test": 12, "validation": 8}
    assert manifest["label_names"] == sorted({digits.LABEL_NAMES[label] for label in labels[:20]})


def test_a_parquet_file_without_images_is_invalid(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"text": ["a"], "label": [0]}), tmp_path / "d.parquet")
    with pytest.raises(WorkerFailure) as info:
        ingest_dataset(tmp_path / "d.parquet", tmp_path / "out", work_dir=tmp_path / "work")
    assert info.value.reason == FailureReason.invalid_dataset


def test_an_archive_without_images_is_empty(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:
        zf.writestr("README.md", "nothing here")
    with pytest.raises(WorkerFailure) as info:
        ingest_dataset(tmp_path / "d.zip", tmp_path / "out", work_dir=tmp_path / "work")
    assert info.value.reason == FailureReason.empty_dataset
