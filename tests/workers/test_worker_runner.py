"""The runner against the real emulators: inputs from Cloud Storage, outputs back there, and
every status change a compare-and-set that checks the attempt."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from devstack import digits
from shared import storage as paths
from shared.entities import Dataset, Evaluation, InferenceConfig, Model, evaluation_fingerprint
from shared.store import ANY_ACCOUNT
from shared.tasks import TaskName, worker_command
from workers.runner import EXIT_OK, TaskRunner

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "acc_test"


def _upload(store, storage, cls, name: str, source: Path, **fields):
    entity_id = cls.new_id()
    kind = "models" if cls is Model else "datasets"
    obj = paths.upload_object(kind, entity_id, source.name)
    storage.upload_file(obj, source)
    entity = cls(
        id=entity_id,
        account=ACCOUNT,
        name=name,
        status="verifying",
        attempts=1,
        declared_size=source.stat().st_size,
        content_type="application/octet-stream",
        upload_object=obj,
        **fields,
    )
    store.put(entity)
    return entity


def _run(settings, store, storage, task, entity_id, attempt=1) -> int:
    return TaskRunner(settings=settings, store=store, storage=storage, task=task, entity_id=entity_id, attempt=attempt).run()


@pytest.fixture
def ready_inputs(settings, store, storage, digits_model_zip, digits_parquet):
    model = _upload(store, storage, Model, "digits-vit", digits_model_zip)
    dataset = _upload(store, storage, Dataset, "digits", digits_parquet, format="parquet")
    assert _run(settings, store, storage, TaskName.verify_model, model.id) == EXIT_OK
    assert _run(settings, store, storage, TaskName.ingest_dataset, dataset.id) == EXIT_OK
    return store.get(Model, model.id, account=ACCOUNT), store.get(Dataset, dataset.id, account=ACCOUNT)


def _evaluation(store, model, dataset, *, split="train", config=InferenceConfig(), attempts=1, status="admitted"):
    fingerprint = evaluation_fingerprint(model_id=model.id, dataset_id=dataset.id, split=split, config=config)
    evaluation = Evaluation(
        id=Evaluation.new_id(),
        account=ACCOUNT,
        name="eval",
        status=status,
        attempts=attempts,
        model_id=model.id,
        dataset_id=dataset.id,
        split=split,
        config=config,
        fingerprint=fingerprint,
    )
    store.put(evaluation)
    return evaluation


def test_verify_ingest_and_evaluate_end_to_end(settings, store, storage, ready_inputs):
    model, dataset = ready_inputs
    assert model.status == "ready" and model.reason is None
    assert model.label_names == digits.LABEL_NAMES and model.architecture == "ViTForImageClassification"
    assert model.parameter_count > 100_000 and len(model.digest) == 64 and model.finished_at is not None
    assert {n for n, _ in storage.list(paths.model_prefix(model.id))} == {
        paths.model_prefix(model.id) + f
        for f in ("config.json", "model.safetensors", "preprocessor_config.json", "manifest.json")
    }
    assert dataset.status == "ready" and dataset.splits == {"train": 449} and dataset.invalid_instances == 0
    assert storage.exists(paths.dataset_shard(dataset.id, "train", 0))
    assert json.loads(storage.read_bytes(paths.dataset_manifest(dataset.id)))["label_names"] == digits.LABEL_NAMES

    evaluation = _evaluation(store, model, dataset)
    assert _run(settings, store, storage, TaskName.evaluate, evaluation.id) == EXIT_OK
    done = store.get(Evaluation, evaluation.id, account=ACCOUNT)
    assert done.status == "complete", (done.reason, done.message)
    assert done.summary["accuracy"] > 0.9 and done.summary["instances"] == 449
    assert "per_class" not in done.summary and done.summary["efficiency"]["device"] == "cpu"
    assert done.result_prefix == paths.evaluation_prefix(evaluation.id) and done.progress == 1.0
    assert storage.exists(paths.prediction_shard(evaluation.id, 0))
    summary = json.loads(storage.read_bytes(paths.evaluation_summary(evaluation.id)))
    assert summary["accuracy"] == done.summary["accuracy"] and "confusion_matrix" in summary


def test_a_refusal_is_recorded_as_failed_with_its_reason(settings, store, storage, digits_model_dir, tmp_path):
    staged = tmp_path / "m"
    staged.mkdir()
    for f in digits_model_dir.iterdir():
        (staged / f.name).write_bytes(f.read_bytes())
    (staged / "pytorch_model.bin").write_bytes(pickle.dumps({"w": 1}))
    model = _upload(store, storage, Model, "evil", digits.archive_directory(staged, tmp_path / "evil.zip"))
    assert _run(settings, store, storage, TaskName.verify_model, model.id) == EXIT_OK
    failed = store.get(Model, model.id, account=ACCOUNT)
    assert (failed.status, failed.reason) == ("failed", "pickle_weights_refused")
    assert list(storage.list(paths.model_prefix(model.id))) == []


def test_a_stale_attempt_writes_nothing(settings, store, storage, digits_model_zip):
    model = _upload(store, storage, Model, "m", digits_model_zip)
    store.update(Model, model.id, account=ANY_ACCOUNT, attempts=2)
    before = store.get(Model, model.id, account=ACCOUNT)
    assert _run(settings, store, storage, TaskName.verify_model, model.id, attempt=1) == EXIT_OK
    assert store.get(Model, model.id, account=ACCOUNT) == before


def test_label_mismatch_fails_and_a_mapping_fixes_it(settings, store, storage, ready_inputs, tmp_path):
    model, _ = ready_inputs
    images, labels = digits.digits_images("test")
    source = digits.write_hf_parquet(tmp_path / "d.parquet", images[:40], labels[:40], label_names=[str(i) for i in range(10)])
    dataset = _upload(store, storage, Dataset, "numbers", source, format="parquet")
    assert _run(settings, store, storage, TaskName.ingest_dataset, dataset.id) == EXIT_OK
    dataset = store.get(Dataset, dataset.id, account=ACCOUNT)

    evaluation = _evaluation(store, model, dataset)
    assert _run(settings, store, storage, TaskName.evaluate, evaluation.id) == EXIT_OK
    failed = store.get(Evaluation, evaluation.id, account=ACCOUNT)
    assert (failed.status, failed.reason) == ("failed", "label_mismatch")
    assert "'0'" in failed.message

    config = InferenceConfig(label_mapping={str(i): name for i, name in enumerate(digits.LABEL_NAMES)})
    mapped = _evaluation(store, model, dataset, config=config)
    assert _run(settings, store, storage, TaskName.evaluate, mapped.id) == EXIT_OK
    assert store.get(Evaluation, mapped.id, account=ACCOUNT).status == "complete"


def test_a_resumed_evaluation_keeps_published_shards(settings, store, storage, ready_inputs):
    model, dataset = ready_inputs
    first = _evaluation(store, model, dataset)
    assert _run(settings, store, storage, TaskName.evaluate, first.id) == EXIT_OK
    shard0 = storage.read_bytes(paths.prediction_shard(first.id, 0))

    # A second evaluation whose earlier attempt published shard 0 (with a marker we can see).
    second = _evaluation(store, model, dataset, attempts=2)
    storage.write_bytes(paths.prediction_shard(second.id, 0), shard0)
    assert _run(settings, store, storage, TaskName.evaluate, second.id, attempt=2) == EXIT_OK
    done = store.get(Evaluation, second.id, account=ACCOUNT)
    assert done.status == "complete" and done.summary["efficiency"]["shards_resumed"] == 1
    assert done.summary["accuracy"] == store.get(Evaluation, first.id, account=ACCOUNT).summary["accuracy"]


@pytest.mark.slow
def test_the_worker_command_runs_as_a_process(settings, store, storage, digits_model_zip):
    model = _upload(store, storage, Model, "m", digits_model_zip)
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
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert store.get(Model, model.id, account=ACCOUNT).status == "ready"


def test_heartbeat_renews_the_lease_writes_progress_and_notices_a_cancel(settings, store, storage, ready_inputs):
    from workers.runner import Heartbeat, TaskLost

    model, dataset = ready_inputs
    evaluation = _evaluation(store, model, dataset)
    runner = TaskRunner(
        settings=settings, store=store, storage=storage, task=TaskName.evaluate, entity_id=evaluation.id, attempt=1
    )
    started = runner.begin()
    assert started.status == "running" and started.lease_expires_at is not None
    heartbeat = Heartbeat(runner, interval=3600)
    heartbeat.report(0.4, "2/5 shards")
    heartbeat.beat()
    beat = store.get(Evaluation, evaluation.id, account=ACCOUNT)
    assert (beat.progress, beat.progress_message) == (0.4, "2/5 shards")
    assert beat.lease_expires_at > started.lease_expires_at

    store.transition(Evaluation, evaluation.id, account=ANY_ACCOUNT, expected="running", to="cancelled")
    with pytest.raises(TaskLost):
        heartbeat.beat()
    assert runner.finish("complete") is False  # the final compare-and-set loses, quietly
    assert store.get(Evaluation, evaluation.id, account=ACCOUNT).status == "cancelled"
