"""Evaluate a causal language model on canonical shards, resumably, with the engine's kinds.

The config's ``kind`` must be the dataset's shape (its canonical columns say which), and
its template may name only the dataset's columns: both are checked before the model loads.
The model runs in bf16 on CUDA and in float32 on the CPU (the precision lm-eval's numbers
are compared at).

Each dataset shard ``part-NNNNN`` gives one prediction shard of the same name (the columns
``COMMON_PREDICTIONS`` + ``KIND_PREDICTIONS[kind]`` of ``shared.modeltasks.text_generation``),
written atomically; a shard whose predictions exist is skipped, so a killed run resumes at
the next one. Few-shot examples are drawn by one random stream over the whole split in
dataset order (``workers.lm.prompts.FewshotSampler``): for a skipped shard the examples are
still drawn, not scored, so a resumed run gives every later instance the examples an
uninterrupted run gives it, and identical shards.

The summary is computed from the prediction shards (resumed ones included): ``acc`` and
``acc_norm`` from each instance's verdicts, ``exact_match`` from its match, and the
perplexities from each text's exact summed log-likelihood and its word and byte counts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shared.modeltasks.text_generation import (
    MAX_PROMPT_STORED,
    MAX_TEXT_EXCERPT,
    TextGenerationConfig,
)
from shared.results import LANGUAGE_MODEL_SCHEMAS
from shared.summaries import language_model_summary
from workers.evaluate import RunStats, _peak_memory, prediction_shard_path
from workers.failures import FailureReason, WorkerFailure
from workers.lm import engine
from workers.lm.model import load_model
from workers.lm.prompts import FewshotSampler, check_template, fill
from workers.lm.shapes import SHAPE_SCHEMAS

# Instances handed to the engine at once: it sorts them by length to batch them, and
# progress is reported after each part.
PART_INSTANCES = 512


def prediction_schema(kind: str) -> pa.Schema:
    """The prediction shards' schema for ``kind``: the contract's (``shared.results``)."""
    return LANGUAGE_MODEL_SCHEMAS[kind]


def evaluate(
    model_dir: Path,
    shards: list[Path],
    out_dir: Path,
    *,
    dataset_label_names: list[str],
    config: TextGenerationConfig,
    on_shard: Callable[[int, Path, RunStats], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    other_splits: Mapping[str, list[Path]] | None = None,
) -> dict:
    """Predictions for every shard not done yet (``out_dir``, one per shard) and the summary
    of all of them. ``other_splits`` holds the shards of the few-shot split when it is not
    the evaluated one (``config.other_splits``: a few-shot split missing from it is taken
    to be the evaluated one); ``dataset_label_names`` is unused (no labels). Every instance
    of the split is read into memory at once: the few-shot draw may need any of them.

    Raises:
        WorkerFailure: ``invalid_config`` (a kind that is not the dataset's shape, a template
            naming a missing column, a few-shot split too small, no chat template);
            ``load_error`` (generation without an EOS token); as
            ``workers.lm.model.load_model``; the engine's refusals.
    """
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = config.kind
    _check_dataset(shards, config)
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    docs = [_read_docs(shard) for shard in shards]
    pool = _fewshot_pool(config, docs, other_splits or {})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(Path(model_dir))
    model = model.to(device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    if kind == "generate" and tokenizer.eos_token_id is None:
        raise WorkerFailure(
            FailureReason.load_error,
            "generation needs a tokenizer with an EOS token, which this one lacks (set eos_token in tokenizer_config.json)",
        )
    timings["load_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    stats = RunStats(device=device.type, device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    same_split = config.num_fewshot > 0 and config.fewshot_split not in (other_splits or {})
    sampler = FewshotSampler(
        pool if pool is not None else [d for part in docs for d in part], seed=config.seed, same_split=same_split
    )
    run = _Run(model, tokenizer, config, sampler, device)
    for index, (shard, part) in enumerate(zip(shards, docs, strict=True)):
        path = prediction_shard_path(out_dir, shard)
        if path.exists():
            run.skip(part)
            stats.shards_skipped += 1
            continue
        records = run.shard(index, part, on_batch, stats)
        _write(path, kind, pq.read_table(shard, columns=["instance_id"]).column(0).to_pylist(), part, records, config)
        stats.instances += len(part)
        stats.shards_done += 1
        stats.wall_seconds = time.perf_counter() - tick
        if on_shard is not None:
            on_shard(index, path, stats)
    stats.wall_seconds = time.perf_counter() - tick
    stats.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else _peak_memory()
    timings["inference_s"] = stats.wall_seconds

    tick = time.perf_counter()
    summary = summarize([prediction_shard_path(out_dir, s) for s in shards], kind, stats, tokens=run.tokens(docs))
    timings["metrics_s"] = time.perf_counter() - tick
    summary["timings"] = timings
    return summary


def _check_dataset(shards: Sequence[Path], config: TextGenerationConfig) -> None:
    """Refuses a kind that is not the dataset's shape, and a template naming a column it
    lacks (the columns of its first shard: every shard has the same)."""
    if not shards:
        raise WorkerFailure(FailureReason.empty_dataset, "the split has no instances")
    columns = [name for name in pq.read_schema(shards[0]).names if name != "instance_id"]
    wanted = [name for name, _ in SHAPE_SCHEMAS[config.kind]]
    if not set(wanted) <= set(columns):
        shape = next((s for s, cols in SHAPE_SCHEMAS.items() if {n for n, _ in cols} <= set(columns)), "another shape")
        raise WorkerFailure(
            FailureReason.invalid_config,
            f"kind {config.kind!r} needs a {config.kind} dataset ({', '.join(wanted)}); this one is {shape}: "
            f"evaluate it with kind {shape!r}",
        )
    if config.kind != "perplexity":
        check_template(config.prompt_template, columns)


def _read_docs(shard: Path) -> list[dict[str, Any]]:
    """A shard's instances as the engine reads them: every column but the id (lm-eval tells
    documents apart by value, and so does the few-shot draw)."""
    table = pq.read_table(shard)
    return table.drop_columns(["instance_id"]).to_pylist()


def _fewshot_pool(
    config: TextGenerationConfig, docs: list[list[dict]], other_splits: Mapping[str, list[Path]]
) -> list[dict] | None:
    """The few-shot split's instances, or None when the examples come from the evaluated split."""
    split = config.fewshot_split
    if not config.num_fewshot or split is None or split not in other_splits:
        return None
    pool = [doc for shard in other_splits[split] for doc in _read_docs(shard)]
    if pool:
        check_template(config.prompt_template, list(pool[0]))
    return pool


