"""Text classification in the workers: verify -> ingest (Parquet, JSON Lines, CSV) -> evaluate,
exact against ``transformers.pipeline("text-classification")`` and scikit-learn."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn import metrics as skm

from tests.workers import text_fixtures as tf
from workers import text
from workers.canonical import IngestLimits
from workers.failures import FailureReason, WorkerFailure

ROWS = 150


def config(**fields):
    defaults = {"top_k": 2, "label_mapping": None, "batch_size": 16, "max_length": None, "truncation_side": "right"}
    return SimpleNamespace(**{**defaults, **fields})


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory) -> Path:
    return tf.build_text_classifier(tmp_path_factory.getbasetemp() / "text-classifier")


@pytest.fixture(scope="session")
def verified(text_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("verify")
    return text.verify_model_archive(tf.zip_directory(text_model_dir, work / "model.zip"), work / "extracted")


@pytest.fixture(scope="session")
def columns():
    return tf.labelled(ROWS, seed=3, pairs=True)


@pytest.fixture(scope="session")
def pipe(text_model_dir):
    from transformers import pipeline

    return pipeline("text-classification", model=str(text_model_dir), tokenizer=str(text_model_dir), device=-1)


def _ingest(tmp_path, source, shard_rows=64):
    out = tmp_path / "dataset"
    manifest = text.ingest_dataset(source, out, work_dir=tmp_path / "work", limits=IngestLimits(shard_rows=shard_rows))
    shards = [out / split / s["name"] for split, v in manifest["splits"].items() for s in v["shards"]]
    return manifest, shards


def _predictions(out, shards) -> pa.Table:
    return pa.concat_tables([pq.read_table(out / s.name) for s in shards])


def _reference(pipe, columns, **tokenizer_kwargs) -> list[list[dict]]:
    inputs = [{"text": t, "text_pair": p} if p else t for t, p in zip(columns["text"], columns["text_pair"])]
    return pipe(inputs, top_k=None, batch_size=1, **tokenizer_kwargs)


def test_a_text_classifier_is_verified_and_described(verified):
    root, report = verified
    assert report.architecture == "BertForSequenceClassification" and report.model_type == "bert"
    assert report.label_names == tf.LABEL_NAMES
    assert report.files == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert 20_000 < report.parameter_count < 100_000
    assert report.size == sum((root / f).stat().st_size for f in report.files)


@pytest.mark.parametrize("writer", [tf.write_hf_parquet, tf.write_jsonl, tf.write_csv], ids=["parquet", "jsonl", "csv"])
def test_every_format_ingests_to_the_same_canonical_shards(columns, tmp_path, writer):
    source = writer(tmp_path / "upload", columns)  # no suffix: the format is told by content
    manifest, shards = _ingest(tmp_path, source)
    assert manifest["source_format"] == writer.__name__.removeprefix("write_").removeprefix("hf_")
    assert manifest["label_names"] == tf.LABEL_NAMES
    assert manifest["instances"] == ROWS and manifest["invalid_instances"] == 0
    assert [s["rows"] for s in manifest["splits"]["train"]["shards"]] == [64, 64, 22]
    table = pa.concat_tables([pq.read_table(s) for s in shards])
    assert table.schema.names == ["instance_id", "text", "text_pair", "label"]
    assert table.column("text").to_pylist() == columns["text"]
    assert table.column("text_pair").to_pylist() == columns["text_pair"]
    assert table.column("label").to_pylist() == columns["label"]
    reference = tf.write_hf_parquet(tmp_path / "reference.parquet", columns)
    assert _ingest(tmp_path / "ref", reference)[0]["digest"] == manifest["digest"]


def test_a_split_column_and_string_labels(tmp_path):
    columns = {
        "text": ["good film", "bad film", "fine film"],
        "label": ["positive", "negative", "neutral"],
        "split": ["test", "test", "validation"],
    }
    manifest, _ = _ingest(
        tmp_path, tf.write_csv(tmp_path / "d.csv", {**columns, "label": [0, 1, 2]}, label_names=columns["label"])
    )
    assert {s: v["instances"] for s, v in manifest["splits"].items()} == {"test": 2, "validation": 1}
    assert manifest["label_names"] == ["negative", "neutral", "positive"]


@pytest.mark.parametrize("writer", [tf.write_hf_parquet, tf.write_jsonl, tf.write_csv], ids=["parquet", "jsonl", "csv"])
def test_top_1_equals_the_pipeline_on_every_instance_and_metrics_equal_sklearn(verified, columns, pipe, tmp_path, writer):
    root, _ = verified
    manifest, shards = _ingest(tmp_path, writer(tmp_path / "upload", columns))
    out = tmp_path / "predictions"
    summary = text.evaluate(
        root, shards, out, dataset_label_names=manifest["label_names"], config=config(), on_shard=None, on_batch=None
    )
    table = _predictions(out, shards)
    reference = _reference(pipe, columns)
    names = tf.LABEL_NAMES
    for i, ranked in enumerate(reference):  # the pipeline ranks every label, best first
        assert table["prediction"][i].as_py() == names.index(ranked[0]["label"]), i
        assert table["topk_ids"][i].as_py() == [names.index(r["label"]) for r in ranked[:2]], i
        np.testing.assert_allclose(table["topk_scores"][i].as_py(), [r["score"] for r in ranked[:2]], atol=1e-5)
    assert table.column("text_excerpt").to_pylist() == [t[:200] for t in columns["text"]]
    assert table.column("instance_id").to_pylist() == [f"train-{i:08d}" for i in range(ROWS)]

    y, p = np.array(columns["label"]), table.column("prediction").to_numpy()
    assert summary["instances"] == ROWS
    assert summary["accuracy"] == pytest.approx(skm.accuracy_score(y, p), abs=1e-12)
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = skm.precision_recall_fscore_support(y, p, average=average, zero_division=0)
        assert (summary[f"precision_{average}"], summary[f"recall_{average}"], summary[f"f1_{average}"]) == pytest.approx(
            (precision, recall, f1), abs=1e-12
        )
    assert summary["confusion_matrix"]["matrix"] == skm.confusion_matrix(y, p, labels=[0, 1, 2]).tolist()
    probs = np.array([[{r["label"]: r["score"] for r in ranked}[n] for n in names] for ranked in reference])
    probs /= probs.sum(axis=1, keepdims=True)  # float32 softmax: off from 1 by ~1e-7
    assert summary["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=[0, 1, 2]), rel=1e-4)
    assert summary["top_k_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=2, labels=[0, 1, 2]))
    assert summary["efficiency"]["instances_timed"] == ROWS


@pytest.mark.parametrize("side", ["right", "left"])
def test_max_length_and_truncation_side_cut_as_the_tokenizer_does(verified, columns, pipe, tmp_path, side):
    root, _ = verified
    manifest, shards = _ingest(tmp_path, tf.write_jsonl(tmp_path / "d.jsonl", columns))
    out = tmp_path / "predictions"
    text.evaluate(
        root,
        shards,
        out,
        dataset_label_names=manifest["label_names"],
        config=config(max_length=8, truncation_side=side),
        on_shard=None,
        on_batch=None,
    )
    pipe.tokenizer.truncation_side = side
    try:
        reference = _reference(pipe, columns, truncation=True, max_length=8)
    finally:
        pipe.tokenizer.truncation_side = "right"
    predictions = _predictions(out, shards).column("prediction").to_pylist()
    assert predictions == [tf.LABEL_NAMES.index(ranked[0]["label"]) for ranked in reference]


def test_a_run_resumes_at_the_shards_without_predictions_byte_for_byte(verified, columns, tmp_path):
    root, _ = verified
    manifest, shards = _ingest(tmp_path, tf.write_hf_parquet(tmp_path / "d.parquet", columns), shard_rows=40)
    out = tmp_path / "predictions"
    run = {"dataset_label_names": manifest["label_names"], "config": config()}
    first = text.evaluate(root, shards, out, on_shard=None, on_batch=None, **run)
    before = {s.name: (out / s.name).read_bytes() for s in shards}
    (out / shards[2].name).unlink()
    written, progressed = [], []
    second = text.evaluate(
        root, shards, out, on_shard=lambda i, path, stats: written.append(i), on_batch=progressed.append, **run
    )
    assert written == [2] and sum(progressed) == 40
    assert {s.name: (out / s.name).read_bytes() for s in shards} == before
    assert second["efficiency"]["shards_resumed"] == len(shards) - 1
    assert second["accuracy"] == first["accuracy"]


def test_dataset_labels_the_model_lacks_need_a_mapping(verified, tmp_path):
    root, _ = verified
    columns = {"text": ["good film", "bad film"], "label": [0, 1]}
    manifest, shards = _ingest(tmp_path, tf.write_jsonl(tmp_path / "d.jsonl", columns, label_names=["pos", "neg"]))
    with pytest.raises(WorkerFailure) as info:
        text.evaluate(
            root,
            shards,
            tmp_path / "p",
            dataset_label_names=manifest["label_names"],
            config=config(),
            on_shard=None,
            on_batch=None,
        )
    assert info.value.reason == FailureReason.label_mismatch and "label_mapping" in info.value.message
    mapping = {"pos": "positive", "neg": "negative"}
    summary = text.evaluate(
        root,
        shards,
        tmp_path / "p",
        dataset_label_names=manifest["label_names"],
        config=config(label_mapping=mapping),
        on_shard=None,
        on_batch=None,
    )
    assert summary["instances"] == 2


def test_a_max_length_beyond_the_position_table_is_refused(verified, columns, tmp_path):
    root, _ = verified
    manifest, shards = _ingest(tmp_path, tf.write_jsonl(tmp_path / "d.jsonl", columns))
    with pytest.raises(WorkerFailure) as info:
        text.evaluate(
            root,
            shards,
            tmp_path / "p",
            dataset_label_names=manifest["label_names"],
            config=config(max_length=4096),
            on_shard=None,
            on_batch=None,
        )
    assert info.value.reason == FailureReason.invalid_config and "128 positions" in info.value.message


def test_how_rows_are_batched_and_where_they_run_does_not_change_predictions(verified, columns, tmp_path):
    """Replicas or this process, batches of 16 rows or cut at 50 tokens: the same predictions."""
    from workers.text.inference import TextOptions

    root, _ = verified
    manifest, shards = _ingest(tmp_path, tf.write_jsonl(tmp_path / "d.jsonl", columns))
    tables = []
    for i, options in enumerate(
        [TextOptions(top_k=2, batch_size=16, replicas=2), TextOptions(top_k=2, batch_size=7, replicas=1, cpu_batch_tokens=50)]
    ):
        text.evaluate(
            root, shards, tmp_path / f"p{i}", dataset_label_names=manifest["label_names"], config=config(), options=options
        )
        tables.append(_predictions(tmp_path / f"p{i}", shards))
    assert tables[0]["topk_ids"].to_pylist() == tables[1]["topk_ids"].to_pylist()
    np.testing.assert_allclose(tables[0]["label_score"].to_numpy(), tables[1]["label_score"].to_numpy(), atol=1e-5)
