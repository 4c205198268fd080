"""Language models end to end on the real local stack: a tiny GPT-2 built here and datasets
of the three shapes, uploaded through the SDK, evaluated by the workers, and every result
route checked against the engine run in this process on the same model and rows (the engine
itself is held to lm-eval by tests/workers/test_lm_exactness.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.errors import Invalid
from shared.modeltasks.text_generation import TextGenerationConfig
from tests.e2e.stack_cli import cli
from tests.workers.lm_fixtures import build_model, choice_rows, generation_rows, text_rows, write_jsonl

pytestmark = pytest.mark.slow
LM = "text-generation"


@pytest.fixture(scope="module")
def world(client, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    model_dir = build_model(root / "tiny-gpt2")
    train, test = choice_rows(30, seed=1), choice_rows(60, seed=2)
    questions = write_jsonl(
        root / "animals.jsonl", [{**r, "split": "train"} for r in train] + [{**r, "split": "test"} for r in test]
    )
    answers = generation_rows(30, seed=3)
    pq.write_table(pa.Table.from_pylist(answers), root / "answers.parquet")
    texts = write_jsonl(root / "texts.jsonl", text_rows(8, seed=4))
    model = client.models.upload(model_dir, name="tiny-gpt2", task=LM, wait=True)
    assert (model.status, model.task, model.architecture) == ("ready", LM, "GPT2LMHeadModel"), model.message
    datasets = {}
    for shape, path in (("multiple_choice", questions), ("generate", root / "answers.parquet"), ("perplexity", texts)):
        dataset = client.datasets.upload(path, name=f"animals-{shape.replace('_', '-')}", task=LM, shape=shape, wait=True)
        assert (dataset.status, dataset.shape) == ("ready", shape), dataset.message
        datasets[shape] = dataset
    assert datasets["multiple_choice"].splits == {"train": 30, "test": 60}
    rows = {"train": train, "test": test, "generate": answers, "perplexity": text_rows(8, seed=4)}
    return model_dir, model, datasets, rows


def run(client, model, dataset, **config):
    [handle] = client.evaluations.create(
        model.id, dataset.id, splits=["test"] if dataset.shape == "multiple_choice" else None, config=config
    )
    done = handle.wait(timeout_s=600)
    assert done.status == "complete", (done.reason, done.message)
    return handle


def engine_result(model_dir, kind, docs, pool, **config):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.lm import engine

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    typed = TextGenerationConfig(kind=kind, **config)
    if kind == "multiple_choice":
        return engine.multiple_choice(model, tokenizer, docs, pool, typed, same_split=False)
    if kind == "generate":
        return engine.generate_answers(model, tokenizer, docs, pool, typed, same_split=True)
    return engine.perplexity(model, tokenizer, docs, typed)


def position(instance_id: str) -> int:
    return int(instance_id.rsplit("-", 1)[1])


def test_multiple_choice_few_shot_on_every_route(client, stack, world):
    model_dir, model, datasets, rows = world
    dataset = datasets["multiple_choice"]
    shots = {"num_fewshot": 2, "fewshot_split": "train"}
    handle = run(client, model, dataset, **shots)
    expected = engine_result(model_dir, "multiple_choice", rows["test"], rows["train"], **shots)
    summary = client.evaluations.summary(handle.id)
    assert summary["kind"] == "multiple_choice" and summary["instances"] == 60
    assert summary["acc"] == pytest.approx(expected.metrics["acc"], rel=1e-9)
    assert summary["acc_norm"] == pytest.approx(expected.metrics["acc_norm"], rel=1e-9)
    assert summary["truncated"] == expected.truncated

    instances = list(client.evaluations.instances(handle.id))
    assert len(instances) == 60
    for row in instances:
        want = expected.records[position(row.instance_id)]
        assert row.prediction == want["prediction"] and row.prediction_norm == want["prediction_norm"]
        assert [c.loglikelihood for c in row.choices] == pytest.approx(want["choice_loglikelihoods"], rel=1e-6)
        assert [c.text for c in row.choices] == rows["test"][position(row.instance_id)]["choices"]
    wrong = list(client.evaluations.instances(handle.id, correct=False))
    assert len(wrong) == round(60 * (1 - summary["acc"]))

    computed = client.evaluations.metrics(handle.id, metrics=["acc", "acc_norm"], bootstrap={"samples": 200, "seed": 1})
    assert [m.value for m in computed.metrics] == pytest.approx([summary["acc"], summary["acc_norm"]])
    assert all(m.interval.low <= m.value <= m.interval.high for m in computed.metrics)

    zero_shot = run(client, model, dataset)
    compared = client.evaluations.compare(handle.id, zero_shot.id)
    assert compared.instances == 60 and 0 <= compared.mcnemar.p_value <= 1
    board = client.evaluations.leaderboard(dataset.id, split="test")
    assert board.metric == "acc_norm" and {e.evaluation_id for e in board.items} == {handle.id, zero_shot.id}
    assert [e.value for e in board.items] == sorted((e.value for e in board.items), reverse=True)
    assert {f.name for f in client.evaluations.downloads(handle.id).files} >= {"summary.json"}

    shown = cli(stack, "results", handle.id)
    assert shown.returncode == 0 and "acc_norm" in shown.stdout, shown.stderr
    assert json.loads(cli(stack, "--json", "results", handle.id).stdout)["acc"] == summary["acc"]


def test_generation_and_perplexity_equal_the_engine(client, world):
    model_dir, model, datasets, rows = world
    config = {"until": ["\n", "."], "max_new_tokens": 8, "ignore_case": True}
    handle = run(client, model, datasets["generate"], **config)
    expected = engine_result(model_dir, "generate", rows["generate"], rows["generate"], **config)
    summary = client.evaluations.summary(handle.id)
    assert summary["exact_match"] == pytest.approx(expected.metrics["exact_match"], rel=1e-9)
    outputs = {position(r.instance_id): r.output for r in client.evaluations.instances(handle.id)}
    assert [outputs[i] for i in range(30)] == [r["output"] for r in expected.records]
    assert client.evaluations.leaderboard(datasets["generate"].id).metric == "exact_match"

    handle = run(client, model, datasets["perplexity"])
    expected = engine_result(model_dir, "perplexity", rows["perplexity"], [])
    summary = client.evaluations.summary(handle.id)
    for name in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert summary[name] == pytest.approx(expected.metrics[name], rel=1e-6), name
    with pytest.raises(Invalid):  # a 422: a language model's evaluation has no classes
        client.evaluations.classes(handle.id)
