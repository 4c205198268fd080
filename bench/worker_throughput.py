"""Images per second of five ways to evaluate one image classifier on the same images.

1. the ``transformers`` pipeline, one image per call;
2. the pipeline, batched (64);
3. ``evaluate``'s image-classification evaluator (with a local metric script: offline it
   cannot fetch ``accuracy`` from the hub; it is given the model directory as a string,
   because given a pipeline object it fails on transformers 5);
4. Assay's evaluation path end to end: local canonical Parquet shards -> prediction shards
   -> metrics (``workers.evaluate``);
5. the limit: model forward only, on pixel tensors already in memory.

Every path gets the images as PNG bytes and decodes them itself (except the limit).
Usage: ``python bench/worker_throughput.py [--images 5000] [--model digits|base] [--json out.json]``.
``--model base`` builds a randomly initialised ViT-Base (224 px) — meant for a GPU machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "huggingface"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from workers import digits  # noqa: E402
from workers.evaluate import EvalOptions, align_labels, evaluate_shards, summarize  # noqa: E402
from workers.ingest import IngestLimits, ingest_dataset  # noqa: E402
from workers.verify import label_names, load_model  # noqa: E402

BATCH = 64
CACHE = ROOT / ".cache" / "fixtures"


def vit_base_dir() -> Path:
    """A ViT-Base-sized classifier (random weights: throughput does not depend on them)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    target = CACHE / "vit-base-random"
    if not (target / "config.json").exists():
        torch.manual_seed(0)
        config = ViTConfig(
            num_labels=10, id2label=dict(enumerate(digits.LABEL_NAMES)), label2id={n: i for i, n in enumerate(digits.LABEL_NAMES)}
        )
        ViTForImageClassification(config).save_pretrained(target)
        ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(target)
    return target


def make_images(n: int) -> tuple[list[bytes], list[int]]:
    images, labels = digits.digits_images("all")
    encoded = [digits.png_bytes(image) for image in images]
    return [encoded[i % len(encoded)] for i in range(n)], [labels[i % len(labels)] for i in range(n)]


def open_images(encoded: list[bytes]) -> list[Image.Image]:
    # Lazy: the pixels are decoded inside whatever consumes them, as in a real run.
    return [Image.open(io.BytesIO(b)) for b in encoded]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_pipeline(model_dir: Path, encoded: list[bytes], *, batch_size: int | None, device: str, threads: int) -> float:
    from transformers import pipeline

    torch.set_num_threads(threads)
    pipe = pipeline("image-classification", model=str(model_dir), device=device)
    if batch_size is None:
        return timed(lambda: [pipe(image) for image in open_images(encoded)])
    return timed(lambda: pipe(open_images(encoded), batch_size=batch_size))


def bench_evaluator(model_dir: Path, encoded: list[bytes], labels: list[int], device: str, threads: int) -> tuple[float, float]:
    import datasets
    import evaluate

    torch.set_num_threads(threads)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=digits.LABEL_NAMES)})
    data = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in encoded], "label": labels}, features=features)
    metric = evaluate.load(str(ROOT / "bench" / "metrics" / "accuracy.py"))
    task = evaluate.evaluator("image-classification")
    mapping = {name: i for i, name in enumerate(digits.LABEL_NAMES)}
    result = {}

    def run():
        result.update(
            task.compute(
                model_or_pipeline=str(model_dir), data=data, metric=metric, label_mapping=mapping,
                device=0 if device == "cuda" else -1,
            )
        )

    return timed(run), result["accuracy"]


def bench_assay(model_dir: Path, encoded: list[bytes], labels: list[int], work: Path) -> tuple[float, float, dict]:
    source = digits.write_hf_parquet(work / "data.parquet", [], labels, encoded=encoded)
    manifest = ingest_dataset(source, work / "dataset", work_dir=work / "extract", limits=IngestLimits(shard_rows=1000))
    shards = [work / "dataset" / "train" / s["name"] for s in manifest["splits"]["train"]["shards"]]
    out = work / "predictions"
    result = {}

    def run():
        model, processor = load_model(model_dir)
        names = label_names(model)
        stats = evaluate_shards(
            model, processor, shards, out, label_map=align_labels(manifest["label_names"], names),
            options=EvalOptions(batch_size=BATCH),
        )
        result.update(summarize(sorted(out.glob("part-*.parquet")), names, stats))

    return timed(run), result["accuracy"], result["efficiency"]


