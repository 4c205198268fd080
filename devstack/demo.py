"""``make demo``: the whole path a user takes, against the local stack.

Trains (once, cached) a small ViT on scikit-learn's bundled digits, writes the held-out
digits as an image folder, uploads both through the SDK with progress bars, orders an
evaluation, waits for it, and prints the summary, the per-class table, the leaderboard
and, last, the web console's address of the evaluation.
Reads ``ASSAY_URL`` and ``ASSAY_API_KEY`` (``make demo`` sources ``.assay/local.env``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from assay.cli import table
from assay.client import Client


def main() -> int:
    # The demo model is trained here (devstack.digits): nothing is fetched from any hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from devstack.digits import cached_digits_vit, digits_images, write_imagefolder_archive

    cache = Path(os.environ.get("ASSAY_DEMO_CACHE", ".cache/demo"))
    print("1/5 building the demo model (digits ViT; trained once, then cached)…", flush=True)
    model_dir = cached_digits_vit(cache)

    client = Client()
    with tempfile.TemporaryDirectory() as tmp:
        print("2/5 writing the held-out digits as an image folder…", flush=True)
        archive = write_imagefolder_archive(Path(tmp, "digits.zip"), {"test": digits_images("test")})
        print("3/5 uploading the model and the dataset; the workers verify and ingest them…", flush=True)
        model = client.models.upload(model_dir, name="digits-vit", labels={"demo": "true"}, wait=True)
        dataset = client.datasets.upload(archive, name="digits", labels={"demo": "true"}, wait=True)
    for entity in (model, dataset):
        if entity.status != "ready":
            print(f"{entity.id} ended {entity.status}: {entity.reason} {entity.message or ''}", file=sys.stderr)
            return 1

    print("4/5 evaluating…", flush=True)
    [evaluation] = client.evaluations.create(model.id, dataset.id, splits=["test"])
    done = evaluation.wait()
    if done.status != "complete":
        print(f"evaluation {done.id} ended {done.status}: {done.reason} {done.message or ''}", file=sys.stderr)
        return 1

    print("5/5 results\n", flush=True)
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
    # Last, so it is what a person sees: the same evaluation as pages (`make up` serves them).
    print("\nweb console (sign in with ASSAY_API_KEY from .assay/local.env; `make up` keeps the stack running):")
    print(f"  {client.http.url}/ui/evaluations/{evaluation.id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
