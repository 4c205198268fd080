"""The text-generation task's three worker functions (``workers.lm``): verify a causal
language model and refuse hostile ones, ingest datasets of each shape from Parquet and JSON
Lines, and evaluate each kind into prediction shards of exactly the declared columns,
resumably, with the engine's numbers; bad inputs end in a WorkerFailure a user can act on.

Fast: an untrained 1-layer GPT-2 built in the test (the trained one of ``lm_fixtures`` is
for the exactness tests); its numbers need not be good, only the same as the engine's.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.modeltasks.text_generation import COMMON_PREDICTIONS, KIND_PREDICTIONS, TextGenerationConfig
from workers.canonical import IngestLimits
from workers.failures import FailureReason, WorkerFailure

sys.path.insert(0, str(Path(__file__).parent))
import lm_fixtures as fx  # noqa: E402 -- the fixtures module sits beside this file

WINDOW = 64


def build_tiny(directory: Path, *, eos: bool = True, embedding_rows: int | None = None) -> Path:
    """An untrained GPT-2 (1 layer, n_embd 32, a 64-token window) and a byte-level BPE
    tokenizer trained on the fixtures' corpus, saved as a ``save_pretrained`` directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        fx.corpus(200),
        trainers.BpeTrainer(vocab_size=320, special_tokens=[fx.EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    special = {"eos_token": fx.EOS} if eos else {}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, model_max_length=WINDOW, **special)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=WINDOW, vocab_size=embedding_rows or len(tokenizer))
    ).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny"))


def refused(call, reason: FailureReason) -> str:
    with pytest.raises(WorkerFailure) as caught:
        call()
    assert caught.value.reason == reason, caught.value.message
    return caught.value.message


def copy_model(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


# --- verify ---------------------------------------------------------------------------------


def test_a_causal_language_model_is_verified(tiny, tmp_path):
    import workers.lm as lm

    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(tiny.iterdir()):
            zf.write(path, path.name)
    root, report = lm.verify_model_archive(archive, tmp_path / "work")
    assert report.architecture == "GPT2LMHeadModel" and report.label_names == []
    assert report.details["eos_token"] == fx.EOS and report.details["chat_template"] is False
    assert report.details["context_length"] == WINDOW
    assert "model.safetensors" in report.files and (root / "tokenizer.json").exists()


def _hostile(tiny: Path, tmp_path: Path, change) -> Path:
    root = copy_model(tiny, tmp_path / "model")
    change(root)
    return root


def _json_edit(path: Path, **fields) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: _json_edit(r / "config.json", auto_map={"AutoModelForCausalLM": "x.Model"}), "remote_code_refused"),
        (lambda r: _json_edit(r / "tokenizer_config.json", auto_map={"AutoTokenizer": ["x.T", None]}), "remote_code_refused"),
        (lambda r: (r / "modeling_x.py").write_text("import os\n"), "remote_code_refused"),
        (lambda r: (r / "model.safetensors").rename(r / "pytorch_model.bin"), "pickle_weights_refused"),
        (lambda r: (r / "model.safetensors").write_bytes(b"\x80\x04" + b"\x00" * 64), "pickle_weights_refused"),
        (lambda r: open(r / "tokenizer.json", "r+b").truncate(51 * 1024**2), "file_too_large"),
        (lambda r: open(r / "chat_template.jinja", "wb").truncate(2 * 1024**2), "file_too_large"),
        (lambda r: (r / "tokenizer.json").unlink() or (r / "tokenizer_config.json").write_text("{}"), "load_error"),
        (lambda r: _json_edit(r / "config.json", architectures=["GPT2ForSequenceClassification"]), "unsupported_architecture"),
    ],
    ids=[
        "auto_map",
        "tokenizer_auto_map",
        "python_file",
        "pickle_name",
        "pickle_bytes",
        "huge_tokenizer",
        "huge_template",
        "no_vocab",
        "classifier",
    ],
)
def test_hostile_models_are_refused(tiny, tmp_path, change, reason):
    from workers.lm.model import CAUSAL_LM
    from workers.verify import verify_model_dir

    root = _hostile(tiny, tmp_path, change)
    refused(lambda: verify_model_dir(root, CAUSAL_LM), FailureReason(reason))