class _Run:
    """The engine over one split, part after part, one few-shot stream for all of them."""

    def __init__(self, model, tokenizer, config: TextGenerationConfig, sampler: FewshotSampler, device):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.sampler, self.device = sampler, device
        self._tokens: dict[int, int] = {}  # perplexity: tokens scored, per shard run here

    def skip(self, docs: Sequence[dict]) -> None:
        """Draw the examples of instances whose predictions exist, scoring nothing."""
        if self.config.kind != "perplexity":
            for doc in docs:
                self.sampler.sample(self.config.num_fewshot, doc)

    def shard(self, index: int, docs: list[dict], on_batch, stats: RunStats) -> list[dict]:
        records: list[dict] = []
        for start in range(0, len(docs), PART_INSTANCES):
            part = docs[start : start + PART_INSTANCES]
            tick = time.perf_counter()
            result = self._engine(part)
            stats.batch_seconds.append(time.perf_counter() - tick)
            stats.first_batch_seconds = stats.first_batch_seconds or sum(stats.batch_seconds)
            records += result.records
            if on_batch is not None:
                on_batch(len(part))
        if self.config.kind == "perplexity":
            self._tokens[index] = sum(r["tokens"] for r in records)
        return records

    def _engine(self, docs: list[dict]) -> engine.LMResult:
        kind, args = self.config.kind, (self.model, self.tokenizer, docs)
        if kind == "perplexity":
            return engine.perplexity(*args, self.config, device=self.device)
        score = engine.multiple_choice if kind == "multiple_choice" else engine.generate_answers
        return score(*args, [], self.config, same_split=self.sampler.same_split, device=self.device, sampler=self.sampler)

    def tokens(self, docs: list[list[dict]]) -> int | None:
        """Perplexity: the tokens of every text, counted again for resumed shards."""
        if self.config.kind != "perplexity":
            return None
        encoder = engine.Encoder(self.tokenizer, engine.window_of(self.model, self.tokenizer))
        total = 0
        for index, part in enumerate(docs):
            done = self._tokens.get(index)
            total += done if done is not None else sum(map(len, encoder.encode_many([d["text"] for d in part])))
        return total


def _write(path: Path, kind: str, ids: list[str], docs: list[dict], records: list[dict], config: TextGenerationConfig) -> None:
    """One prediction shard, atomically: it exists whole or not at all."""
    rows = []
    for instance_id, doc, record in zip(ids, docs, records, strict=True):
        row: dict[str, Any] = {"instance_id": instance_id, "truncated": bool(record["truncated"])}
        if kind == "perplexity":
            row.update(
                text_excerpt=doc["text"][:MAX_TEXT_EXCERPT],
                loglikelihood=float(record["loglikelihood"]),
                words=record["words"],
                bytes=record["bytes"],
            )
        else:
            row["prompt"] = fill(config.prompt_template, doc)[:MAX_PROMPT_STORED]
            if kind == "multiple_choice":
                row.update(
                    choices=doc["choices"],
                    answer=doc["answer"],
                    choice_loglikelihoods=record["choice_loglikelihoods"],
                    choice_greedy=record["choice_greedy"],
                    prediction=record["prediction"],
                    prediction_norm=record["prediction_norm"],
                    correct=record["prediction"] == doc["answer"],
                    correct_norm=record["prediction_norm"] == doc["answer"],
                )
            else:
                row.update(
                    targets=doc["targets"], output=record["output"], extracted=record["extracted"], correct=record["exact_match"]
                )
        rows.append(row)
    schema = prediction_schema(kind)
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    table = pa.table(columns, schema=schema)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def summarize(paths: list[Path], kind: str, stats: RunStats | None = None, *, tokens: int | None = None) -> dict:
    """The summary of the prediction shards at ``paths``: the kind's metrics from the
    per-instance values (``shared.summaries.language_model_summary``), the truncated
    instances, and the efficiency of the run that wrote them, as summary.json holds it."""
    table = pa.concat_tables([pq.read_table(p) for p in paths]) if paths else prediction_schema(kind).empty_table()
    values: dict[str, np.ndarray]
    if kind == "multiple_choice":
        values = {"hits": table.column("correct").to_numpy(), "hits_norm": table.column("correct_norm").to_numpy()}
    elif kind == "generate":
        values = {"matches": table.column("correct").to_numpy()}
    else:
        values = {name: table.column(name).to_numpy() for name in ("loglikelihood", "words", "bytes")}
    summary = language_model_summary(
        kind=kind,
        truncated=int(np.sum(table.column("truncated").to_numpy())),
        efficiency=stats.efficiency() if stats is not None else None,
        tokens=tokens,
        **values,
    )
    return summary.model_dump(mode="json")
