"""Language-model evaluation throughput: lm-evaluation-harness's HF backend vs Assay's engine
(``workers.lm``), the same model and the same data, in one run, per kind.

- ``multiple_choice``: loglikelihood requests (instance x choice) per second, on questions
  with ``--fewshot`` examples and answers of several tokens (ARC/MMLU style);
- ``generate``: prompts per second (greedy, ``--new-tokens`` at most, stop strings);
- ``perplexity``: scored tokens per second, and the limit: the model's forward alone on
  full windows already tokenized, at the same batch size.

lm-eval is timed from its built requests to its answers (``HFLM.loglikelihood`` and kin:
tokenization included, task set-up not), Assay from the instances to its records and
metrics (prompts, tokenization and scoring included). Each path runs ``--repeat`` times and
its best run counts (a shared 2-core VM swings by 20-30%).

Usage: ``python bench/lm_throughput.py [--model tiny|small|medium] [--instances 400]
[--batch 32] [--lm-eval-batch 64] [--json out.json]``. ``small`` (~90M parameters) and
``medium`` (~300M, GPT-2-medium's shape) are built from their configs with random weights
and meant for a GPU, where they run in bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "workers"))
os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "huggingface"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import lm_fixtures as fx  # noqa: E402 -- the test fixtures' model and data recipes
import torch  # noqa: E402

from shared.modeltasks.text_generation import TextGenerationConfig  # noqa: E402
from workers.lm import engine  # noqa: E402

SHAPES = {"tiny": (2, 64, 2, 128), "small": (12, 768, 12, 1024), "medium": (24, 1024, 16, 1024)}


def build(directory: Path, size: str) -> Path:
    """The tiny model trained as the tests train it, or a bigger one with random weights."""
    if size == "tiny":
        return fx.build_model(directory, steps=150)
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    fx.build_model(directory, steps=0)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    layers, width, heads, window = SHAPES[size]
    eos = tokenizer.eos_token_id
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=layers,
            n_embd=width,
            n_head=heads,
            n_positions=window,
            vocab_size=len(tokenizer),
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    )
    model.save_pretrained(directory)
    tokenizer.model_max_length = window
    tokenizer.save_pretrained(directory)
    return directory


def best(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32, help="Assay's batch size")
    parser.add_argument("--lm-eval-batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--fewshot", type=int, default=2, help="few-shot examples before each multiple-choice question")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gpu = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    work = Path(tempfile.mkdtemp(prefix="lm-bench-"))
    os.environ.setdefault("HF_DATASETS_CACHE", str(work / "datasets"))
    model_dir = build(work / "model", args.model)
    n = args.instances
    data = {
        "mc": fx.write_jsonl(work / "mc.jsonl", fx.choice_rows(n, seed=1, phrases=1.0)),
        "mc_train": fx.write_jsonl(work / "mc_train.jsonl", fx.choice_rows(50, seed=2, phrases=1.0)),
        "gen": fx.write_jsonl(work / "gen.jsonl", fx.generation_rows(n, seed=3)),
        # Long texts, as held-out perplexity sets are: most windows are full.
        "ppl": fx.write_jsonl(work / "ppl.jsonl", [{"text": " ".join(fx.corpus(40, seed=s))} for s in range(max(n // 10, 1))]),
    }
    tasks = work / "tasks"
    tasks.mkdir()
    common = "dataset_path: json\ntest_split: test\n"
    (tasks / "b_mc.yaml").write_text(
        f'task: b_mc\n{common}dataset_kwargs: {{data_files: {{test: "{data["mc"]}", train: "{data["mc_train"]}"}}}}\n'
        f"fewshot_split: train\nnum_fewshot: {args.fewshot}\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: choices\ndoc_to_target: answer\nmetric_list: [{metric: acc}]\n'
    )
    (tasks / "b_gen.yaml").write_text(
        f'task: b_gen\n{common}dataset_kwargs: {{data_files: {{test: "{data["gen"]}"}}}}\noutput_type: generate_until\n'
        f'doc_to_text: "{{{{prompt}}}}"\ndoc_to_target: target\ngeneration_kwargs: {{until: [".", "Question"], '
        f"max_gen_toks: {args.new_tokens}, do_sample: false}}\nmetric_list: [{{metric: exact_match}}]\n"
    )
    (tasks / "b_ppl.yaml").write_text(
        f'task: b_ppl\n{common}dataset_kwargs: {{data_files: {{test: "{data["ppl"]}"}}}}\n'
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list: [{metric: word_perplexity}]\n'
    )

    lm = HFLM(pretrained=str(model_dir), dtype="bfloat16" if gpu else "float32", batch_size=args.lm_eval_batch, device=device)
    task_dict = get_task_dict(["b_mc", "b_gen", "b_ppl"], TaskManager(include_path=str(tasks)))
    for task in task_dict.values():
        task.build_all_requests()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = {k: [json.loads(line) for line in p.read_text().splitlines()] for k, p in data.items()}
    figures: dict[str, dict[str, float]] = {}

    mc_requests = task_dict["b_mc"].instances
    t_lm, _ = best(lambda: lm.loglikelihood(mc_requests, disable_tqdm=True), args.repeat)
    config = TextGenerationConfig(
        kind="multiple_choice", batch_size=args.batch, num_fewshot=args.fewshot, fewshot_split="train" if args.fewshot else None
    )
    t_assay, _ = best(
        lambda: engine.multiple_choice(model, tokenizer, rows["mc"], rows["mc_train"], config, same_split=False, device=device),
        args.repeat,
    )
    figures["multiple_choice"] = {
        "requests": len(mc_requests),
        "lm_eval_per_s": len(mc_requests) / t_lm,
        "assay_per_s": len(mc_requests) / t_assay,
        "ratio": t_lm / t_assay,
    }

    gen_requests = task_dict["b_gen"].instances
    t_lm, _ = best(lambda: lm.generate_until(gen_requests, disable_tqdm=True), args.repeat)
    config = TextGenerationConfig(kind="generate", batch_size=args.batch, max_new_tokens=args.new_tokens, until=[".", "Question"])
    t_assay, _ = best(
        lambda: engine.generate_answers(model, tokenizer, rows["gen"], [], config, same_split=False, device=device), args.repeat
    )
    figures["generate"] = {
        "requests": len(gen_requests),
        "lm_eval_per_s": len(gen_requests) / t_lm,
        "assay_per_s": len(gen_requests) / t_assay,
        "ratio": t_lm / t_assay,
    }

    ppl_requests = task_dict["b_ppl"].instances
    tokens = sum(len(tokenizer.encode(r["text"])) for r in rows["ppl"])
    t_lm, _ = best(lambda: lm.loglikelihood_rolling(ppl_requests, disable_tqdm=True), args.repeat)
    config = TextGenerationConfig(kind="perplexity", batch_size=args.batch)
    t_assay, _ = best(lambda: engine.perplexity(model, tokenizer, rows["ppl"], config, device=device), args.repeat)
    window = engine.window_of(model, tokenizer)
    batch = torch.randint(0, len(tokenizer), (args.batch, window), device=device)
    batches = max(1, tokens // (args.batch * window))

    def forward_only():
        with torch.inference_mode():
            for _ in range(batches):
                model(batch).logits.float().log_softmax(-1)
        if gpu:
            torch.cuda.synchronize()

    t_forward, _ = best(forward_only, args.repeat)
    forward_tokens = batches * args.batch * window
    figures["perplexity"] = {
        "tokens": tokens,
        "lm_eval_per_s": tokens / t_lm,
        "assay_per_s": tokens / t_assay,
        "ratio": t_lm / t_assay,
        "forward_only_per_s": forward_tokens / t_forward,
        "of_forward_only": (tokens / t_assay) / (forward_tokens / t_forward),
    }
    print(f"model {args.model} on {device} ({dtype}), Assay batch {args.batch}, lm-eval batch {args.lm_eval_batch}")
    for kind, f in figures.items():
        print(f"{kind:16s} " + "  ".join(f"{k} {v:,.2f}" for k, v in f.items()))
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "device": device, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