def test_a_tokenizer_bigger_than_the_embedding_is_refused(tmp_path):
    from workers.lm.model import CAUSAL_LM
    from workers.verify import verify_model_dir

    root = build_tiny(tmp_path / "small", embedding_rows=200)
    message = refused(lambda: verify_model_dir(root, CAUSAL_LM), FailureReason.tokenizer_mismatch)
    assert "200 rows" in message


def test_a_tokenizer_without_pad_or_eos_token_is_verified_and_said_so(tmp_path):
    from workers.lm.model import CAUSAL_LM
    from workers.verify import verify_model_dir

    report = verify_model_dir(build_tiny(tmp_path / "no-eos", eos=False), CAUSAL_LM)
    assert report.details["eos_token"] is None


# --- ingest ---------------------------------------------------------------------------------

SHAPE_ROWS = {
    "multiple_choice": lambda: [dict(r, subject="zoology") for r in fx.choice_rows(12, seed=1, phrases=0.5)],
    "generate": lambda: fx.generation_rows(12, seed=2),
    "perplexity": lambda: fx.text_rows(11, seed=3),
}
CANONICAL = {
    "multiple_choice": ["instance_id", "question", "choices", "answer", "subject"],
    "generate": ["instance_id", "prompt", "targets"],
    "perplexity": ["instance_id", "text"],
}


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    return fx.write_jsonl(path, rows)


def ingest(source: Path, out: Path, shape: str | None, **limits):
    from workers.lm import ingest_dataset

    return ingest_dataset(source, out, work_dir=out.parent / "work", shape=shape, limits=IngestLimits(**limits))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("shape", sorted(SHAPE_ROWS))
def test_each_shape_is_ingested_from_either_format(tmp_path, shape, fmt):
    rows = SHAPE_ROWS[shape]()
    for i, row in enumerate(rows):
        row["split"] = "dev" if i < 4 else "test"
    manifest = ingest(write(tmp_path / f"d.{fmt}", rows), tmp_path / "out", shape, shard_rows=5)
    assert manifest["shape"] == shape and manifest["label_names"] == [] and manifest["source_format"] == fmt
    assert {s: v["instances"] for s, v in manifest["splits"].items()} == {"dev": 4, "test": len(rows) - 4}
    table = pq.read_table(tmp_path / "out" / "test" / "part-00000.parquet")
    assert table.schema.names == CANONICAL[shape] == manifest["columns"]
    first = table.to_pylist()[0]
    assert first["instance_id"] == "test-00000000"
    if shape == "generate":
        assert first["targets"] == [rows[4]["target"]]
    if shape == "multiple_choice":
        assert (first["choices"], first["answer"], first["subject"]) == (rows[4]["choices"], rows[4]["answer"], "zoology")


def test_bad_rows_are_counted_by_problem_and_left_out(tmp_path):
    rows = fx.choice_rows(40, seed=4)
    rows[0]["choices"] = []
    rows[1]["answer"] = 7
    rows[2]["answer"] = "1"
    rows[3]["choices"] = ["a", ""]
    rows[4]["question"] = ""
    rows[5] = {"id": "q5", **rows[5]}
    rows[6] = {"id": "q5", **rows[6]}
    manifest = ingest(write(tmp_path / "d.jsonl", rows), tmp_path / "out", "multiple_choice", max_invalid_fraction=0.2)
    assert manifest["invalid_problems"] == {
        "no_choices": 1,
        "answer_out_of_range": 1,
        "answer_not_integer": 1,
        "bad_choice": 1,
        "empty_question": 1,
        "duplicate_id": 1,
    }
    assert manifest["instances"] == 34
    ids = pq.read_table(tmp_path / "out" / "train" / "part-00000.parquet").column("instance_id").to_pylist()
    assert "q5" in ids and len(set(ids)) == len(ids)
    message = refused(
        lambda: ingest(write(tmp_path / "d.jsonl", rows), tmp_path / "again", "multiple_choice"),
        FailureReason.too_many_invalid_texts,
    )
    assert "6 of 40" in message


