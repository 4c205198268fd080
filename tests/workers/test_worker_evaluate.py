"""Exactness: predictions equal the transformers pipeline, metrics equal scikit-learn's, and a
run killed after its second shard resumes to byte-identical predictions."""

from __future__ import annotations

import dataclasses
import io
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

from devstack import digits
from shared.results import PREDICTION_SCHEMA
from workers.evaluate import EvalOptions, align_labels, evaluate_shards, summarize
from workers.failures import FailureReason, WorkerFailure
from workers.verify import label_names, load_model

ROOT = Path(__file__).resolve().parents[2]
# Small batches, and replicas however few there are: the fixtures are 449 images.
REPLICATED = EvalOptions(batch_size=32, replicas=2, min_batches_per_replica=1)


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
    stats = evaluate_shards(model, processor, shards, out, label_map=label_map, options=REPLICATED)
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
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i])
        )
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
                        options=EvalOptions(batch_size=32, replicas=2, min_batches_per_replica=1), on_shard=on_shard)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    # Replicas work on shards side by side: at least the two reported are whole, maybe one
    # more; a replica killed while writing leaves only a .tmp, never a partial shard.
    written = sorted(p.name for p in out.glob("*.parquet"))
    assert 2 <= len(written) < 5, written

    model, processor = load_model(digits_model_dir)
    names = label_names(model)
    shards = sorted((dataset / "train").glob("part-*.parquet"))
    stats = evaluate_shards(
        model, processor, shards, out, label_map=align_labels(names, names), options=EvalOptions(batch_size=32)
    )
    assert (stats.shards_skipped, stats.shards_done) == (len(written), 5 - len(written))
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


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    return digits.png_bytes(Image.fromarray(array, mode) if mode else Image.fromarray(array))


@pytest.mark.parametrize("resample", [2, 3, 0])
def test_decode_then_normalize_is_bit_for_bit_the_image_processor(resample):
    from PIL import Image
    from transformers import ViTImageProcessor

    from workers.pixels import PixelRecipe

    processor = ViTImageProcessor(
        size={"height": 24, "width": 40}, resample=resample, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
    )
    recipe = PixelRecipe.for_processor(processor)
    assert recipe is not None
    rng = np.random.default_rng(resample)
    encoded = [_png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(7, 9), (32, 32), (300, 120), (24, 40)]]
    expected = np.asarray(processor(images=[Image.open(io.BytesIO(b)) for b in encoded], return_tensors="np")["pixel_values"])
    shape, dtype = recipe.batch_shape(len(encoded))
    pixels = np.zeros(shape, dtype)
    recipe.decode_into(encoded, pixels)
    got = recipe.normalize(torch.from_numpy(pixels)).numpy()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)


def test_images_are_oriented_and_converted_as_the_pipeline_does():
    """Every mode and EXIF orientation gives ``exif_transpose(image).convert("RGB")``'s pixels."""
    from PIL import Image, ImageOps

    from workers.pixels import rgb_image

    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    cases = {
        "rgb": _png(rgb),
        "rgba": _png(rng.integers(0, 256, (6, 10, 4), dtype=np.uint8)),
        "grey": _png(rgb[..., 0], "L"),
        "palette": digits.png_bytes(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)),
    }
    for orientation in (1, 3, 6, 8):
        image = Image.fromarray(rgb)
        exif = image.getexif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", exif=exif.tobytes())
        cases[f"jpeg-orientation-{orientation}"] = buffer.getvalue()
    for name, data in cases.items():
        expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        got = np.asarray(rgb_image(data))
        assert got.shape == expected.shape and np.array_equal(got, expected), name
    assert np.asarray(rgb_image(cases["jpeg-orientation-6"])).shape == (10, 6, 3)  # rotated


def test_processors_the_split_does_not_cover_run_whole_in_the_decoders():
    from PIL import Image
    from transformers import ViTImageProcessor

    from workers.pixels import PixelRecipe, ProcessorRecipe, recipe_for

    assert PixelRecipe.for_processor(ViTImageProcessor(do_normalize=False)) is None
    processor = ViTImageProcessor(size={"shortest_edge": 16})
    recipe = recipe_for(processor)
    assert isinstance(recipe, ProcessorRecipe) and recipe.batch_shape(4) is None
    encoded = [_png(np.full((20, 20, 3), v, dtype=np.uint8)) for v in (0, 128)]
    expected = np.asarray(processor(images=[Image.open(io.BytesIO(b)) for b in encoded], return_tensors="np")["pixel_values"])
    assert np.array_equal(recipe.decode(encoded), expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_decoders_in_processes_or_in_process_give_the_same_pixels(workers):
    from transformers import ViTImageProcessor

    from workers.decoding import DecodeError, DecodePool
    from workers.pixels import recipe_for

    rng = np.random.default_rng(3)
    batches = [[_png(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)) for _ in range(n)] for n in (4, 4, 3)]
    for processor in (ViTImageProcessor(size={"height": 8, "width": 8}), ViTImageProcessor(size={"shortest_edge": 8})):
        recipe = recipe_for(processor)
        with DecodePool(recipe, workers=workers, slots=3, batch_size=4) as pool:
            pending = [pool.submit(blobs, f"b{i}") for i, blobs in enumerate(batches)]
            for blobs, p in zip(batches, pending):
                decoded = p.result()
                expected = processor(images=[rgb_image_of(b) for b in blobs], return_tensors="np")["pixel_values"]
                assert np.array_equal(recipe.normalize(decoded.pixels).numpy(), expected)
                decoded.release()
            damaged = pool.submit([batches[0][0], b"\x89PNG not really"], "broken-batch")
            with pytest.raises(DecodeError, match="broken-batch"):
                damaged.result()
            # The slot of a failed batch is free again: the pool keeps working.
            assert pool.submit(batches[2], "again").result().pixels.shape[0] == 3


