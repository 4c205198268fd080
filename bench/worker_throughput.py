"""Images per second of five ways to evaluate one image classifier on the same images.

1. the ``transformers`` pipeline, one image per call;
2. the pipeline, batched (64);
3. ``evaluate``'s image-classification evaluator (with a local metric script: offline it
   cannot fetch ``accuracy`` from the hub; it is given the model directory as a string,
   because given a pipeline object it fails on transformers 5);
4. Assay's evaluation path end to end: local canonical Parquet shards -> prediction shards
   -> metrics (``workers.evaluate``);
5. the limit: model forward only, on pixel tensors already in memory (on the device).

Every path gets the images as PNG bytes and decodes them itself (except the limit). Each
is timed from a loaded model to its results; only the evaluator loads the model inside
its own call. Each path runs ``--repeat`` times, in rounds of one run of every path, and
its best run counts:
on a shared 2-core VM a single run swings by 20-30%, and the best of a few is the
steadiest estimate of what the code costs.

Usage: ``python bench/worker_throughput.py [--images 5000] [--model digits|base] [--json out.json]``.
``--model base`` builds a randomly initialised ViT-Base (224 px), meant for a GPU machine.
``--task text [--texts 2000] [--hidden 128] [--layers 4]`` measures a text classifier the
same way instead (``bench/text_throughput.py``).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
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

from devstack import digits  # noqa: E402
from workers.evaluate import EvalOptions, align_labels, evaluate_shards, summarize  # noqa: E402
from workers.ingest import IngestLimits, ingest_dataset  # noqa: E402
from workers.verify import label_names, load_model  # noqa: E402

CACHE = ROOT / ".cache" / "fixtures"
FORWARD_BATCHES = 16  # distinct input batches the forward-only limit cycles through


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


class Pipeline:
    def __init__(self, model_dir: Path, device: str, threads: int):
        from transformers import pipeline

        self.threads = threads
        self.pipe = pipeline("image-classification", model=str(model_dir), device=device)

    def run(self, encoded: list[bytes], batch_size: int | None) -> float:
        torch.set_num_threads(self.threads)
        if batch_size is None:
            return timed(lambda: [self.pipe(image) for image in open_images(encoded)])
        return timed(lambda: self.pipe(open_images(encoded), batch_size=batch_size))


class Evaluator:
    def __init__(self, model_dir: Path, encoded: list[bytes], labels: list[int], device: str, threads: int):
        import datasets
        import evaluate

        self.model_dir, self.device, self.threads = model_dir, device, threads
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=digits.LABEL_NAMES)})
        self.data = datasets.Dataset.from_dict(
            {"image": [{"bytes": b, "path": None} for b in encoded], "label": labels}, features=features
        )
        self.metric = evaluate.load(str(ROOT / "bench" / "metrics" / "accuracy.py"))
        self.task = evaluate.evaluator("image-classification")
        self.mapping = {name: i for i, name in enumerate(digits.LABEL_NAMES)}

    def run(self) -> float:
        torch.set_num_threads(self.threads)

        def compute():
            self.result = self.task.compute(
                model_or_pipeline=str(self.model_dir),
                data=self.data,
                metric=self.metric,
                label_mapping=self.mapping,
                device=0 if self.device == "cuda" else -1,
            )

        return timed(compute)


class Assay:
    """Canonical shards made once by the real ingestion; each run writes fresh predictions."""

    def __init__(self, model_dir: Path, encoded: list[bytes], labels: list[int], work: Path, options: EvalOptions):
        source = digits.write_hf_parquet(work / "data.parquet", [], labels, encoded=encoded)
        self.manifest = ingest_dataset(source, work / "dataset", work_dir=work / "extract", limits=IngestLimits(shard_rows=1000))
        self.shards = [work / "dataset" / "train" / s["name"] for s in self.manifest["splits"]["train"]["shards"]]
        self.load_seconds = timed(lambda: setattr(self, "loaded", load_model(model_dir)))
        self.work, self.options, self.runs = work, options, 0

    def run(self) -> float:
        model, processor = self.loaded
        names = label_names(model)
        out = self.work / f"predictions-{self.runs}"
        self.runs += 1

        def evaluate_and_summarize():
            stats = evaluate_shards(
                model,
                processor,
                self.shards,
                out,
                label_map=align_labels(self.manifest["label_names"], names),
                options=self.options,
            )
            self.summary = summarize(sorted(out.glob("part-*.parquet")), names, stats)

        return timed(evaluate_and_summarize)


class ForwardOnly:
    """The model alone, on input batches already on the device (cycled through ``n`` images)."""

    def __init__(self, model_dir: Path, encoded: list[bytes], device: str, batch: int):
        self.model, processor = load_model(model_dir)
        self.model = self.model.to(device)
        self.device, self.batch, self.n = device, batch, len(encoded)
        images = [i.convert("RGB") for i in open_images(encoded[: batch * FORWARD_BATCHES])]
        pixels = torch.from_numpy(np.asarray(processor(images=images, return_tensors="np")["pixel_values"]))
        self.batches = [pixels[i : i + batch].to(device) for i in range(0, len(pixels), batch)]

    def run(self, threads: int, processes: int = 1) -> float:
        """Seconds for all ``n`` images: in this process with ``threads`` torch threads, or
        split across ``processes`` forked processes of ``threads`` threads each (the
        layout Assay uses on the CPU, so the limit is measured in it too)."""
        sizes = [min(self.batch, self.n - start) for start in range(0, self.n, self.batch)]
        self._forward(sizes[:2], threads)  # warm-up
        if processes == 1:
            return timed(lambda: self._forward(sizes, threads))
        context = multiprocessing.get_context("fork")

        def split():
            workers = [context.Process(target=self._forward, args=(sizes[i::processes], threads)) for i in range(processes)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()

        return timed(split)

    def _forward(self, sizes: list[int], threads: int) -> None:
        torch.set_num_threads(threads)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device == "cuda")
        with torch.inference_mode(), autocast:
            for i, size in enumerate(sizes):
                self.model(pixel_values=self.batches[i % len(self.batches)][:size]).logits.float().softmax(-1).topk(5)
        if self.device == "cuda":
            torch.cuda.synchronize()

    def best(self, cores: int) -> float:
        """The fastest layout of the forward pass on this machine."""
        if self.device == "cuda":
            return self.run(1)
        layouts = {(1, 1), (cores, 1), (1, cores)}
        return min(self.run(threads, processes) for threads, processes in layouts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["image", "text"], default="image")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--texts", type=int, default=2000, help="--task text: how many texts")
    parser.add_argument("--hidden", type=int, default=128, help="--task text: the BERT's hidden size")
    parser.add_argument("--layers", type=int, default=4, help="--task text: the BERT's layers")
    parser.add_argument(
        "--assay-replicas", type=int, default=None, help="--task text: Assay's CPU replicas (default: one per core)"
    )
    parser.add_argument("--assay-threads", type=int, default=None, help="--task text: torch threads per Assay process")
    parser.add_argument("--model", choices=["digits", "base"], default="digits")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5, help="rounds; each path's best run counts")
    parser.add_argument("--skip", nargs="*", default=[], choices=["per_image", "per_text", "batched", "evaluator"])
    parser.add_argument("--decode-workers", type=int, default=None, help="Assay's decoder processes (default: by device)")
    parser.add_argument("--json", type=Path)
    # On 2 cores one torch thread beats two for the pipelines (small ops, contention).
    # The forward-only limit tries one thread, every core as threads, and every core as
    # single-threaded processes, and keeps the fastest.
    parser.add_argument("--baseline-threads", type=int, default=None)
    args = parser.parse_args()
    if args.task == "text":
        import text_throughput  # beside this file

        return text_throughput.main(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = digits.cached_digits_vit(CACHE) if args.model == "digits" else vit_base_dir()
    encoded, labels = make_images(args.images)
    n = len(encoded)
    cores = len(os.sched_getaffinity(0))
    threads = args.baseline_threads or (1 if cores <= 2 else cores)
    options = EvalOptions(batch_size=args.batch, decode_workers=args.decode_workers)
    resolved = options.resolved(batches=-(-n // args.batch))
    print(
        f"{n} images, model {args.model} ({model_dir.name}), batch {args.batch}, device {device}, {cores} cores; "
        f"baselines on {threads} torch thread(s); Assay: {resolved.replicas} replica(s) x {resolved.torch_threads} torch thread(s), "
        f"{resolved.decode_workers} decoder process(es); best of {args.repeat}",
        flush=True,
    )

    runs: dict[str, list[float]] = {}
    extra: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        forward = ForwardOnly(model_dir, encoded, device, args.batch)
        assay = Assay(model_dir, encoded, labels, Path(tmp), options)
        paths = {"forward_only": lambda: forward.best(cores), "assay": assay.run}
        if not {"batched", "per_image"} <= set(args.skip):
            pipe = Pipeline(model_dir, device, threads)
            if "batched" not in args.skip:
                paths["pipeline_batched"] = lambda: pipe.run(encoded, args.batch)
            if "per_image" not in args.skip:
                paths["pipeline_per_image"] = lambda: pipe.run(encoded, None)
        if "evaluator" not in args.skip:
            evaluator = Evaluator(model_dir, encoded, labels, device, threads)
            paths["evaluator"] = evaluator.run
        for _ in range(args.repeat):  # every path once a round: a noisy spell hits them all
            for name, run in paths.items():
                runs.setdefault(name, []).append(run())
        extra["assay_accuracy"] = assay.summary["accuracy"]
        extra["assay_efficiency"] = assay.summary["efficiency"]
        extra["assay_model_load_seconds"] = assay.load_seconds
        if "evaluator" in paths:
            extra["evaluator_accuracy"] = evaluator.result["accuracy"]

    seconds = {name: min(times) for name, times in runs.items()}
    rate = {name: n / s for name, s in seconds.items()}
    print(f"\n{'path':<22}{'images/s':>12}{'best s':>10}   all runs (s)")
    for name in ("pipeline_per_image", "pipeline_batched", "evaluator", "assay", "forward_only"):
        if name in rate:
            print(f"{name:<22}{rate[name]:>12.0f}{seconds[name]:>10.2f}   {' '.join(f'{s:.2f}' for s in runs[name])}")
    ratios = {}
    for other, aim in (
        ("pipeline_batched", 3.0),
        ("evaluator", 15.0),
        ("pipeline_per_image", None),
        ("forward_only", 0.6 if device == "cpu" else 0.9),
    ):
        if other in rate:
            ratios[f"assay/{other}"] = rate["assay"] / rate[other]
            goal = f"  (aim >= {aim:g})" if aim else ""
            print(f"assay / {other:<20}{ratios[f'assay/{other}']:>8.2f}x{goal}")
    eff = extra["assay_efficiency"]
    print(
        f"Assay's last run: {eff['wall_seconds']:.2f} s inference (first batch after {eff['first_batch_seconds']:.2f} s, "
        f"model {eff['model_seconds']:.2f} s, batch p50 {eff['batch_latency_p50_ms']:.1f} ms), peak memory {eff['peak_memory_bytes'] / 2**20:.0f} MiB"
    )
    accuracy = f"accuracy: assay {extra['assay_accuracy']:.4f}"
    if "evaluator_accuracy" in extra:
        accuracy += f", evaluator {extra['evaluator_accuracy']:.4f}"
    print(accuracy + f"; Assay's model load (not timed, as for the pipelines): {extra['assay_model_load_seconds']:.2f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "images": n,
                    "device": device,
                    "model": args.model,
                    "images_per_second": rate,
                    "runs": runs,
                    "ratios": ratios,
                    **extra,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
