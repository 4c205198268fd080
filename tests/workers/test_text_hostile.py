"""Hostile text classification inputs: each ends in a ``WorkerFailure`` whose reason and
message a user can act on, or, for a bad row among good ones, in that row counted and
left out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.workers import text_fixtures as tf
from workers import text
from workers.canonical import IngestLimits
from workers.failures import FailureReason, WorkerFailure
from workers.text.model import TEXT_CLASSIFIER
from workers.verify import verify_model_dir

TEN_MB = 10 * 1024**2


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory) -> Path:
    return tf.build_text_classifier(tmp_path_factory.getbasetemp() / "text-classifier")


def _ingest(tmp_path: Path, source: Path, **limits) -> dict:
    return text.ingest_dataset(source, tmp_path / "out", work_dir=tmp_path / "work", limits=IngestLimits(**limits))


def _refused(tmp_path: Path, source: Path) -> WorkerFailure:
    with pytest.raises(WorkerFailure) as info:
        _ingest(tmp_path, source)
    return info.value


def _good_lines(n: int) -> list[bytes]:
    return [json.dumps({"text": t, "label": "positive"}).encode() for t in tf.sentences(n)]


# --- datasets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (json.dumps({"text": "x" * TEN_MB, "label": "positive"}).encode(), "text_too_long"),
        (json.dumps({"text": "a\x00b", "label": "positive"}).encode(), "nul_bytes"),
        (b'{"text": "caf\xe9", "label": "positive"}', "invalid_utf8"),
        (b'{"text": "\\ud800 lone surrogate", "label": "positive"}', "invalid_utf8"),
        (json.dumps({"text": "   ", "label": "positive"}).encode(), "empty_text"),
        (json.dumps({"text": 42, "label": "positive"}).encode(), "text_not_string"),
        (json.dumps({"label": "positive"}).encode(), "missing_text"),
        (json.dumps({"text": "no label"}).encode(), "missing_label"),
        (json.dumps({"text": "a float label", "label": 1.5}).encode(), "bad_label"),
        (b'{"text": "cut short', "invalid_json"),
    ],
    ids=["10MB", "nul", "latin-1", "surrogate", "empty", "number", "no-text", "no-label", "float-label", "bad-json"],
)
def test_a_bad_jsonl_row_is_counted_and_left_out_and_too_many_refuse_the_file(tmp_path, line, problem):
    good = _good_lines(39)
    source = tmp_path / "d.jsonl"
    source.write_bytes(b"\n".join([good[0], line, *good[1:]]) + b"\n")
    manifest = _ingest(tmp_path / "one", source)  # 1 of 40: under the 5% allowed
    assert manifest["instances"] == 39 and manifest["invalid_problems"] == {problem: 1}
    assert manifest["invalid_examples"][0]["problem"] == problem

    source.write_bytes(b"\n".join([good[0], line, line]) + b"\n")  # 2 of 3
    failure = _refused(tmp_path / "many", source)
    assert failure.reason == FailureReason.too_many_invalid_texts
    assert f"'{problem}': 2" in failure.message and "2 of 3 texts are invalid" in failure.message
    assert failure.details["problems"] == {problem: 2}


def test_a_10mb_csv_field_invalid_utf8_and_nul_bytes_in_csv_are_counted(tmp_path):
    rows = [b"text,label"] + [f"{t},positive".encode() for t in tf.sentences(97)]
    rows += [b'"' + b"y" * TEN_MB + b'",negative', b"caf\xe9 au lait,neutral", b"a\x00b,neutral"]
    (tmp_path / "d.csv").write_bytes(b"\r\n".join(rows) + b"\r\n")
    manifest = _ingest(tmp_path, tmp_path / "d.csv", max_invalid_fraction=0.05)
    assert manifest["instances"] == 97
    assert manifest["invalid_problems"] == {"text_too_long": 1, "invalid_utf8": 1, "nul_bytes": 1}


def test_parquet_with_invalid_utf8_and_empty_texts_counts_them(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [t.encode() for t in tf.sentences(38)] + [b"caf\xe9", b""]
    pq.write_table(pa.table({"text": pa.array(texts, pa.binary()), "label": ["positive"] * 40}), tmp_path / "d.parquet")
    manifest = _ingest(tmp_path, tmp_path / "d.parquet", max_invalid_fraction=0.1)
    assert manifest["invalid_problems"] == {"invalid_utf8": 1, "empty_text": 1}


@pytest.mark.parametrize(
    ("content", "reason", "words"),
    [
        (b"", FailureReason.empty_dataset, "empty"),
        (b"words,label\nhello,positive\n", FailureReason.invalid_dataset, "lacks column(s) ['text']"),
        (b'[{"text": "a", "label": "b"}]', FailureReason.invalid_dataset, "JSON Lines"),
        (b'{"text": "a", "label": "b", "split": "../../etc"}\n', FailureReason.invalid_dataset, "split"),
        (b'{"text": "a", "label": 99999}\n', FailureReason.invalid_dataset, "outside"),
    ],
    ids=["empty", "no-text-column", "json-array", "bad-split", "label-space"],
)
def test_what_cannot_be_judged_row_by_row_refuses_the_file(tmp_path, content, reason, words):
    (tmp_path / "d").write_bytes(content)
    failure = _refused(tmp_path, tmp_path / "d")
    assert failure.reason == reason and words in failure.message, failure.message


def test_a_jsonl_line_beyond_any_valid_row_is_skipped_unread(tmp_path):
    good = _good_lines(99)
    (tmp_path / "d.jsonl").write_bytes(b"\n".join([*good, b'{"text": "' + b"z" * (3 * 1024**2)]) + b"\n")
    manifest = _ingest(tmp_path, tmp_path / "d.jsonl", max_text_bytes=100_000)
    assert manifest["instances"] == 99 and manifest["invalid_problems"] == {"text_too_long": 1}


def test_a_label_the_model_does_not_know_fails_the_evaluation(text_model_dir, tmp_path):
    lines = [json.dumps({"text": t, "label": "angry" if i == 3 else "positive"}).encode() for i, t in enumerate(tf.sentences(10))]
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines))
    manifest = _ingest(tmp_path, tmp_path / "d.jsonl")
    shards = [tmp_path / "out" / "train" / s["name"] for s in manifest["splits"]["train"]["shards"]]
    config = SimpleNamespace(top_k=5, label_mapping=None, batch_size=8, max_length=None, truncation_side="right")
    with pytest.raises(WorkerFailure) as info:
        text.evaluate(
            text_model_dir,
            shards,
            tmp_path / "p",
            dataset_label_names=manifest["label_names"],
            config=config,
            on_shard=None,
            on_batch=None,
        )
    assert info.value.reason == FailureReason.label_mismatch
    assert "['angry']" in info.value.message and "label_mapping" in info.value.message


# --- models ----------------------------------------------------------------------------------


def _staged(model_dir: Path, tmp_path: Path, change) -> Path:
    staged = tmp_path / "staged"
    shutil.copytree(model_dir, staged)
    change(staged)
    return staged


def _edit_json(name: str, **fields):
    def change(d: Path) -> None:
        data = json.loads((d / name).read_text())
        data.update(fields)
        (d / name).write_text(json.dumps(data))

    return change


def _more_tokens_than_the_embedding(d: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(d, local_files_only=True)
    tokenizer.add_tokens([f"newword{i}" for i in range(40)])
    tokenizer.save_pretrained(d)


def _padded_tokenizer_json(d: Path) -> None:
    with open(d / "tokenizer.json", "a") as f:  # valid JSON still: trailing whitespace
        f.write(" " * (50 * 1024**2))


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        (_padded_tokenizer_json, FailureReason.file_too_large, "tokenizer.json is"),
        (_more_tokens_than_the_embedding, FailureReason.tokenizer_mismatch, "embedding"),
        (
            _edit_json("tokenizer_config.json", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]}),
            FailureReason.remote_code_refused,
            "tokenizer_config.json",
        ),
        (_edit_json("tokenizer_config.json", trust_remote_code=True), FailureReason.remote_code_refused, "remote code"),
        (
            _edit_json("config.json", auto_map={"AutoModelForSequenceClassification": "evil.Model"}),
            FailureReason.remote_code_refused,
            "config.json",
        ),
        (lambda d: (d / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01."), FailureReason.pickle_weights_refused, "pickle"),
        (lambda d: (d / "tokenization_evil.py").write_text("import os"), FailureReason.remote_code_refused, "never run"),
        (lambda d: (d / "tokenizer.json").unlink(), FailureReason.load_error, "vocabulary"),
        (lambda d: (d / "tokenizer_config.json").unlink(), FailureReason.load_error, "tokenizer_config.json is missing"),
        (
            _edit_json("config.json", architectures=["BertForMaskedLM"]),
            FailureReason.unsupported_architecture,
            "a text classifier",
        ),
        (_edit_json("config.json", model_type="vit"), FailureReason.unsupported_architecture, "not a text classifier"),
        (_edit_json("config.json", problem_type="regression"), FailureReason.unsupported_architecture, "regression"),
    ],
    ids=[
        "huge-tokenizer",
        "tokenizer-ids-beyond-embedding",
        "auto_map-tokenizer",
        "trust-remote-code",
        "auto_map-config",
        "pickle",
        "code",
        "no-vocabulary",
        "no-tokenizer-config",
        "not-a-classifier",
        "image-model-type",
        "regression",
    ],
)
def test_hostile_text_models_are_refused(text_model_dir, tmp_path, change, reason, words):
    with pytest.raises(WorkerFailure) as info:
        verify_model_dir(_staged(text_model_dir, tmp_path, change), TEXT_CLASSIFIER)
    assert info.value.reason == reason and words in info.value.message, info.value.message


def test_an_image_classifier_is_not_a_text_classifier(digits_model_zip, tmp_path):
    with pytest.raises(WorkerFailure) as info:
        text.verify_model_archive(digits_model_zip, tmp_path / "work")
    assert info.value.reason in {FailureReason.file_not_allowed, FailureReason.unsupported_architecture}
