"""Evaluate a text classifier on canonical text shards, resumably and fast.

Each shard is tokenized at once (the fast tokenizer's batch call, in Rust), cut to the
config's ``max_length`` from its ``truncation_side``; its rows are then sorted by token
count, longest first, and batched in that order, each batch padded only to its own
longest row (dynamic padding): on texts of varied length most of the padding a fixed
length would cost is never computed, and the largest batch comes first, so a run that
would exhaust memory fails at once. Batches run under ``torch.inference_mode()``, with
bf16 autocast on CUDA; on the CPU one process uses every core's thread (measured in
``bench/README.md``). Scores are what ``pipeline("text-classification")`` gives: softmax
over the logits, or a sigmoid for a multi-label or single-logit head.

Predictions go back to row order before a shard is written, as ``workers.evaluate``
writes them (``shared.results`` schema), plus a ``text_excerpt`` column (the first
``EXCERPT_CHARS`` characters) for the instances route. A shard already in ``out_dir`` is
skipped, so a killed run resumes at the next shard.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from workers.evaluate import (
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
from workers.verify import label_names

EXCERPT_CHARS = 200
TRUNCATION_SIDES = ("right", "left")


@dataclass(frozen=True)
class TextOptions:
    batch_size: int = 64
    top_k: int = 5
    max_length: int | None = None  # None: the tokenizer's model_max_length, capped by the positions
    truncation_side: str = "right"
    device: str | None = None  # "cuda" when available, else "cpu"
    torch_threads: int | None = None  # None: every usable core

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
        model, tokenizer, shards, out_dir, label_map=label_map, options=options or TextOptions.from_config(config),
        on_shard=on_shard, on_batch=on_batch,
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
    ``on_batch(instances)`` after each batch, ``on_shard(index, path, stats)`` after each shard.

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
    runner = _Runner(model, tokenizer, label_map, options, device)
    started = time.perf_counter()
    for index, shard in todo:
        table = pq.read_table(shard, columns=["instance_id", "text", "text_pair", "label"])
        predictions = runner.shard(index, table, on_batch, stats, started)
        path = prediction_shard_path(out_dir, shard)
        excerpts = pa.array([text[:EXCERPT_CHARS] for text in table.column("text").to_pylist()], pa.string())
        stats.instances += write_predictions(path, [predictions], extra={"text_excerpt": excerpts})
        stats.shards_done += 1
        stats.wall_seconds = time.perf_counter() - started
        if on_shard is not None:
            on_shard(index, path, stats)
    stats.batch_seconds = runner.timer.seconds()
    stats.wall_seconds = time.perf_counter() - started
    if device.type == "cuda":
        stats.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
    else:
        stats.peak_memory_bytes = _peak_memory()
    return stats


class _Runner:
    """The model's side: a shard's table in, its ``Predictions`` in row order out."""

    def __init__(self, model, tokenizer, label_map: np.ndarray, options: TextOptions, device: torch.device):
        if device.type == "cpu":
            torch.set_num_threads(options.torch_threads or usable_cores())
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.truncation_side = options.truncation_side
        self.max_length = resolve_max_length(model, tokenizer, options.max_length)
        self.options, self.device = options, device
        self.k = min(options.top_k, model.config.num_labels)
        self.sigmoid = model.config.problem_type == "multi_label_classification" or model.config.num_labels == 1
        self.label_lookup = torch.from_numpy(label_map).to(device)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
        self.timer = BatchTimer(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

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
                truncation=True, max_length=self.max_length, padding=False,
            )
            for name, values in encoded.items():
                column = features.setdefault(name, [None] * len(texts))
                for i, value in zip(rows, values):
                    column[i] = value
        return features

    def _batch(self, features: dict[str, list[list[int]]], rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The rows' features padded to the longest of them, on the device."""
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
            batch[name] = torch.from_numpy(array).to(self.device, non_blocking=True)
        return batch

    def shard(self, index: int, table: pa.Table, on_batch, stats: RunStats, started: float) -> Predictions:
        texts = table.column("text").to_pylist()
        features = self._tokenized(texts, table.column("text_pair").to_pylist())
        lengths = np.fromiter((len(ids) for ids in features["input_ids"]), dtype=np.int64, count=len(texts))
        order = np.argsort(-lengths, kind="stable")
        labels = self.label_lookup[torch.tensor(table.column("label").to_numpy(), device=self.device)]
        outputs: list[tuple[torch.Tensor, ...]] = []
        size = self.options.batch_size
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            mark = self.timer.start()
            try:
                inputs = self._batch(features, rows)
                batch_labels = labels[torch.from_numpy(rows).to(self.device)]
                with torch.inference_mode(), self.autocast:
                    logits = self.model(**inputs).logits.float()
                    probs = logits.sigmoid() if self.sigmoid else logits.softmax(dim=-1)
                    top_scores, top_ids = probs.topk(self.k, dim=-1)
                    label_score = probs.gather(1, batch_labels[:, None])[:, 0]
            except (RuntimeError, IndexError) as e:  # torch's own errors on this model and input
                raise WorkerFailure(FailureReason.inference_error, f"shard {index}: {type(e).__name__}: {e}") from e
            self.timer.stop(mark)
            outputs.append((top_ids, top_scores, label_score))
            stats.first_batch_seconds = stats.first_batch_seconds or time.perf_counter() - started
            if on_batch is not None:
                on_batch(len(rows))
        top_ids, top_scores, label_score = (self._in_row_order(torch.cat(parts), order) for parts in zip(*outputs))
        return Predictions(
            index, 0, table.column("instance_id").to_pylist(), labels.cpu().numpy(), top_ids, top_scores, label_score
        )

    @staticmethod
    def _in_row_order(values: torch.Tensor, order: np.ndarray) -> np.ndarray:
        """Values computed in ``order`` put back in row order (one copy from the device)."""
        host = values.cpu().numpy()
        result = np.empty_like(host)
        result[order] = host
        return result
