"""``make demo``: the whole path a user takes, against the local stack.

Part one trains (once, cached) a small ViT on scikit-learn's bundled digits, writes the
held-out digits as an image folder, uploads both through the SDK with progress bars, orders
an evaluation, waits for it, and prints the summary, the per-class table and the
leaderboard. Part two does the same, shorter, for a language model: a tiny GPT-2 built
here (``devstack.tinylm``) on a multiple-choice set, evaluated with few-shot examples as
lm-evaluation-harness would, printing ``acc`` and ``acc_norm``. Last comes the web
console's address of the first evaluation.
Reads ``ASSAY_URL`` and ``ASSAY_API_KEY`` (``make demo`` sources ``.assay/local.env``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from assay.cli import table
from assay.client import Client
from shared.results_api import LanguageModelInstance


def main() -> int:
    # The demo model is trained here (devstack.digits): nothing is fetched from any hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from devstack.digits import cached_digits_vit, digits_images, write_imagefolder_archive

    cache = Path(os.environ.get("ASSAY_DEMO_CACHE", ".cache/demo"))
    print("1/6 building the demo model (digits ViT; trained once, then cached)…", flush=True)
    model_dir = cached_digits_vit(cache)

    client = Client()
    with tempfile.TemporaryDirectory() as tmp:
        print("2/6 writing the held-out digits as an image folder…", flush=True)
        archive = write_imagefolder_archive(Path(tmp, "digits.zip"), {"test": digits_images("test")})
        print("3/6 uploading the model and the dataset; the workers verify and ingest them…", flush=True)
        model = client.models.upload(model_dir, name="digits-vit", labels={"demo": "true"}, wait=True)
        dataset = client.datasets.upload(archive, name="digits", labels={"demo": "true"}, wait=True)
    for entity in (model, dataset):
        if entity.status != "ready":
            print(f"{entity.id} ended {entity.status}: {entity.reason} {entity.message or ''}", file=sys.stderr)
            return 1

    print("4/6 evaluating…", flush=True)
    [evaluation] = client.evaluations.create(model.id, dataset.id, splits=["test"])
    done = evaluation.wait()
    if done.status != "complete":
        print(f"evaluation {done.id} ended {done.status}: {done.reason} {done.message or ''}", file=sys.stderr)
        return 1

    print("5/6 results\n", flush=True)
    summary = client.evaluations.summary(evaluation.id)
    for key in ("instances", "accuracy", "top_k_accuracy", "f1_macro", "expected_calibration_error", "log_loss"):
        if key in summary:
            print(f"  {key:<28} {summary[key]}")
    efficiency = summary.get("efficiency") or {}
    if efficiency:
        print(f"  {'throughput (instances/s)':<28} {efficiency.get('instances_per_second')}")
    rows = [c.model_dump() for c in client.evaluations.classes(evaluation.id).classes]
    print("\nper class\n" + table(rows, ["label", "precision", "recall", "f1", "support"]))
    board = client.evaluations.leaderboard(dataset.id, split="test", metric="accuracy")
    entries = [e.model_dump() for e in board.items]
    print(
        "\nleaderboard (digits, test, accuracy)\n" + table(entries, ["rank", "model_name", "model_id", "evaluation_id", "value"])
    )
    status = language_model_part(client, cache)
    if status:
        return status
    # Last, so it is what a person sees: the same evaluation as pages (`make up` serves them).
    print("\nweb console (sign in with ASSAY_API_KEY from .assay/local.env; `make up` keeps the stack running):")
    print(f"  {client.http.url}/ui/evaluations/{evaluation.id}")
    return 0


def language_model_part(client: Client, cache: Path) -> int:
    """A tiny causal language model on four-choice questions, 3-shot: acc and acc_norm."""
    from devstack.tinylm import cached_tiny_lm, choice_rows, write_jsonl

    print("\n6/6 a language model: a tiny GPT-2 on multiple-choice questions, 3-shot…", flush=True)
    model_dir = cached_tiny_lm(cache)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [{**r, "split": "train"} for r in choice_rows(40, seed=1)] + [
            {**r, "split": "test"} for r in choice_rows(200, seed=2)
        ]
        questions = write_jsonl(Path(tmp, "animals.jsonl"), rows)
        model = client.models.upload(model_dir, name="tiny-gpt2", labels={"demo": "true"}, task="text-generation", wait=True)
        dataset = client.datasets.upload(
            questions, name="animal-kinds", labels={"demo": "true"}, task="text-generation", shape="multiple_choice", wait=True
        )
    for entity in (model, dataset):
        if entity.status != "ready":
            print(f"{entity.id} ended {entity.status}: {entity.reason} {entity.message or ''}", file=sys.stderr)
            return 1
    config = {"num_fewshot": 3, "fewshot_split": "train"}
    [evaluation] = client.evaluations.create(model.id, dataset.id, splits=["test"], config=config)
    done = evaluation.wait()
    if done.status != "complete":
        print(f"evaluation {done.id} ended {done.status}: {done.reason} {done.message or ''}", file=sys.stderr)
        return 1
    summary = client.evaluations.summary(evaluation.id)
    print()
    for key in ("instances", "acc", "acc_norm"):
        print(f"  {key:<28} {summary.get(key)}")
    print(f"  {'truncated':<28} {summary.get('truncated')} (prompts cut from the left to the model's 128-token window)")
    first = next(iter(client.evaluations.instances(evaluation.id, page_size=1)))
    assert isinstance(first, LanguageModelInstance) and first.choices is not None
    print(f"\n  first question: {first.prompt!r}")
    for choice in first.choices:
        print(f"    {choice.loglikelihood:9.3f}  {choice.text}")
    print(f"  answer {first.answer}, picked {first.prediction} (by acc), {first.prediction_norm} (by acc_norm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