def bench_forward(model_dir: Path, encoded: list[bytes], device: str, threads: int) -> float:
    model, processor = load_model(model_dir)
    model = model.to(device)
    torch.set_num_threads(threads)
    pixels = torch.from_numpy(np.asarray(processor(images=[i.convert("RGB") for i in open_images(encoded)], return_tensors="np")["pixel_values"]))
    batches = [pixels[i : i + BATCH].to(device) for i in range(0, len(pixels), BATCH)]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    def run():
        with torch.inference_mode(), autocast:
            for batch in batches:
                model(pixel_values=batch).logits.float().softmax(-1).topk(5)
        if device == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up
    return timed(run)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--model", choices=["digits", "base"], default="digits")
    parser.add_argument("--skip", nargs="*", default=[], choices=["per_image", "batched", "evaluator"])
    parser.add_argument("--json", type=Path)
    # On 2 cores one torch thread beats two for every path measured (small ops, contention);
    # the forward-only limit tries both and keeps the faster.
    parser.add_argument("--baseline-threads", type=int, default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = digits.cached_digits_vit(CACHE) if args.model == "digits" else vit_base_dir()
    encoded, labels = make_images(args.images)
    n = len(encoded)
    cores = os.cpu_count() or 1
    threads = args.baseline_threads or (1 if cores <= 2 else cores)
    print(f"{n} images, model {args.model} ({model_dir.name}), device {device}, {cores} cores, baselines on {threads} torch thread(s)", flush=True)

    seconds: dict[str, float] = {}
    extra: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        seconds["forward_only"] = min(bench_forward(model_dir, encoded, device, t) for t in sorted({1, cores}))
        seconds["assay"], extra["assay_accuracy"], extra["assay_efficiency"] = bench_assay(model_dir, encoded, labels, Path(tmp))
        if "batched" not in args.skip:
            seconds["pipeline_batched"] = bench_pipeline(model_dir, encoded, batch_size=BATCH, device=device, threads=threads)
        if "per_image" not in args.skip:
            seconds["pipeline_per_image"] = bench_pipeline(model_dir, encoded, batch_size=None, device=device, threads=threads)
        if "evaluator" not in args.skip:
            seconds["evaluator"], extra["evaluator_accuracy"] = bench_evaluator(model_dir, encoded, labels, device, threads)

    rate = {name: n / s for name, s in seconds.items()}
    print(f"\n{'path':<22}{'images/s':>12}{'seconds':>10}")
    for name in ("pipeline_per_image", "pipeline_batched", "evaluator", "assay", "forward_only"):
        if name in rate:
            print(f"{name:<22}{rate[name]:>12.0f}{seconds[name]:>10.2f}")
    ratios = {}
    for other, aim in (("pipeline_batched", 3.0), ("evaluator", 15.0), ("pipeline_per_image", None), ("forward_only", 0.6 if device == "cpu" else 0.9)):
        if other in rate:
            ratios[f"assay/{other}"] = rate["assay"] / rate[other]
            goal = f"  (aim >= {aim:g})" if aim else ""
            print(f"assay / {other:<20}{ratios[f'assay/{other}']:>8.2f}x{goal}")
    accuracy = f"accuracy: assay {extra['assay_accuracy']:.4f}"
    if "evaluator_accuracy" in extra:
        accuracy += f", evaluator {extra['evaluator_accuracy']:.4f}"
    print(accuracy)
    if args.json:
        args.json.write_text(json.dumps({"images": n, "device": device, "model": args.model, "images_per_second": rate, "ratios": ratios, **extra}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
