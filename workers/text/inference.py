"""Evaluate a text classifier on canonical text shards, resumably and fast.

Each shard is tokenized at once (the fast tokenizer's batch call, in Rust), cut to the
config's ``max_length`` from its ``truncation_side``; its rows are then sorted by token
count, longest first, and batched in that order, each batch padded only to its own
longest row (dynamic padding): on texts of varied length most of the padding a fixed
length would cost is never computed, and the largest batch comes first, so a run that
would exhaust memory fails at once. On the CPU a batch also stops at
``cpu_batch_tokens`` tokens: the long texts' batches then fit the caches (measured ~18%
faster than 64 rows of the longest texts). Batches run under ``torch.inference_mode()``, with
bf16 autocast on CUDA; on the CPU each core runs a single-threaded replica of the model
(``workers.text.replicas``; measured in ``bench/README.md``). Scores are what ``pipeline("text-classification")`` gives: softmax
over the logits, or a sigmoid for a multi-label or single-logit head.

Predictions go back to row order before a shard is written, as ``workers.evaluate``
writes them (``shared.results`` schema), plus a ``text_excerpt`` column (the first
``EXCERPT_CHARS`` characters) for the instances route. A shard already in ``out_dir`` is
skipped, so a killed run resumes at the next shard.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from shared.modeltasks.text_classification import MAX_TEXT_EXCERPT
from workers.evaluate import (
    MAX_CPU_REPLICAS,
    BatchTimer,
    Predictions,
    RunStats,
    _peak_memory,
    align_labels,
    prediction_shard_path,
    summarize,
    usable_cores,
    write_predictions,
)
from workers.failures import FailureReason, WorkerFailure
from workers.text.model import load_model, resolve_max_length
from workers.text.replicas import Inputs, ReplicaPool, Scores
from workers.verify import label_names

EXCERPT_CHARS = MAX_TEXT_EXCERPT  # the task declares it (shared.modeltasks.text_classification)
TRUNCATION_SIDES = ("right", "left")
# A replica costs a fork and its start: a run with fewer batches than this per replica uses fewer.
MIN_BATCHES_PER_REPLICA = 4


@dataclass(frozen=True)
class TextOptions:
    batch_size: int = 64
    top_k: int = 5
    max_length: int | None = None  # None: the tokenizer's model_max_length, capped by the positions
    truncation_side: str = "right"
    device: str | None = None  # "cuda" when available, else "cpu"
    # None: on the CPU one single-threaded replica per core (workers.text.replicas), or for a
    # run too small to repay the forks, this process on every core; on CUDA this process.
    replicas: int | None = None
    torch_threads: int | None = None
    # On the CPU a batch also stops at this many tokens (rows x its longest row), so the
    # long texts' batches stay small enough for the caches (None: batch_size rows only).
    cpu_batch_tokens: int | None = 2048

    @classmethod
    def from_config(cls, config) -> TextOptions:
        """From an evaluation's inference config (fields this task does not know keep their defaults)."""
        return cls(
            batch_size=getattr(config, "batch_size", cls.batch_size),
            top_k=getattr(config, "top_k", cls.top_k),
            max_length=getattr(config, "max_length", None),
            truncation_side=getattr(config, "truncation_side", cls.truncation_side),
        )


