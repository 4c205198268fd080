"""Hostile uploads through the real worker (``TaskRunner`` on the emulators, production
logging): every refusal reaches the entity with its own reason and message on the first
attempt, no name from user data becomes a path outside the worker's directory, and every
size the data controls is bounded."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file, save_file

from devstack import digits
from shared import storage as paths
from shared.entities import Dataset, Evaluation, InferenceConfig, Model, evaluation_fingerprint
from shared.errors import Invalid, Unavailable
from shared.store import ANY_ACCOUNT
from shared.tasks import TaskName, worker_command
from workers.runner import EXIT_ERROR, EXIT_OK, TaskRunner

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "acc_test"


def _upload(store, storage, cls, source: Path, **fields):
    entity_id = cls.new_id()
    obj = paths.upload_object("models" if cls is Model else "datasets", entity_id, source.name)
    storage.upload_file(obj, source)
    entity = cls(
        id=entity_id,
        account=ACCOUNT,
        name="hostile",
        status="verifying",
        attempts=1,
        declared_size=source.stat().st_size,
        content_type="application/octet-stream",
        upload_object=obj,
        **fields,
    )
    store.put(entity)
    return entity


def _run(settings, store, storage, task, entity_id) -> int:
    return TaskRunner(settings=settings, store=store, storage=storage, task=task, entity_id=entity_id, attempt=1).run()


def _snapshot(*roots: Path) -> set[Path]:
    return {p for root in roots if root.exists() for p in root.rglob("*")}


@pytest.fixture
def inputs(tmp_path) -> Path:
    """Where a test builds its uploads (apart from the directories it watches)."""
    (tmp_path / "in").mkdir()
    return tmp_path / "in"


@pytest.fixture
def outside(settings, tmp_path, inputs):
    """Where an escaping write would land: beside the cache dir, and under /tmp by absolute path.
    Yields a unique marker name; checks afterwards that nothing appeared outside the cache."""
    marker = f"assay-escape-{uuid.uuid4().hex}"
    cache = Path(settings.cache_dir)

    def watched() -> set[Path]:
        return {p for p in _snapshot(tmp_path) if not p.is_relative_to(cache) and not p.is_relative_to(inputs)}

    before = watched()
    yield marker
    after = watched()
    assert after == before, f"written outside the cache dir: {sorted(after - before)[:5]}"
    assert not any(Path(d, marker).exists() for d in ("/tmp", "/", str(tmp_path), str(ROOT)))
    assert not list(Path("/tmp").glob(f"{marker}*"))


def _refused_dataset(settings, store, storage, source: Path, reason: str, *, fmt="parquet") -> Dataset:
    dataset = _upload(store, storage, Dataset, source, format=fmt)
    assert _run(settings, store, storage, TaskName.ingest_dataset, dataset.id) == EXIT_OK
    failed = store.get(Dataset, dataset.id, account=ACCOUNT)
    assert (failed.status, failed.reason) == ("failed", reason), failed.message
    assert failed.attempts == 1 and failed.message
    assert list(storage.list(paths.dataset_prefix(dataset.id))) == []  # nothing published
    return failed


def _parquet(path: Path, columns: dict, *, label_names: list[str] | None = None) -> Path:
    png = digits.png_bytes(digits.digits_images("test")[0][0])
    n = len(next(iter(columns.values())))
    table = pa.table({"image": pa.array([png] * n, pa.binary()), **columns})
    if label_names is not None:
        features = {"image": {"_type": "Image"}, "label": {"names": label_names, "_type": "ClassLabel"}}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, path)
    return path


def _imagefolder_zip(path: Path, members: list[str]) -> Path:
    png = digits.png_bytes(digits.digits_images("test")[0][0])
    with zipfile.ZipFile(path, "w") as zf:
        for name in members:
            zf.writestr(name, png)
    return path


# --- 1. names from user data never become paths unchecked ----------------------------------


def test_parquet_split_values_that_are_not_split_names_are_refused(settings, store, storage, inputs, outside):
    for bad in (
        f"../../../../../../tmp/{outside}",
        f"/tmp/{outside}",
        "..",
        ".",
        f"a/../../{outside}",
        "train\n",
        ".hidden",
        "x" * 64,
        "a b",
        "tr\\ain",
        "ünïcode",
    ):
        source = _parquet(inputs / "split.parquet", {"label": ["cat", "dog"], "split": ["train", bad]})
        failed = _refused_dataset(settings, store, storage, source, "invalid_dataset")
        assert "split name" in failed.message, (bad, failed.message)


def test_a_non_string_split_column_is_refused(settings, store, storage, inputs, outside):
    source = _parquet(inputs / "split.parquet", {"label": ["cat", "dog"], "split": [1, 2]})
    assert "'split' must be a string" in _refused_dataset(settings, store, storage, source, "invalid_dataset").message


def test_archive_directories_that_are_not_split_names_are_refused(settings, store, storage, inputs, outside):
    for bad in ("my split", "-dash", "tést", "a" * 64):
        source = _imagefolder_zip(inputs / "d.zip", ["train/cat/0.png", f"{bad}/cat/1.png"])
        failed = _refused_dataset(settings, store, storage, source, "invalid_dataset", fmt="imagefolder-zip")
        assert "split name" in failed.message, (bad, failed.message)


def test_class_names_that_are_not_usable_text_are_refused(settings, store, storage, inputs, outside):
    cases = [
        ("string label", _parquet(inputs / "a.parquet", {"label": ["cat", "bad\nname"]})),
        ("long label", _parquet(inputs / "b.parquet", {"label": ["cat", "x" * 300]})),
        ("blank label", _parquet(inputs / "c.parquet", {"label": ["cat", "   "]})),
        ("declared names", _parquet(inputs / "d.parquet", {"label": [0, 1]}, label_names=["cat", "do\x00g"])),
        ("duplicate declared", _parquet(inputs / "e.parquet", {"label": [0, 1]}, label_names=["cat", "cat"])),
    ]
    for what, source in cases:
        failed = _refused_dataset(settings, store, storage, source, "invalid_dataset")
        assert "class name" in failed.message or "twice" in failed.message, (what, failed.message)
    source = _imagefolder_zip(inputs / "d.zip", ["train/cat/0.png", "train/tab\there/1.png"])
    failed = _refused_dataset(settings, store, storage, source, "invalid_dataset", fmt="imagefolder-zip")
    assert "control characters" in failed.message


def test_archive_members_that_escape_are_refused_through_the_worker(settings, store, storage, inputs, outside):
    for bad in (f"../../{outside}.png", f"/tmp/{outside}.png", f"train/../../../{outside}.png"):
        source = _imagefolder_zip(inputs / "d.zip", ["train/cat/0.png", bad])
        _refused_dataset(settings, store, storage, source, "unsafe_archive", fmt="imagefolder-zip")


def test_an_evaluation_of_a_split_that_is_not_a_split_name_writes_nothing(
    settings, store, storage, digits_model_zip, inputs, outside
):
    """A dataset recorded before names were checked, with a hostile split: the evaluation
    worker refuses it before the split becomes a directory of its cache."""
    model = _upload(store, storage, Model, digits_model_zip)
    assert _run(settings, store, storage, TaskName.verify_model, model.id) == EXIT_OK
    model = store.get(Model, model.id, account=ACCOUNT)
    split = f"../../../../../../tmp/{outside}"
    dataset = Dataset(
        id=Dataset.new_id(),
        account=ACCOUNT,
        name="legacy",
        status="ready",
        declared_size=1,
        content_type="x",
        upload_object="uploads/datasets/x/y",
        digest="0" * 64,
        splits={split: 1},
        label_names=digits.LABEL_NAMES,
    )
    store.put(dataset)
    fingerprint = evaluation_fingerprint(model_id=model.id, dataset_id=dataset.id, split=split, config=InferenceConfig())
    evaluation = Evaluation(
        id=Evaluation.new_id(),
        account=ACCOUNT,
        name="e",
        status="admitted",
        attempts=1,
        model_id=model.id,
        dataset_id=dataset.id,
        split=split,
        fingerprint=fingerprint,
    )
    store.put(evaluation)
    assert _run(settings, store, storage, TaskName.evaluate, evaluation.id) == EXIT_OK
    failed = store.get(Evaluation, evaluation.id, account=ACCOUNT)
    assert (failed.status, failed.reason) == ("failed", "invalid_dataset") and "split name" in failed.message


# --- 2. a refusal reaches the user -----------------------------------------------------------


def _model_zip(model_dir: Path, tmp_path: Path, change) -> Path:
    staged = tmp_path / f"model-{uuid.uuid4().hex[:6]}"
    staged.mkdir()
    for f in model_dir.iterdir():
        (staged / f.name).write_bytes(f.read_bytes())
    change(staged)
    return digits.archive_directory(staged, tmp_path / f"{staged.name}.zip")


def _remote_code(d: Path) -> None:
    config = json.loads((d / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.Evil"}
    (d / "config.json").write_text(json.dumps(config))


def _slip_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("../../evil.json", "{}")
    return path


@pytest.mark.parametrize(
    "build, reason, words",
    [
        (lambda d, t: _slip_zip(t / "slip.zip"), "unsafe_archive", "'..' in archive path"),
        (
            lambda d, t: _model_zip(d, t, lambda s: (s / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")),
            "pickle_weights_refused",
            "pytorch_model.bin",
        ),
        (lambda d, t: _model_zip(d, t, _remote_code), "remote_code_refused", "auto_map"),
        (lambda d, t: _model_zip(d, t, lambda s: save_file({}, str(s / "model.safetensors"))), "weights_mismatch", "missing"),
    ],
    ids=["unsafe-archive", "pickle-weights", "remote-code", "empty-safetensors"],
)
def test_a_model_refusal_reaches_the_entity_with_its_reason_and_message(
    settings, store, storage, digits_model_dir, tmp_path, build, reason, words
):
    model = _upload(store, storage, Model, build(digits_model_dir, tmp_path))
    assert _run(settings, store, storage, TaskName.verify_model, model.id) == EXIT_OK
    failed = store.get(Model, model.id, account=ACCOUNT)
    assert (failed.status, failed.reason) == ("failed", reason), failed.message
    assert words in failed.message and "internal" not in failed.message
    assert list(storage.list(paths.model_prefix(model.id))) == []


def test_dataset_refusals_reach_the_entity_with_their_reason_and_message(settings, store, storage, tmp_path):
    no_label = _parquet(tmp_path / "n.parquet", {"other": [1]})
    assert "lacks column(s) ['label']" in _refused_dataset(settings, store, storage, no_label, "invalid_dataset").message
    (tmp_path / "junk.zip").write_bytes(b"not an archive at all")
    failed = _refused_dataset(settings, store, storage, tmp_path / "junk.zip", "invalid_archive", fmt="imagefolder-zip")
    assert failed.message == "not a zip or tar.gz archive"


@pytest.mark.slow
def test_a_refusal_reaches_the_entity_through_the_worker_process(settings, store, storage, digits_model_dir, tmp_path):
    """``python -m workers`` as the daemon starts it, with its own logging at INFO: the
    refusal is logged and recorded, never ``internal_error (KeyError)``."""
    model = _upload(store, storage, Model, _model_zip(digits_model_dir, tmp_path, _remote_code))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ASSAY_PROJECT": settings.project,
        "ASSAY_BUCKET": settings.bucket,
        "ASSAY_CACHE_DIR": settings.cache_dir,
        "ASSAY_DATASTORE_EMULATOR_HOST": settings.datastore_emulator_host,
        "ASSAY_STORAGE_EMULATOR_HOST": settings.storage_emulator_host,
    }
    if settings.namespace:
        env["ASSAY_NAMESPACE"] = settings.namespace
    done = subprocess.run(
        [sys.executable, *worker_command(TaskName.verify_model, model.id, 1)], env=env, cwd=ROOT, capture_output=True, timeout=300
    )
    log = done.stderr.decode()
    assert done.returncode == EXIT_OK, log[-3000:]
    assert "input refused" in log and "reason='remote_code_refused'" in log and "refusal=" in log
    failed = store.get(Model, model.id, account=ACCOUNT)
    assert (failed.status, failed.reason) == ("failed", "remote_code_refused") and "auto_map" in failed.message


# --- 4. every size the data controls is bounded; a refusal never retries ---------------------


def test_integer_labels_without_names_are_bounded(settings, store, storage, tmp_path):
    source = _parquet(tmp_path / "big.parquet", {"label": pa.array([0, 3_000_000], pa.int64())})
    failed = _refused_dataset(settings, store, storage, source, "invalid_dataset")
    assert "integer label 3000000" in failed.message and "ClassLabel" in failed.message


def test_the_number_of_distinct_labels_is_bounded(settings, store, storage, tmp_path):
    source = _parquet(tmp_path / "many.parquet", {"label": [f"c{i}" for i in range(10_001)]})
    assert "more than 10000 distinct labels" in _refused_dataset(settings, store, storage, source, "invalid_dataset").message
    declared = _parquet(tmp_path / "declared.parquet", {"label": [0]}, label_names=[f"c{i}" for i in range(10_001)])
    assert "10001 classes, more than the limit" in _refused_dataset(settings, store, storage, declared, "invalid_dataset").message
    # Within the count, the names' total length is bounded too (an entity keeps the list).
    long_names = _parquet(tmp_path / "long.parquet", {"label": [0]}, label_names=[f"{i:05d}" + "x" * 250 for i in range(2000)])
    assert "total" in _refused_dataset(settings, store, storage, long_names, "invalid_dataset").message


def test_the_number_of_splits_is_bounded(settings, store, storage, tmp_path):
    source = _parquet(tmp_path / "splits.parquet", {"label": ["a"] * 33, "split": [f"s{i}" for i in range(33)]})
    assert "more than 32 splits" in _refused_dataset(settings, store, storage, source, "invalid_dataset").message


def test_deep_archive_nesting_is_refused_not_a_recursion_error(settings, store, storage, tmp_path):
    deep = _imagefolder_zip(tmp_path / "deep.zip", ["train/cat/0.png", "/".join(["d"] * 1000) + "/x.png"])
    failed = _refused_dataset(settings, store, storage, deep, "archive_too_large", fmt="imagefolder-zip")
    assert "longer than" in failed.message
    nested = _imagefolder_zip(tmp_path / "nested.zip", ["train/cat/0.png", "/".join(["d"] * 17) + "/x.png"])
    failed = _refused_dataset(settings, store, storage, nested, "archive_too_large", fmt="imagefolder-zip")
    assert "18 levels deep, more than the limit of 16" in failed.message


def test_a_backend_refusing_a_write_as_too_large_is_permanent(settings, store, storage, tmp_path):
    """Datastore refuses an entity over 1 MiB with INVALID_ARGUMENT: the same on every try,
    so it is ``Invalid`` (permanent), never ``Unavailable``, and the runner ends the task
    on its first attempt instead of leaving it to be retried."""
    dataset = _upload(store, storage, Dataset, _parquet(tmp_path / "ok.parquet", {"label": ["a"]}), format="parquet")
    huge = ["x" * 250 + str(i) for i in range(5000)]  # ~1.25 MB: over the limit
    with pytest.raises(Invalid) as info:
        store.update(Dataset, dataset.id, account=ANY_ACCOUNT, expected="verifying", label_names=huge)
    assert not isinstance(info.value, Unavailable) and "longer than" in info.value.message

    class OversizedOutput(TaskRunner):  # a body whose output breaks the store's limit
        def _body(self, ctx, entity):
            return {"label_names": huge}

    runner = OversizedOutput(
        settings=settings, store=store, storage=storage, task=TaskName.ingest_dataset, entity_id=dataset.id, attempt=1
    )
    assert runner.run() == EXIT_ERROR  # recorded as failed: not EXIT_TEMPFAIL, so not retried
    failed = store.get(Dataset, dataset.id, account=ACCOUNT)
    assert (failed.status, failed.reason, failed.attempts) == ("failed", "internal_error", 1)
    assert "label_names" in failed.message


def test_a_message_built_from_user_data_is_bounded(settings, store, storage, digits_model_zip, tmp_path):
    """A label mismatch lists the dataset's labels: thousands of long names still make a
    message the entity can hold."""
    model = _upload(store, storage, Model, digits_model_zip)
    assert _run(settings, store, storage, TaskName.verify_model, model.id) == EXIT_OK
    names = [f"{i:04d}" + "y" * 200 for i in range(1000)]
    source = _parquet(tmp_path / "labels.parquet", {"label": list(range(1000))}, label_names=names)
    dataset = _upload(store, storage, Dataset, source, format="parquet")
    assert _run(settings, store, storage, TaskName.ingest_dataset, dataset.id) == EXIT_OK
    assert store.get(Dataset, dataset.id, account=ACCOUNT).status == "ready"
    fingerprint = evaluation_fingerprint(model_id=model.id, dataset_id=dataset.id, split="train", config=InferenceConfig())
    evaluation = Evaluation(
        id=Evaluation.new_id(),
        account=ACCOUNT,
        name="e",
        status="admitted",
        attempts=1,
        model_id=model.id,
        dataset_id=dataset.id,
        split="train",
        fingerprint=fingerprint,
    )
    store.put(evaluation)
    assert _run(settings, store, storage, TaskName.evaluate, evaluation.id) == EXIT_OK
    failed = store.get(Evaluation, evaluation.id, account=ACCOUNT)
    assert (failed.status, failed.reason) == ("failed", "label_mismatch")
    assert 100 < len(failed.message) <= 2000 and failed.message.endswith("…")


# --- 3. weights load strictly ----------------------------------------------------------------


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda sd: {k: v for k, v in sd.items() if not k.startswith("classifier.")}, "parameters missing"),
        (lambda sd: {**sd, "extra.weight": sd["classifier.bias"].clone()}, "1 unexpected"),
        (lambda sd: {**sd, "classifier.bias": sd["classifier.weight"][:, :20].contiguous().clone()}, "1 of another shape"),
        (lambda sd: {f"renamed.{k}": v for k, v in sd.items()}, "unexpected"),
    ],
    ids=["missing", "unexpected", "shape", "renamed"],
)
def test_a_checkpoint_that_does_not_match_the_architecture_is_refused(digits_model_dir, tmp_path, change, words):
    from workers.failures import WorkerFailure
    from workers.verify import verify_model_dir

    staged = tmp_path / "m"
    staged.mkdir()
    for f in digits_model_dir.iterdir():
        (staged / f.name).write_bytes(f.read_bytes())
    save_file(change(load_file(str(staged / "model.safetensors"))), str(staged / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WorkerFailure) as info:
        verify_model_dir(staged)
    assert info.value.reason == "weights_mismatch" and words in info.value.message, info.value.message


def test_the_same_model_evaluated_twice_gives_identical_predictions(settings, store, storage, digits_model_zip, digits_parquet):
    model = _upload(store, storage, Model, digits_model_zip)
    dataset = _upload(store, storage, Dataset, digits_parquet, format="parquet")
    assert _run(settings, store, storage, TaskName.verify_model, model.id) == EXIT_OK
    assert _run(settings, store, storage, TaskName.ingest_dataset, dataset.id) == EXIT_OK
    predictions = []
    for top_k in (5, 3):  # two evaluations (two fingerprints) of the same model and split
        config = InferenceConfig(top_k=top_k)
        fingerprint = evaluation_fingerprint(model_id=model.id, dataset_id=dataset.id, split="train", config=config)
        evaluation = Evaluation(
            id=Evaluation.new_id(),
            account=ACCOUNT,
            name="e",
            status="admitted",
            attempts=1,
            model_id=model.id,
            dataset_id=dataset.id,
            split="train",
            config=config,
            fingerprint=fingerprint,
        )
        store.put(evaluation)
        assert _run(settings, store, storage, TaskName.evaluate, evaluation.id) == EXIT_OK
        assert store.get(Evaluation, evaluation.id, account=ACCOUNT).status == "complete"
        shards = sorted(n for n, _ in storage.list(paths.evaluation_prefix(evaluation.id) + "predictions/"))
        table = pa.concat_tables(pq.read_table(io.BytesIO(storage.read_bytes(n))) for n in shards)
        predictions.append(table.select(["instance_id", "prediction", "confidence"]).to_pydict())
    assert len(predictions[0]["prediction"]) == 449
    assert predictions[0] == predictions[1]


def test_a_config_sizing_a_larger_model_than_its_weights_is_refused_before_allocating(digits_model_dir, tmp_path):
    """hidden_size 65,536 on the digits weights: the architecture would need ~100 GB; it is
    measured on the meta device and refused, never allocated and initialised at random."""
    from workers.failures import WorkerFailure
    from workers.verify import verify_model_dir

    staged = tmp_path / "m"
    staged.mkdir()
    for f in digits_model_dir.iterdir():
        (staged / f.name).write_bytes(f.read_bytes())
    config = json.loads((staged / "config.json").read_text())
    config.update(hidden_size=65_536, intermediate_size=65_536 * 4)
    (staged / "config.json").write_text(json.dumps(config))
    with pytest.raises(WorkerFailure) as info:
        verify_model_dir(staged)
    assert info.value.reason == "weights_mismatch" and "the architecture needs" in info.value.message
