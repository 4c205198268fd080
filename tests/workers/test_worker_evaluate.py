"""Exactness: predictions equal the transformers pipeline, metrics equal scikit-learn's, and a
run killed after its second shard resumes to byte-identical predictions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn import metrics as skm

from shared.results import PREDICTION_SCHEMA
from workers import digits
from workers.evaluate import EvalOptions, align_labels, evaluate_shards, summarize
from workers.failures import FailureReason, WorkerFailure
from workers.verify import label_names, load_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def loaded(digits_model_dir):
    return load_model(digits_model_dir)


@pytest.fixture(scope="module")
def evaluated(loaded, ingested_digits, tmp_path_factory):
    """One full run over the 5 canonical shards: (prediction paths, summary, stats)."""
    model, processor = loaded
    dataset, manifest = ingested_digits
    shards = sorted((dataset / "train").glob("part-*.parquet"))
    out = tmp_path_factory.mktemp("predictions")
    label_map = align_labels(manifest["label_names"], label_names(model))
    stats = evaluate_shards(model, processor, shards, out, label_map=label_map, options=EvalOptions(batch_size=32))
    paths = sorted(out.glob("part-*.parquet"))
    return paths, summarize(paths, label_names(model), stats), stats


def test_predictions_equal_the_pipeline_top1(loaded, evaluated, digits_test):
    from transformers import pipeline

    model, processor = loaded
    paths, _, _ = evaluated
    table = pa.concat_tables([pq.read_table(p) for p in paths])
    images, labels = digits_test
    assert table.column("instance_id").to_pylist() == [f"train-{i:08d}" for i in range(len(images))]
    classify = pipeline("image-classification", model=model, image_processor=processor, device="cpu")
    expected = [result[0] for result in classify(images, batch_size=1)]
    names = label_names(model)
    assert [names[i] for i in table.column("prediction").to_pylist()] == [e["label"] for e in expected]
    # The stored top-k is the pipeline's top-k, best first.
    assert [[names[i] for i in ids] for ids in table.column("topk_ids").to_pylist()] == [
        [r["label"] for r in result] for result in classify(images, top_k=5)
    ]
    np.testing.assert_allclose(table.column("confidence").to_numpy(), [e["score"] for e in expected], rtol=1e-4, atol=1e-6)
    assert table.column("label").to_pylist() == labels
    assert table.schema == PREDICTION_SCHEMA


def test_metrics_equal_scikit_learn(evaluated, loaded, digits_test):
    model, processor = loaded
    paths, summary, _ = evaluated
    table = pa.concat_tables([pq.read_table(p) for p in paths])
    y = table.column("label").to_numpy()
    p = table.column("prediction").to_numpy()
    assert summary["accuracy"] == pytest.approx(skm.accuracy_score(y, p), abs=1e-12)
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = skm.precision_recall_fscore_support(y, p, average=average, zero_division=0)
        assert summary[f"precision_{average}"] == pytest.approx(precision, abs=1e-12)
        assert summary[f"recall_{average}"] == pytest.approx(recall, abs=1e-12)
        assert summary[f"f1_{average}"] == pytest.approx(f1, abs=1e-12)
    classes = np.union1d(y, p)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, p, labels=classes, zero_division=0)
    names = label_names(model)
    for i, c in enumerate(classes):
        got = summary["per_class"][names[c]]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((precision[i], recall[i], f1[i], support[i]))
    assert summary["confusion_matrix"]["matrix"] == skm.confusion_matrix(y, p, labels=classes).tolist()

    # Log loss and top-5 accuracy need every class's probability: recompute them in full.
    pixels = processor(images=digits_test[0], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        probs = model(pixel_values=pixels).logits.float().softmax(-1).numpy()
    all_classes = np.arange(len(names))
    assert summary["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=all_classes), rel=1e-5)
    assert summary["top_5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=5, labels=all_classes))


def test_resumed_run_after_a_kill_is_byte_identical(evaluated, ingested_digits, digits_model_dir, tmp_path):
    """A separate process evaluates, and is SIGKILLed right after its second shard is written."""
    dataset, _ = ingested_digits
    out = tmp_path / "predictions"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from workers.evaluate import EvalOptions, align_labels, evaluate_shards
        from workers.verify import label_names, load_model
        model, processor = load_model(Path({str(digits_model_dir)!r}))
        shards = sorted(Path({str(dataset / "train")!r}).glob("part-*.parquet"))
        names = label_names(model)

        def on_shard(index, path, stats):
            if stats.shards_done == 2:
                os.kill(os.getpid(), signal.SIGKILL)

        evaluate_shards(model, processor, shards, Path({str(out)!r}), label_map=align_labels(names, names),
                        options=EvalOptions(batch_size=32), on_shard=on_shard)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]

    model, processor = load_model(digits_model_dir)
    names = label_names(model)
    shards = sorted((dataset / "train").glob("part-*.parquet"))
    stats = evaluate_shards(model, processor, shards, out, label_map=align_labels(names, names), options=EvalOptions(batch_size=32))
    assert (stats.shards_skipped, stats.shards_done) == (2, 3)
    reference, _, _ = evaluated
    assert sorted(p.name for p in out.glob("*.parquet")) == [p.name for p in reference]
    for path in reference:
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name


def test_efficiency_is_reported(evaluated):
    _, summary, _ = evaluated
    eff = summary["efficiency"]
    assert eff["instances_per_second"] > 0 and eff["device"] == "cpu"
    assert 0 < eff["batch_latency_p50_ms"] <= eff["batch_latency_p95_ms"]
    assert eff["peak_memory_bytes"] > 0


def test_label_mismatch_lists_the_differences():
    with pytest.raises(WorkerFailure) as info:
        align_labels(["cat", "dog", "zero"], digits.LABEL_NAMES)
    assert info.value.reason == FailureReason.label_mismatch
    assert info.value.details["dataset_only"] == ["cat", "dog"]
    assert "one" in info.value.details["model_only"]


def test_a_label_mapping_resolves_a_mismatch():
    mapping = {"0": "zero", "1": "one"}
    assert align_labels(["0", "1", "two"], digits.LABEL_NAMES, mapping).tolist() == [0, 1, 2]
    with pytest.raises(WorkerFailure) as info:
        align_labels(["0"], digits.LABEL_NAMES, {"0": "zero", "7": "seven"})
    assert info.value.details["mapping_keys_not_in_dataset"] == ["7"]


@pytest.mark.parametrize("resample", [2, 3, 0])
def test_fast_preprocessing_is_bit_for_bit_the_image_processor(resample):
    from PIL import Image
    from transformers import ViTImageProcessor

    from workers.evaluate import FixedSizePreprocess

    processor = ViTImageProcessor(
        size={"height": 24, "width": 40}, resample=resample, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
    )
    fast = FixedSizePreprocess.for_processor(processor)
    assert fast is not None
    rng = np.random.default_rng(resample)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(7, 9), (32, 32), (300, 120), (24, 40)]]
    expected = np.asarray(processor(images=images, return_tensors="np")["pixel_values"])
    got = fast(images)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)


def test_processors_the_fast_path_does_not_cover_fall_back():
    from transformers import ViTImageProcessor

    from workers.evaluate import FixedSizePreprocess

    assert FixedSizePreprocess.for_processor(ViTImageProcessor(do_normalize=False)) is None
    assert FixedSizePreprocess.for_processor(ViTImageProcessor(size={"shortest_edge": 32})) is None


def test_progress_is_reported_batch_by_batch(loaded, ingested_digits, tmp_path):
    """Progress moves within a shard, not only when a shard is done."""
    model, processor = loaded
    dataset, manifest = ingested_digits
    shards = sorted((dataset / "train").glob("part-*.parquet"))
    batches: list[int] = []
    label_map = align_labels(manifest["label_names"], label_names(model))
    stats = evaluate_shards(
        model, processor, shards, tmp_path, label_map=label_map, options=EvalOptions(batch_size=32), on_batch=batches.append
    )
    assert sum(batches) == stats.instances == 449
    assert len(batches) == sum(-(-s["rows"] // 32) for s in manifest["splits"]["train"]["shards"])
