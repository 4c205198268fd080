"""Texts per second of five ways to evaluate one text classifier on the same texts
(``python bench/worker_throughput.py --task text``).

1. the ``transformers`` pipeline, one text per call;
2. the pipeline, batched (``--batch``);
3. ``evaluate``'s text-classification evaluator (with the local metric script
   ``bench/metrics/accuracy.py``; it is given the model directory as a string, as for
   images; if it cannot run offline on this ``transformers``, the output says so);
4. Assay end to end: canonical Parquet shards made by the real ingestion -> tokenize,
   sort by length, dynamic padding, batched inference -> prediction shards -> metrics
   (``workers.text.inference``);
5. the limit: model forward only, on the same texts pre-tokenized and padded in Assay's
   batches (sorted by length, cut at its CPU token budget), tensors already on the device; the best of one thread, every core
   as threads, and every core as single-threaded processes (Assay's CPU layout).

The model is a BERT-style classifier built on the spot (``tests.workers.text_fixtures``;
default hidden 128, 4 layers: bigger than the tests' so that the model dominates), the
texts 5 to 120 words long. Each path runs ``--repeat`` times, a round being one run of
every path, and its best run counts (a shared 2-core VM swings 20-30% run to run).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tests.workers import text_fixtures as tf
from workers.canonical import IngestLimits
from workers.evaluate import align_labels, summarize
from workers.text import ingest_dataset
from workers.text.inference import TextOptions, evaluate_text_shards
from workers.text.model import load_model, resolve_max_length
from workers.verify import label_names

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "fixtures"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_model(hidden: int, layers: int) -> Path:
    return tf.build_text_classifier(
        CACHE / f"text-bert-h{hidden}-l{layers}",
        hidden_size=hidden,
        layers=layers,
        heads=4,
        intermediate_size=4 * hidden,
        max_positions=512,
    )


class Pipeline:
    def __init__(self, model_dir: Path, device: str, threads: int):
        from transformers import pipeline

        self.threads = threads
        self.pipe = pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir), device=device)

    def run(self, texts: list[str], batch_size: int | None) -> float:
        torch.set_num_threads(self.threads)
        if batch_size is None:
            return timed(lambda: [self.pipe(t, truncation=True) for t in texts])
        return timed(lambda: self.pipe(texts, batch_size=batch_size, truncation=True))


class Evaluator:
    def __init__(self, model_dir: Path, texts: list[str], labels: list[int], device: str, threads: int):
        import datasets
        import evaluate as hf_evaluate

        self.model_dir, self.device, self.threads = model_dir, device, threads
        self.data = datasets.Dataset.from_dict({"text": texts, "label": labels})
        self.metric = hf_evaluate.load(str(ROOT / "bench" / "metrics" / "accuracy.py"))
        self.task = hf_evaluate.evaluator("text-classification")
        self.mapping = {name: i for i, name in enumerate(tf.LABEL_NAMES)}
        self.result: dict = {}

    def run(self) -> float:
        torch.set_num_threads(self.threads)

        def compute():
            self.result = self.task.compute(
                model_or_pipeline=str(self.model_dir),
                data=self.data,
                metric=self.metric,
                label_mapping=self.mapping,
                input_column="text",
                label_column="label",
                device=0 if self.device == "cuda" else -1,
            )

        return timed(compute)


class Assay:
    """Canonical shards made once by the real ingestion; each run writes fresh predictions
    from the loaded model (its load and checks are not timed, as for the pipelines)."""

    def __init__(self, model_dir: Path, texts: list[str], labels: list[int], work: Path, options: TextOptions):
        source = tf.write_jsonl(work / "data.jsonl", {"text": texts, "label": labels})
        self.manifest = ingest_dataset(source, work / "dataset", work_dir=work / "extract", limits=IngestLimits(shard_rows=1000))
        self.shards = [work / "dataset" / "train" / s["name"] for s in self.manifest["splits"]["train"]["shards"]]
        self.load_seconds = timed(lambda: setattr(self, "loaded", load_model(model_dir)))
        self.work, self.options, self.runs = work, options, 0
        self.summary: dict = {}

    def run(self) -> float:
        model, tokenizer = self.loaded
        names = label_names(model)
        out = self.work / f"predictions-{self.runs}"
        self.runs += 1

        def evaluate_and_summarize():
            label_map = align_labels(self.manifest["label_names"], names)
            stats = evaluate_text_shards(model, tokenizer, self.shards, out, label_map=label_map, options=self.options)
            self.summary = summarize(sorted(out.glob("part-*.parquet")), names, stats)

        return timed(evaluate_and_summarize)


class ForwardOnly:
    """The model alone, on the texts tokenized ahead, sorted by length and padded per batch
    (Assay's batches), already on the device."""

    def __init__(self, model_dir: Path, texts: list[str], device: str, options: TextOptions):
        model, tokenizer = load_model(model_dir)
        self.model, self.device = model.to(device), device
        max_length = resolve_max_length(model, tokenizer, None)
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
        order = np.argsort(-np.array(lengths), kind="stable")
        budget = options.cpu_batch_tokens if device == "cpu" else None
        self.batches, start = [], 0
        while start < len(order):  # Assay's batches: batch_size rows, fewer at the CPU's token budget
            size = max(1, min(options.batch_size, budget // lengths[order[start]])) if budget else options.batch_size
            chunk = [texts[i] for i in order[start : start + size]]
            encoded = tokenizer(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            self.batches.append({k: v.to(device) for k, v in encoded.items()})
            start += size

    def run(self, threads: int, processes: int = 1) -> float:
        """Seconds for every batch: in this process with ``threads`` torch threads, or split
        across ``processes`` forked processes of ``threads`` threads each (Assay's CPU
        layout, so the limit is measured in it too)."""
        self._forward(self.batches[:1], threads)  # warm-up
        if processes == 1:
            return timed(lambda: self._forward(self.batches, threads))
        context = multiprocessing.get_context("fork")

        def split():
            workers = [
                context.Process(target=self._forward, args=(self.batches[i::processes], threads)) for i in range(processes)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join()

        return timed(split)

    def _forward(self, batches: list[dict], threads: int) -> None:
        torch.set_num_threads(threads)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device == "cuda")
        with torch.inference_mode(), autocast:
            for batch in batches:
                self.model(**batch).logits.float().softmax(-1).topk(3)
        if self.device == "cuda":
            torch.cuda.synchronize()

    def best(self, cores: int) -> float:
        """The fastest layout of the forward pass on this machine."""
        if self.device == "cuda":
            return self.run(1)
        return min(self.run(threads, processes) for threads, processes in {(1, 1), (cores, 1), (1, cores)})


def make_texts(n: int) -> tuple[list[str], list[int]]:
    columns = tf.labelled(n, seed=7)
    texts = tf.sentences(n, seed=7, min_words=5, max_words=120)
    return texts, columns["label"]


def main(args) -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = bench_model(args.hidden, args.layers)
    texts, labels = make_texts(args.texts)
    n = len(texts)
    cores = len(os.sched_getaffinity(0))
    threads = args.baseline_threads or (1 if cores <= 2 else cores)
    options = TextOptions(batch_size=args.batch, replicas=args.assay_replicas, torch_threads=args.assay_threads)
    layout = "this process" if device == "cuda" or args.assay_replicas == 1 else f"{args.assay_replicas or cores} replica(s)"
    print(
        f"{n} texts of 5-120 words, BERT hidden {args.hidden} x {args.layers} layers ({model_dir.name}), batch {args.batch}, "
        f"device {device}, {cores} cores; baselines on {threads} torch thread(s); Assay in {layout}"
        f"{f' on {args.assay_threads} torch thread(s)' if args.assay_threads else ''}; best of {args.repeat}",
        flush=True,
    )
    runs: dict[str, list[float]] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        forward = ForwardOnly(model_dir, texts, device, options)
        assay = Assay(model_dir, texts, labels, Path(tmp), options)
        paths = {"forward_only": lambda: forward.best(cores), "assay": assay.run}
        if not {"batched", "per_text"} <= set(args.skip):
            pipe = Pipeline(model_dir, device, threads)
            if "batched" not in args.skip:
                paths["pipeline_batched"] = lambda: pipe.run(texts, args.batch)
            if "per_text" not in args.skip:
                paths["pipeline_per_text"] = lambda: pipe.run(texts, None)
        if "evaluator" not in args.skip:
            try:
                evaluator = Evaluator(model_dir, texts, labels, device, threads)
                evaluator.run()  # a first call proves it runs offline here
                paths["evaluator"] = evaluator.run
            except Exception as e:  # noqa: BLE001 -- a benchmark reports why a path could not run
                notes.append(f"evaluate's evaluator did not run offline here: {type(e).__name__}: {str(e)[:200]}")
        for _ in range(args.repeat):
            for name, run in paths.items():
                runs.setdefault(name, []).append(run())

    seconds = {name: min(times) for name, times in runs.items()}
    rate = {name: n / s for name, s in seconds.items()}
    print(f"\n{'path':<22}{'texts/s':>12}{'best s':>10}   all runs (s)")
    for name in ("pipeline_per_text", "pipeline_batched", "evaluator", "assay", "forward_only"):
        if name in rate:
            print(f"{name:<22}{rate[name]:>12.0f}{seconds[name]:>10.2f}   {' '.join(f'{s:.2f}' for s in runs[name])}")
    ratios = {}
    for other, aim in (("pipeline_batched", 3.0), ("evaluator", None), ("pipeline_per_text", None), ("forward_only", 0.6)):
        if other in rate:
            ratios[f"assay/{other}"] = rate["assay"] / rate[other]
            goal = f"  (aim >= {aim:g})" if aim else ""
            print(f"assay / {other:<20}{ratios[f'assay/{other}']:>8.2f}x{goal}")
    eff = assay.summary["efficiency"]
    print(
        f"Assay's last run: {eff['wall_seconds']:.2f} s inference (first batch after {eff['first_batch_seconds']:.2f} s, "
        f"model {eff['model_seconds']:.2f} s, batch p50 {eff['batch_latency_p50_ms']:.1f} ms), peak memory "
        f"{eff['peak_memory_bytes'] / 2**20:.0f} MiB; model load with its checks (not timed): {assay.load_seconds:.2f} s"
    )
    for note in notes:
        print(note)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"texts": n, "device": device, "texts_per_second": rate, "runs": runs, "ratios": ratios, "notes": notes}, indent=2
            )
        )
    return 0