def evaluate(
    model_dir: Path,
    shards: list[Path],
    out_dir: Path,
    *,
    dataset_label_names: list[str],
    config,
    on_shard: Callable[[int, Path, RunStats], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    options: TextOptions | None = None,
) -> dict:
    """Predictions for every shard of ``shards`` (in ``out_dir``, one shard each) and their
    summary (``workers.evaluate.summarize``). ``options`` overrides what ``config`` sets.

    Raises:
        WorkerFailure: as ``load_model``; ``label_mismatch`` when a dataset label is not
            the model's (after ``config.label_mapping``); ``invalid_config``;
            ``inference_error`` when a batch cannot run.
    """
    model, tokenizer = load_model(Path(model_dir))
    names = label_names(model)
    label_map = align_labels(dataset_label_names, names, getattr(config, "label_mapping", None))
    stats = evaluate_text_shards(
        model,
        tokenizer,
        shards,
        out_dir,
        label_map=label_map,
        options=options or TextOptions.from_config(config),
        on_shard=on_shard,
        on_batch=on_batch,
    )
    return summarize([prediction_shard_path(Path(out_dir), s) for s in shards], names, stats)


def evaluate_text_shards(
    model,
    tokenizer,
    shards: list[Path],
    out_dir: str | Path,
    *,
    label_map: np.ndarray,
    options: TextOptions = TextOptions(),
    on_shard: Callable[[int, Path, RunStats], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> RunStats:
    """Write ``out_dir/part-NNNNN.parquet`` predictions for each input shard not done yet;
    ``on_batch(instances)`` after each batch, ``on_shard(index, path, stats)`` after each
    shard, both in the calling process.

    Raises:
        WorkerFailure: ``invalid_config``, ``inference_error``.
    """
    if options.truncation_side not in TRUNCATION_SIDES:
        raise WorkerFailure(FailureReason.invalid_config, f"truncation_side must be one of {TRUNCATION_SIDES}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    todo = [(i, p) for i, p in enumerate(shards) if not prediction_shard_path(out_dir, p).exists()]
    stats = RunStats(
        shards_skipped=len(shards) - len(todo),
        device=device.type,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    )
    if not todo:
        return stats
    batches = sum(-(-pq.ParquetFile(path).metadata.num_rows // options.batch_size) for _, path in todo)
    replicas = _replicas(options, device, batches)
    if device.type == "cpu":
        torch.set_num_threads(options.torch_threads or (1 if replicas > 1 else usable_cores()))
    scorer = _Scorer(model, label_map, options, device)
    runner = _Runner(scorer, tokenizer, resolve_max_length(model, tokenizer, options.max_length), options)
    started = time.perf_counter()
    # Replicas are forked first: before the tokenizer has started its thread pool.
    with ReplicaPool(scorer, replicas) if replicas > 1 else nullcontext() as pool:
        for index, shard in todo:
            table = pq.read_table(shard, columns=["instance_id", "text", "text_pair", "label"])
            predictions = runner.shard(index, table, pool, on_batch, stats, started)
            path = prediction_shard_path(out_dir, shard)
            excerpts = pa.array([text[:EXCERPT_CHARS] for text in table.column("text").to_pylist()], pa.string())
            stats.instances += write_predictions(path, [predictions], extra={"text_excerpt": excerpts})
            stats.shards_done += 1
            stats.wall_seconds = time.perf_counter() - started
            if on_shard is not None:
                on_shard(index, path, stats)
        stats.batch_seconds = pool.seconds if pool is not None else scorer.timer.seconds()
    stats.wall_seconds = time.perf_counter() - started
    if device.type == "cuda":
        stats.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
    else:  # with replicas, the largest one's: each holds the shared weights and its own batch
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB
        stats.peak_memory_bytes = max(_peak_memory(), children)
    return stats


def _replicas(options: TextOptions, device: torch.device, batches: int) -> int:
    if device.type == "cuda":
        return 1
    replicas = options.replicas or min(usable_cores(), MAX_CPU_REPLICAS)
    return max(1, min(replicas, batches // MIN_BATCHES_PER_REPLICA))


class _Scorer:
    """The model's side: padded inputs in, top-k and label scores out; called with tensors
    in this process, with numpy arrays in a replica."""

    def __init__(self, model, label_map: np.ndarray, options: TextOptions, device: torch.device):
        self.model = model.to(device).eval()
        self.device = device
        self.k = min(options.top_k, model.config.num_labels)
        self.sigmoid = model.config.problem_type == "multi_label_classification" or model.config.num_labels == 1
        self.label_map = label_map
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
        self.timer = BatchTimer(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def scores(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Top ids, top scores and the true label's score; ``labels`` are the model's indices."""
        with torch.inference_mode(), self.autocast:
            logits = self.model(**inputs).logits.float()
            probs = logits.sigmoid() if self.sigmoid else logits.softmax(dim=-1)
            top_scores, top_ids = probs.topk(self.k, dim=-1)
            return top_ids, top_scores, probs.gather(1, labels[:, None])[:, 0]

    def __call__(self, inputs: Inputs, labels: np.ndarray) -> Scores:
        """In a replica: numpy in and out; ``labels`` are the model's indices.

        Raises:
            WorkerFailure: ``inference_error``.
        """
        tensors = {name: torch.from_numpy(array) for name, array in inputs.items()}
        try:
            top_ids, top_scores, label_score = self.scores(tensors, torch.from_numpy(labels))
        except (RuntimeError, IndexError) as e:  # torch's own errors on this model and input
            raise WorkerFailure(FailureReason.inference_error, f"{type(e).__name__}: {e}") from e
        return top_ids.numpy(), top_scores.numpy(), label_score.numpy()


class _Runner:
    """A shard's table in, its ``Predictions`` in row order out."""

    def __init__(self, scorer: _Scorer, tokenizer, max_length: int, options: TextOptions):
        self.scorer, self.tokenizer, self.max_length, self.options = scorer, tokenizer, max_length, options
        self.tokenizer.truncation_side = options.truncation_side

    def _tokenized(self, texts: list[str], pairs: list[str | None]) -> dict[str, list[list[int]]]:
        """Each row's features (``input_ids``, ``attention_mask``…), unpadded, in row order."""
        singles = [i for i, pair in enumerate(pairs) if pair is None]
        paired = [i for i, pair in enumerate(pairs) if pair is not None]
        features: dict[str, list] = {}
        for rows, with_pairs in ((singles, False), (paired, True)):
            if not rows:
                continue
            encoded = self.tokenizer(
                [texts[i] for i in rows],
                [pairs[i] for i in rows] if with_pairs else None,
                truncation=True,
                max_length=self.max_length,
                padding=False,
            )
            for name, values in encoded.items():
                column = features.setdefault(name, [None] * len(texts))
                for i, value in zip(rows, values):
                    column[i] = value
        return features

    def _padded(self, features: dict[str, list[list[int]]], rows: np.ndarray) -> Inputs:
        """The rows' features padded to the longest of them, on the tokenizer's padding side."""
        ids = features["input_ids"]
        width = max(len(ids[i]) for i in rows)
        pad_values = {"input_ids": self.tokenizer.pad_token_id, "token_type_ids": self.tokenizer.pad_token_type_id}
        left = self.tokenizer.padding_side == "left"
        batch = {}
        for name, column in features.items():
            array = np.full((len(rows), width), pad_values.get(name, 0), dtype=np.int64)
            for j, i in enumerate(rows):
                value = column[i]
                if left:
                    array[j, width - len(value) :] = value
                else:
                    array[j, : len(value)] = value
            batch[name] = array
        return batch

    def shard(
        self, index: int, table: pa.Table, pool: ReplicaPool | None, on_batch, stats: RunStats, started: float
    ) -> Predictions:
        """Predictions for one shard, its rows sorted by length and batched in that order.

        Raises:
            WorkerFailure: ``inference_error``.
        """
        texts = table.column("text").to_pylist()
        features = self._tokenized(texts, table.column("text_pair").to_pylist())
        lengths = np.fromiter((len(ids) for ids in features["input_ids"]), dtype=np.int64, count=len(texts))
        order = np.argsort(-lengths, kind="stable")
        batches = self._batches(order, lengths)
        labels = self.scorer.label_map[table.column("label").to_numpy()]  # the model's indices
        done: list[tuple] = []  # (rows, top ids, top scores, label score): tensors on the device, or numpy
        if pool is not None:
            work = ((i, self._padded(features, rows), labels[rows]) for i, rows in enumerate(batches))
            for i, scores in pool.run(work):
                done.append((batches[i], *scores))
                self._progress(len(batches[i]), on_batch, stats, started)
        else:
            device = self.scorer.device
            for rows in batches:
                mark = self.scorer.timer.start()
                inputs = {
                    name: torch.from_numpy(a).to(device, non_blocking=True) for name, a in self._padded(features, rows).items()
                }
                try:
                    done.append((rows, *self.scorer.scores(inputs, torch.from_numpy(labels[rows]).to(device))))
                except (RuntimeError, IndexError) as e:  # torch's own errors on this model and input
                    raise WorkerFailure(FailureReason.inference_error, f"shard {index}: {type(e).__name__}: {e}") from e
                self.scorer.timer.stop(mark)
                self._progress(len(rows), on_batch, stats, started)
        order_of_batches = [d[0] for d in done]
        top_ids, top_scores, label_score = (_in_row_order(order_of_batches, [d[j] for d in done], len(texts)) for j in (1, 2, 3))
        return Predictions(index, 0, table.column("instance_id").to_pylist(), labels, top_ids, top_scores, label_score)

    def _batches(self, order: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Consecutive runs of ``order`` (longest first): ``batch_size`` rows, fewer where
        the token budget of a CPU batch says so."""
        budget = self.options.cpu_batch_tokens if self.scorer.device.type == "cpu" else None
        batches, start = [], 0
        while start < len(order):
            size = self.options.batch_size
            if budget:
                size = max(1, min(size, budget // max(1, int(lengths[order[start]]))))
            batches.append(order[start : start + size])
            start += size
        return batches

    @staticmethod
    def _progress(rows: int, on_batch, stats: RunStats, started: float) -> None:
        stats.first_batch_seconds = stats.first_batch_seconds or time.perf_counter() - started
        if on_batch is not None:
            on_batch(rows)


def _in_row_order(rows: list, values: list, n: int) -> np.ndarray:
    """Per-batch values put back in row order (tensors copied from the device at once)."""
    if isinstance(values[0], torch.Tensor):
        values = np.split(torch.cat(values).cpu().numpy(), np.cumsum([len(r) for r in rows])[:-1])
    result = np.empty((n, *values[0].shape[1:]), dtype=values[0].dtype)
    for r, v in zip(rows, values):
        result[r] = v
    return result
