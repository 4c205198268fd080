"""Assay's language-model engine against lm-evaluation-harness itself: the same tiny model,
the same local datasets (as lm-eval custom task YAMLs), lm-eval's HF backend; every metric
equal to 1e-6 relative, and every instance's pick and output equal, with and without
few-shot examples."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import lm_fixtures as fx  # noqa: E402 -- the fixtures module sits beside this file

pytestmark = pytest.mark.slow  # builds and trains a model, then runs lm-eval: ~1 minute

REL = 1e-6


@pytest.fixture(scope="module")
def lm_env(tmp_path_factory):
    """The model, the datasets, the task YAMLs, and lm-eval's caches in a tmp dir, offline."""
    root = tmp_path_factory.mktemp("lm")
    for name, value in {
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(root / "hf"),
        "HF_DATASETS_CACHE": str(root / "hf" / "datasets"),
    }.items():
        os.environ[name] = value
    model_dir = fx.build_model(root / "model")
    data = {
        "mc_test": fx.write_jsonl(root / "mc_test.jsonl", fx.choice_rows(40, seed=1)),
        "mc_train": fx.write_jsonl(root / "mc_train.jsonl", fx.choice_rows(20, seed=2)),
        "gen_test": fx.write_jsonl(root / "gen_test.jsonl", fx.generation_rows(30, seed=3)),
        "ppl_test": fx.write_jsonl(root / "ppl_test.jsonl", fx.text_rows(20, seed=4)),
    }
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "assay_mc.yaml").write_text(f"""task: assay_mc
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{data["mc_test"]}", train: "{data["mc_train"]}"}}
test_split: test
fewshot_split: train
output_type: multiple_choice
doc_to_text: "Q: {{{{question}}}}"
doc_to_choice: choices
doc_to_target: answer
metric_list: [{{metric: acc}}, {{metric: acc_norm}}]
""")
    (tasks / "assay_gen.yaml").write_text(f"""task: assay_gen
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{data["gen_test"]}"}}
test_split: test
fewshot_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: target
generation_kwargs: {{until: [".", "Question"], max_gen_toks: 12, do_sample: false}}
metric_list: [{{metric: exact_match, ignore_case: true, ignore_punctuation: true}}]
""")
    (tasks / "assay_ppl.yaml").write_text(f"""task: assay_ppl
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{data["ppl_test"]}"}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list: [{{metric: word_perplexity}}, {{metric: byte_perplexity}}, {{metric: bits_per_byte}}]
""")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return {"root": root, "model_dir": model_dir, "tasks": tasks, "data": data, "model": model, "tokenizer": tokenizer}


def run_lm_eval(env, task: str, num_fewshot: int | None):
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={env['model_dir']},dtype=float32",
        tasks=[task],
        num_fewshot=num_fewshot,
        batch_size=16,
        device="cpu",
        log_samples=True,
        task_manager=TaskManager(include_path=str(env["tasks"])),
        fewshot_random_seed=1234,
    )
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return out["results"][task], samples


def read_jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=0.0)


@pytest.mark.parametrize("shots", [0, 3])
def test_multiple_choice_equals_lm_eval(lm_env, shots):
    import numpy as np

    from shared.modeltasks.text_generation import TextGenerationConfig
    from workers.lm.engine import multiple_choice

    docs = read_jsonl(lm_env["data"]["mc_test"])
    # Both ways of scoring choices run: answers of one token, and of several (one packed row).
    widths = {len(lm_env["tokenizer"].encode(" " + c)) > 1 for d in docs for c in d["choices"]}
    assert widths == {True, False}
    expected, samples = run_lm_eval(lm_env, "assay_mc", shots)
    config = TextGenerationConfig(
        kind="multiple_choice",
        template="Q: {question}",
        num_fewshot=shots,
        fewshot_split="train" if shots else None,
        batch_size=8,
    )
    result = multiple_choice(
        lm_env["model"], lm_env["tokenizer"], docs, read_jsonl(lm_env["data"]["mc_train"]), config, same_split=False
    )
    assert close(result.metrics["acc"], expected["acc,none"])
    assert close(result.metrics["acc_norm"], expected["acc_norm,none"])
    for record, sample in zip(result.records, samples, strict=True):
        theirs = [float(ll) for ll, _ in sample["filtered_resps"]]
        assert record["prediction"] == int(np.argmax(theirs))
        assert record["choice_greedy"] == [bool(g) for _, g in sample["filtered_resps"]]
        assert np.allclose(record["choice_loglikelihoods"], theirs, rtol=1e-5, atol=1e-5)
    if shots:
        assert result.truncated > 0  # the long questions overflow the 128-token window
    assert 0.0 < result.metrics["acc"]  # the model learnt something: picks are not ties


@pytest.mark.parametrize("shots", [0, 2])
def test_generation_equals_lm_eval(lm_env, shots):
    from shared.modeltasks.text_generation import TextGenerationConfig
    from workers.lm.engine import generate_answers

    expected, samples = run_lm_eval(lm_env, "assay_gen", shots)
    docs = read_jsonl(lm_env["data"]["gen_test"])
    config = TextGenerationConfig(
        kind="generate",
        template="{prompt}",
        num_fewshot=shots,
        fewshot_split="test" if shots else None,
        max_new_tokens=12,
        until=[".", "Question"],
        ignore_case=True,
        ignore_punctuation=True,
        batch_size=8,
    )
    result = generate_answers(lm_env["model"], lm_env["tokenizer"], docs, docs, config, same_split=True)
    assert close(result.metrics["exact_match"], expected["exact_match,none"])
    for record, sample in zip(result.records, samples, strict=True):
        assert record["output"] == sample["resps"][0][0]


def test_perplexity_equals_lm_eval(lm_env):
    from shared.modeltasks.text_generation import TextGenerationConfig
    from workers.lm.engine import perplexity

    expected, samples = run_lm_eval(lm_env, "assay_ppl", None)
    result = perplexity(
        lm_env["model"],
        lm_env["tokenizer"],
        read_jsonl(lm_env["data"]["ppl_test"]),
        TextGenerationConfig(kind="perplexity", batch_size=8),
    )
    for name in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert close(result.metrics[name], expected[f"{name},none"]), (name, result.metrics[name], expected[f"{name},none"])
    for record, sample in zip(result.records, samples, strict=True):
        assert math.isclose(record["loglikelihood"], sample["word_perplexity"][0], rel_tol=1e-5)