def rgb_image_of(data: bytes):
    from workers.pixels import rgb_image

    return rgb_image(data)


@pytest.mark.parametrize(
    "options",
    [REPLICATED, EvalOptions(batch_size=32, replicas=1, decode_workers=2)],
    ids=["a replica", "a decoder"],
)
def test_a_helper_process_that_dies_fails_the_evaluation(options, loaded, ingested_digits, tmp_path):
    """A replica or decoder killed mid-run (out of memory, say) is an inference error, not a hang."""
    import multiprocessing
    import signal

    model, processor = loaded
    dataset, manifest = ingested_digits
    shards = sorted((dataset / "train").glob("part-*.parquet"))
    label_map = align_labels(manifest["label_names"], label_names(model))

    def kill_the_helpers(instances: int) -> None:
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)

    with pytest.raises(WorkerFailure) as info:
        evaluate_shards(model, processor, shards, tmp_path, label_map=label_map, options=options, on_batch=kill_the_helpers)
    assert info.value.reason == FailureReason.inference_error
    assert "process died" in info.value.message
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize(
    "options",
    [EvalOptions(replicas=1), EvalOptions(replicas=3, min_batches_per_replica=1), EvalOptions(replicas=1, decode_workers=2)],
    ids=["one process", "three replicas", "decoder processes"],
)
def test_every_layout_writes_the_same_predictions(options, evaluated, loaded, ingested_digits, tmp_path):
    model, processor = loaded
    dataset, manifest = ingested_digits
    shards = sorted((dataset / "train").glob("part-*.parquet"))
    batches: list[int] = []
    stats = evaluate_shards(
        model,
        processor,
        shards,
        tmp_path,
        label_map=align_labels(manifest["label_names"], label_names(model)),
        options=dataclasses.replace(options, batch_size=32),
        on_batch=batches.append,
    )
    assert (stats.instances, sum(batches), stats.shards_done) == (449, 449, 5)
    reference, _, _ = evaluated
    for path in reference:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_replicas_are_started_only_for_enough_batches(loaded, ingested_digits, tmp_path, monkeypatch):
    """Forking costs more than a few batches gain: too few batches run in this process."""
    from workers import evaluate

    started: list[int] = []
    monkeypatch.setattr(evaluate, "run_in_replicas", lambda *args, replicas, **kwargs: started.append(replicas))
    model, processor = loaded
    dataset, manifest = ingested_digits
    shards = sorted((dataset / "train").glob("part-*.parquet"))
    label_map = align_labels(manifest["label_names"], label_names(model))
    batches = sum(-(-s["rows"] // 32) for s in manifest["splits"]["train"]["shards"])
    assert batches == 18
    options = EvalOptions(batch_size=32, replicas=4, min_batches_per_replica=batches + 1)
    stats = evaluate_shards(model, processor, shards, tmp_path / "a", label_map=label_map, options=options)
    assert started == [] and stats.instances == 449
    options = EvalOptions(batch_size=32, replicas=4, min_batches_per_replica=6)
    evaluate_shards(model, processor, shards, tmp_path / "b", label_map=label_map, options=options)
    assert started == [3]  # 18 batches, at least 6 each


def test_progress_is_reported_batch_by_batch(loaded, ingested_digits, tmp_path):
    """Progress moves within a shard, not only when a shard is done."""
    model, processor = loaded
    dataset, manifest = ingested_digits
    shards = sorted((dataset / "train").glob("part-*.parquet"))
    batches: list[int] = []
    label_map = align_labels(manifest["label_names"], label_names(model))
    stats = evaluate_shards(model, processor, shards, tmp_path, label_map=label_map, options=REPLICATED, on_batch=batches.append)
    assert sum(batches) == stats.instances == 449
    assert len(batches) == sum(-(-s["rows"] // 32) for s in manifest["splits"]["train"]["shards"])
