"""Language-model evaluation throughput: lm-evaluation-harness's HF backend vs Assay's engine
(``workers.lm``), the same model and the same data, in one run, per kind.

- ``multiple_choice``: loglikelihood requests (instance x choice) per second, on questions
  with ``--fewshot`` examples and answers of several tokens (ARC/MMLU style); prompts fit
  the window, as real benchmarks' do at real models' windows, unless ``--overflow``, where
  a fifth of the questions carry a long preamble and run past the tiny model's 128 tokens
  (each choice then gets its own window, for lm-eval and Assay alike). The fixtures'
  choices of a question differ mostly in their last token, where lm-eval's own cache
  already scores them from one forward; ``--distinct-choices`` leads each with its own word;
- ``generate``: prompts per second (greedy, ``--new-tokens`` at most, stop strings);
- ``perplexity``: scored tokens per second, and the limit: the model's forward alone on
  full windows already tokenized, at the same batch size.

lm-eval is timed from its built requests to its answers (``HFLM.loglikelihood`` and kin:
tokenization included, task set-up not), Assay from the instances to its records and
metrics (prompts, tokenization and scoring included). The two run in turns, ``--repeat``
times each, and each one's best run counts: a shared 2-core VM swings by 2-5x within a
minute, and taking turns exposes both to the same swings. Each run's process CPU time is
measured beside its wall time; with ``--threads 1`` it is the work done, whatever the load
(the ratios print for both).

Usage: ``python bench/lm_throughput.py [--model tiny|small|medium] [--instances 400]
[--batch 64] [--lm-eval-batch 64] [--threads 1] [--kinds multiple_choice,generate]
[--json out.json]``. ``small`` (~90M parameters) and
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

LEADS = ("one", "the", "some", "a")
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


def choice_rows(n: int, seed: int, *, overflow: bool, distinct: bool) -> list[dict]:
    """The fixtures' four-choice questions of several-token answers ("a small bird"); without
    ``overflow``, each question without the preamble that makes some overflow the window;
    with ``distinct``, each choice of a question led by its own word ("one big cat", "the
    red owl"), as most benchmarks' answers are, so that lm-eval's cache of contexts that
    differ in the last token only never applies."""
    rows = fx.choice_rows(n, seed=seed, phrases=1.0)
    for row in rows:
        if not overflow:
            row["question"] = row["question"][row["question"].rindex("Question:") :]
        if distinct:
            row["choices"] = [f"{lead} {c.split(' ', 1)[1]}" for lead, c in zip(LEADS, row["choices"], strict=False)]
    return rows


def timed(fn) -> tuple[float, float]:
    """Wall and process CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def turns(fns, repeat: int) -> list[tuple[float, float]]:
    """Best (wall, CPU) seconds of each function, the functions run in turns."""
    runs: list[list[tuple[float, float]]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, mine in zip(fns, runs, strict=True):
            mine.append(timed(fn))
    return [(min(w for w, _ in mine), min(c for _, c in mine)) for mine in runs]


def duel(lm_eval_fn, assay_fn, repeat: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Best (wall, CPU) seconds of lm-eval and of Assay, run in turns."""
    lm_eval_t, assay_t = turns([lm_eval_fn, assay_fn], repeat)
    return lm_eval_t, assay_t


def rates(count: float, lm_eval: tuple[float, float], assay: tuple[float, float]) -> dict[str, float]:
    return {
        "lm_eval_per_s": count / lm_eval[0],
        "assay_per_s": count / assay[0],
        "ratio": lm_eval[0] / assay[0],
        "cpu_ratio": lm_eval[1] / assay[1],
    }


def perplexity_figures(lm, requests, model, tokenizer, docs, args, device) -> dict[str, float]:
    """Scored tokens per second, and the limit: the model's forward with a log-softmax over
    full windows of random tokens, at Assay's batch size, taking turns with the other two."""
    tokens = sum(len(tokenizer.encode(r["text"])) for r in docs)
    config = TextGenerationConfig(kind="perplexity", batch_size=args.batch)
    window = engine.window_of(model, tokenizer)
    # As many full windows as the texts hold tokens, in batches of Assay's size.
    full = -(-tokens // window)
    batches = [
        torch.randint(0, len(tokenizer), (min(args.batch, full - start), window), device=device)
        for start in range(0, full, args.batch)
    ]

    def forward_only():
        with torch.inference_mode():
            for batch in batches:
                model(batch).logits.float().log_softmax(-1)
        if device == "cuda":
            torch.cuda.synchronize()

    lm_eval_t, assay_t, forward_t = turns(
        [
            lambda: lm.loglikelihood_rolling(requests, disable_tqdm=True),
            lambda: engine.perplexity(model, tokenizer, docs, config, device=device),
            forward_only,
        ],
        args.repeat,
    )
    forward_per_s, forward_cpu_per_s = full * window / forward_t[0], full * window / forward_t[1]
    return {
        "tokens": tokens,
        **rates(tokens, lm_eval_t, assay_t),
        "forward_only_per_s": forward_per_s,
        "of_forward_only": tokens / assay_t[0] / forward_per_s,
        "cpu_of_forward_only": tokens / assay_t[1] / forward_cpu_per_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--batch", type=int, default=64, help="Assay's batch size")
    parser.add_argument("--lm-eval-batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--fewshot", type=int, default=2, help="few-shot examples before each multiple-choice question")
    parser.add_argument("--overflow", action="store_true", help="keep the test fixtures' long questions that overflow the window")
    parser.add_argument("--distinct-choices", action="store_true", help="each choice of a question led by its own word")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's own choice)")
    parser.add_argument("--kinds", default="multiple_choice,generate,perplexity", help="comma-separated kinds to run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = set(args.kinds.split(","))
    gpu = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    work = Path(tempfile.mkdtemp(prefix="lm-bench-"))
    os.environ.setdefault("HF_DATASETS_CACHE", str(work / "datasets"))
    model_dir = build(work / "model", args.model)
    n = args.instances
    data = {
        "mc": fx.write_jsonl(work / "mc.jsonl", choice_rows(n, 1, overflow=args.overflow, distinct=args.distinct_choices)),
        "mc_train": fx.write_jsonl(
            work / "mc_train.jsonl", choice_rows(50, 2, overflow=args.overflow, distinct=args.distinct_choices)
        ),
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
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = {k: [json.loads(line) for line in p.read_text().splitlines()] for k, p in data.items()}
    figures: dict[str, dict[str, float]] = {}

    if "multiple_choice" in kinds:
        mc_requests = task_dict["b_mc"].instances
        config = TextGenerationConfig(
            kind="multiple_choice",
            batch_size=args.batch,
            num_fewshot=args.fewshot,
            fewshot_split="train" if args.fewshot else None,
        )
        lm_eval_t, assay_t = duel(
            lambda: lm.loglikelihood(mc_requests, disable_tqdm=True),
            lambda: engine.multiple_choice(
                model, tokenizer, rows["mc"], rows["mc_train"], config, same_split=False, device=device
            ),
            args.repeat,
        )
        figures["multiple_choice"] = {"requests": len(mc_requests), **rates(len(mc_requests), lm_eval_t, assay_t)}

    if "generate" in kinds:
        gen_requests = task_dict["b_gen"].instances
        config = TextGenerationConfig(
            kind="generate", batch_size=args.batch, max_new_tokens=args.new_tokens, until=[".", "Question"]
        )
        lm_eval_t, assay_t = duel(
            lambda: lm.generate_until(gen_requests, disable_tqdm=True),
            lambda: engine.generate_answers(model, tokenizer, rows["gen"], [], config, same_split=False, device=device),
            args.repeat,
        )
        figures["generate"] = {"requests": len(gen_requests), **rates(len(gen_requests), lm_eval_t, assay_t)}

    if "perplexity" in kinds:
        figures["perplexity"] = perplexity_figures(lm, task_dict["b_ppl"].instances, model, tokenizer, rows["ppl"], args, device)
    print(f"model {args.model} on {device} ({dtype}), Assay batch {args.batch}, lm-eval batch {args.lm_eval_batch}")
    for kind, f in figures.items():
        print(f"{kind:16s} " + "  ".join(f"{k} {v:,.2f}" for k, v in f.items()))
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "device": device, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