def test_invalid_utf8_in_a_parquet_string_column_is_one_rows_problem(tmp_path):
    def strings(values: list[bytes]) -> pa.Array:
        return pa.array(values, pa.binary()).view(pa.string())  # unvalidated, as a hostile writer leaves them

    table = pa.table(
        {
            "id": strings([b"a", b"\xff", b"c", b"d"]),
            "text": strings([b"one", b"two", b"\xfe bad", b"four"]),
            "split": strings([b"test", b"test", b"test", b"\xff"]),
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    manifest = ingest(tmp_path / "d.parquet", tmp_path / "out", "perplexity", max_invalid_fraction=0.9)
    assert manifest["invalid_problems"] == {"bad_id": 1, "invalid_utf8": 2}
    assert manifest["splits"]["test"]["instances"] == 1


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_wrong_shape_is_refused_naming_the_shape_and_the_columns(tmp_path, fmt):
    source = write(tmp_path / f"d.{fmt}", fx.generation_rows(5, seed=1))
    message = refused(lambda: ingest(source, tmp_path / "out", "multiple_choice"), FailureReason.invalid_dataset)
    assert "multiple_choice" in message and "question" in message and "'prompt'" in message and "generate" in message
    assert "no shape" in refused(lambda: ingest(source, tmp_path / "o2", None), FailureReason.invalid_dataset)


def test_columns_of_the_wrong_type_or_too_many_refuse_the_file(tmp_path):
    rows = [{"question": "q", "choices": "a b", "answer": 0}]
    message = refused(lambda: ingest(write(tmp_path / "d.parquet", rows), tmp_path / "o1", "multiple_choice"), "invalid_dataset")
    assert "'choices' must be a list of strings" in message
    wide = [{"text": "some text", **{f"c{i}": i for i in range(40)}}]
    message = refused(lambda: ingest(write(tmp_path / "w.jsonl", wide), tmp_path / "o2", "perplexity"), "invalid_dataset")
    assert "more than 32 columns" in message


def test_other_columns_are_kept_as_strings_unless_nested_or_unnamable(tmp_path):
    rows = [{"text": f"text {i}", "n": i, "ok": True, "x": 0.5, "nested": {"a": i}, "not a name": 1} for i in range(3)]
    manifest = ingest(write(tmp_path / "d.jsonl", rows), tmp_path / "out", "perplexity")
    assert manifest["columns"] == ["instance_id", "text", "n", "ok", "x"]
    assert manifest["ignored_columns"] == ["nested", "not a name"]
    first = pq.read_table(tmp_path / "out" / "train" / "part-00000.parquet").to_pylist()[0]
    assert (first["n"], first["ok"], first["x"]) == ("0", "True", "0.5")


# --- evaluate -------------------------------------------------------------------------------


def canonical(tmp_path: Path, shape: str, rows: list[dict], shard_rows: int = 4) -> dict[str, list[Path]]:
    out = tmp_path / f"canonical-{shape}"
    manifest = ingest(write(tmp_path / f"{shape}.jsonl", rows), out, shape, shard_rows=shard_rows)
    return {split: [out / split / s["name"] for s in v["shards"]] for split, v in manifest["splits"].items()}


CONFIGS = {
    "multiple_choice": TextGenerationConfig(
        kind="multiple_choice", template="{subject}: {question}", num_fewshot=2, fewshot_split="dev", batch_size=4
    ),
    "generate": TextGenerationConfig(
        kind="generate", num_fewshot=1, fewshot_split="test", max_new_tokens=6, until=["."], batch_size=4
    ),
    "perplexity": TextGenerationConfig(kind="perplexity", batch_size=4),
}


def _split_rows(shape: str) -> list[dict]:
    rows = SHAPE_ROWS[shape]()
    for i, row in enumerate(rows):
        row["split"] = "dev" if i < 3 else "test"
    return rows


def run_evaluate(model_dir, splits, out, config, **hooks):
    from workers.lm import evaluate

    others = {name: splits[name] for name in config.other_splits("test")}
    return evaluate(model_dir, splits["test"], out, dataset_label_names=[], config=config, other_splits=others, **hooks)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_each_kind_writes_the_declared_columns_and_the_engines_numbers(tiny, tmp_path, kind):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.lm import engine

    splits = canonical(tmp_path, kind, _split_rows(kind))
    config = CONFIGS[kind]
    seen: list[int] = []
    summary = run_evaluate(tiny, splits, tmp_path / "pred", config, on_shard=lambda i, p, s: seen.append(i))
    assert seen == list(range(len(splits["test"])))
    names = [c.name for c in COMMON_PREDICTIONS + KIND_PREDICTIONS[kind]]
    tables = [pq.read_table(tmp_path / "pred" / p.name) for p in splits["test"]]
    assert all(t.schema.names == names for t in tables)
    rows = pa.concat_tables(tables).to_pylist()
    assert summary["kind"] == kind and summary["instances"] == len(rows)

    # The engine on the same instances, in one call: the same records and metrics.
    docs = [d for p in splits["test"] for d in pq.read_table(p).drop_columns(["instance_id"]).to_pylist()]
    pool = [d for p in splits.get("dev", []) for d in pq.read_table(p).drop_columns(["instance_id"]).to_pylist()]
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    if kind == "multiple_choice":
        result = engine.multiple_choice(model, tokenizer, docs, pool, config, same_split=False)
        assert [r["prediction"] for r in rows] == [r["prediction"] for r in result.records]
        assert [r["choice_loglikelihoods"] for r in rows] == [r["choice_loglikelihoods"] for r in result.records]
        assert rows[0]["prompt"] == f"zoology: {docs[0]['question']}"
    elif kind == "generate":
        result = engine.generate_answers(model, tokenizer, docs, docs, config, same_split=True)
        assert [r["output"] for r in rows] == [r["output"] for r in result.records]
        assert rows[0]["targets"] == docs[0]["targets"]
    else:
        result = engine.perplexity(model, tokenizer, docs, config)
        assert [r["loglikelihood"] for r in rows] == [r["loglikelihood"] for r in result.records]
        assert summary["tokens"] == sum(r["tokens"] for r in result.records)
    for name, value in result.metrics.items():
        assert summary[name] == pytest.approx(value, rel=1e-12), name
    assert summary["truncated"] == result.truncated
    assert summary["efficiency"]["instances_timed"] == len(rows)


class Crash(Exception):
    pass


@pytest.mark.parametrize("kind", ["multiple_choice", "generate"])
def test_a_resumed_run_draws_the_same_examples_and_writes_identical_shards(tiny, tmp_path, kind):
    splits = canonical(tmp_path, kind, _split_rows(kind), shard_rows=3)
    assert len(splits["test"]) >= 3
    config = CONFIGS[kind]
    whole = run_evaluate(tiny, splits, tmp_path / "whole", config)

    def crash_after_first(index, path, stats):
        if index == 1:
            raise Crash

    with pytest.raises(Crash):
        run_evaluate(tiny, splits, tmp_path / "resumed", config, on_shard=crash_after_first)
    (tmp_path / "resumed" / splits["test"][1].name).unlink()  # as if killed before its upload
    resumed = run_evaluate(tiny, splits, tmp_path / "resumed", config)
    for shard in splits["test"]:
        assert pq.read_table(tmp_path / "resumed" / shard.name).equals(pq.read_table(tmp_path / "whole" / shard.name))
    assert resumed["efficiency"]["shards_resumed"] == 1
    assert {k: resumed[k] for k in ("acc", "acc_norm", "exact_match")} == {
        k: whole[k] for k in ("acc", "acc_norm", "exact_match")
    }


# --- bad inputs (issue 17, item 7) -----------------------------------------------------------


def test_a_template_naming_a_missing_column_is_refused_before_the_model_loads(tmp_path):
    splits = canonical(tmp_path, "multiple_choice", _split_rows("multiple_choice"))
    config = TextGenerationConfig(kind="multiple_choice", template="{topic}: {question}")
    message = refused(lambda: run_evaluate(tmp_path / "no-model", splits, tmp_path / "p", config), FailureReason.invalid_config)
    assert "{topic}" in message and "subject" in message


def test_a_kind_that_is_not_the_datasets_shape_is_refused(tmp_path):
    splits = canonical(tmp_path, "generate", _split_rows("generate"))
    config = TextGenerationConfig(kind="multiple_choice")
    message = refused(lambda: run_evaluate(tmp_path / "no-model", splits, tmp_path / "p", config), FailureReason.invalid_config)
    assert "kind 'generate'" in message


def test_generation_with_a_tokenizer_without_eos_is_refused(tmp_path):
    model_dir = build_tiny(tmp_path / "no-eos", eos=False)
    splits = canonical(tmp_path, "generate", _split_rows("generate"))
    message = refused(
        lambda: run_evaluate(model_dir, splits, tmp_path / "p", TextGenerationConfig(kind="generate")), FailureReason.load_error
    )
    assert "EOS" in message


def test_a_fewshot_split_too_small_is_refused(tiny, tmp_path):
    splits = canonical(tmp_path, "multiple_choice", _split_rows("multiple_choice"))
    config = TextGenerationConfig(kind="multiple_choice", num_fewshot=5, fewshot_split="dev")
    message = refused(lambda: run_evaluate(tiny, splits, tmp_path / "p", config), FailureReason.invalid_config)
    assert "only 3 examples" in message


def test_long_contexts_are_cut_and_counted_and_generations_bounded(tiny, tmp_path):
    rows = [{"prompt": " ".join(fx.corpus(8, seed=i)), "target": "x", "split": "test"} for i in range(4)]
    splits = canonical(tmp_path, "generate", rows)
    config = TextGenerationConfig(kind="generate", max_new_tokens=5, until=["\u2603"])
    summary = run_evaluate(tiny, splits, tmp_path / "p", config)
    assert summary["truncated"] == 4
    table = pq.read_table(tmp_path / "p" / splits["test"][0].name)
    assert all(t for t in table.column("truncated").to_pylist())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    longest = max(len(tokenizer.decode([i])) for i in range(len(tokenizer)))
    assert all(len(output) <= 5 * longest for output in table.column("output").to_pylist())


# --- through the runner, against the emulators ------------------------------------------------

TASK = "text-generation"


def test_the_runner_verifies_ingests_and_evaluates_a_language_model(settings, store, storage, tiny, tmp_path):
    from devstack import digits
    from shared import storage as paths
    from shared.entities import Dataset, Evaluation, Model, evaluation_fingerprint
    from shared.tasks import TaskName
    from workers.runner import EXIT_OK, TaskRunner

    account = "acc_test"

    def upload(cls, source: Path, **fields):
        entity_id = cls.new_id()
        obj = paths.upload_object("models" if cls is Model else "datasets", entity_id, source.name)
        storage.upload_file(obj, source)
        store.put(
            cls(
                id=entity_id,
                account=account,
                name="lm",
                status="verifying",
                attempts=1,
                declared_size=source.stat().st_size,
                content_type="application/octet-stream",
                upload_object=obj,
                task=TASK,
                **fields,
            )
        )
        return entity_id

    def run(task, entity_id) -> None:
        runner = TaskRunner(settings=settings, store=store, storage=storage, task=task, entity_id=entity_id, attempt=1)
        assert runner.run() == EXIT_OK

    model_id = upload(Model, digits.archive_directory(tiny, tmp_path / "lm.zip"))
    source = write(tmp_path / "mc.jsonl", _split_rows("multiple_choice"))
    dataset_id = upload(Dataset, source, format="jsonl", shape="multiple_choice")
    run(TaskName.verify_model, model_id)
    run(TaskName.ingest_dataset, dataset_id)
    model = store.get(Model, model_id, account=account)
    dataset = store.get(Dataset, dataset_id, account=account)
    assert model.status == "ready" and model.label_names == [] and "eos_token <|endoftext|>" in model.message
    assert dataset.status == "ready" and dataset.splits == {"dev": 3, "test": 9} and dataset.label_names == []

    def evaluation(**config) -> Evaluation:
        parsed = TextGenerationConfig(kind="multiple_choice", template="{subject}: {question}", **config)
        fingerprint = evaluation_fingerprint(model_id=model_id, dataset_id=dataset_id, split="test", config=parsed)
        entity = Evaluation(
            id=Evaluation.new_id(),
            account=account,
            name="lm",
            status="admitted",
            attempts=1,
            task=TASK,
            model_id=model_id,
            dataset_id=dataset_id,
            split="test",
            config=parsed.model_dump(),
            fingerprint=fingerprint,
        )
        store.put(entity)
        run(TaskName.evaluate, entity.id)
        return store.get(Evaluation, entity.id, account=account)

    done = evaluation(num_fewshot=2, fewshot_split="dev")
    assert done.status == "complete", (done.reason, done.message)
    assert done.message.startswith("acc_norm ") and done.message.endswith("on 9 instances")
    assert done.summary["kind"] == "multiple_choice" and done.summary["acc"] is not None
    assert storage.exists(paths.prediction_shard(done.id, 0))

    missing = evaluation(num_fewshot=2, fewshot_split="validation")
    assert (missing.status, missing.reason) == ("failed", "split_not_found")
    assert "'validation'" in missing.message and "fewshot_split" in missing.message
