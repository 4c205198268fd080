"""Evaluate an image classifier on canonical dataset shards, resumably and fast.

Images are decoded to ``uint8`` pixels at the model's input size (``workers.decoding``);
the process that runs the model normalizes each batch in torch (``workers.pixels``:
bit-for-bit the image processor's output, after the same EXIF orientation and RGB
conversion the ``transformers`` pipeline applies) and runs it batched under
``torch.inference_mode()``, with bf16 autocast on CUDA.

How the work shares the machine depends on the device (the defaults of ``EvalOptions``):
- on CUDA, one process runs the model and decoder processes keep batches ready for it;
  batches are launched without waiting for the one before, and results are read back
  when a shard is written, after the next batch is launched, so the GPU does not wait;
- on the CPU, every core runs a replica of the model in a process of its own
  (``workers.replicas``), one torch thread each, each decoding the batches it claims.
  Decoding and inference then never compete for a core, and no core waits at the
  barriers of a multi-threaded forward pass (measured: ~1.6x the throughput of one
  process with two threads fed by a decoder process, on 2 cores). A run too small to
  repay the forks (``min_batches_per_replica``) runs in one process fed by a decoder.

The process that calls ``evaluate_shards`` never decodes an image itself.

Batches never span shards, and each input shard ``part-NNNNN`` yields one prediction
shard of the same name, written atomically. A run that is killed resumes at the shards
without predictions and ends with byte-identical files.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from shared.results import PREDICTION_SCHEMA
from shared.summaries import classification_summary
from workers.decoding import Batch, Decoded, DecodePool, Plan, batch_plan, decoded_batches, read_batches
from workers.failures import FailureReason, WorkerFailure
from workers.metrics import percentile
from workers.pixels import recipe_for
from workers.replicas import run_in_replicas
from workers.workdir import inside

MAX_CPU_REPLICAS = 8  # each holds a batch's activations: bounds memory on large machines


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a cpuset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class EvalOptions:
    batch_size: int = 64
    top_k: int = 5
    device: str | None = None  # "cuda" when available, else "cpu"
    # None means the device's default (module docstring): CUDA -> one model process fed
    # by (cores - 1) decoders; CPU -> one single-threaded replica per core (at most
    # MAX_CPU_REPLICAS), each decoding its own images, or, for a run too small for
    # replicas, one model process on (cores - 1) threads fed by one decoder. Decoders and
    # threads are per model process.
    replicas: int | None = None
    decode_workers: int | None = None
    torch_threads: int | None = None
    batches_per_decoder: int = 2  # decoded ahead of the model, per decoder
    # A replica costs a fork and its start (~0.1 s, more on a busy machine): a run with
    # fewer batches than this per replica uses fewer replicas, down to none.
    min_batches_per_replica: int = 8

    def resolved(self, batches: int | None = None) -> ResolvedOptions:
        """Every default filled in for this machine; ``batches``, the size of the run,
        bounds the replicas (``min_batches_per_replica``)."""
        cores = usable_cores()
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        cuda = torch.device(device).type == "cuda"
        replicas = 1 if cuda else (self.replicas or min(cores, MAX_CPU_REPLICAS))
        if batches is not None:
            replicas = max(1, min(replicas, batches // max(1, self.min_batches_per_replica)))
        if cuda or replicas == 1:  # one model process, fed by decoder processes
            default_workers, default_threads = (max(1, min(32, cores - 1)), 1) if cuda else (1, max(1, cores - 1))
        else:  # each replica decodes its own images
            default_workers, default_threads = 0, 1
        workers = self.decode_workers if self.decode_workers is not None else default_workers
        threads = self.torch_threads or default_threads
        return ResolvedOptions(
            self.batch_size,
            self.top_k,
            device,
            replicas,
            workers,
            threads,
            self.batches_per_decoder,
            self.min_batches_per_replica,
        )


@dataclass(frozen=True)
class ResolvedOptions:
    """``EvalOptions`` with every default filled in for this machine: nothing left to decide."""

    batch_size: int
    top_k: int
    device: str
    replicas: int
    decode_workers: int
    torch_threads: int
    batches_per_decoder: int
    min_batches_per_replica: int


@dataclass
class RunStats:
    instances: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    wall_seconds: float = 0.0
    first_batch_seconds: float = 0.0  # start-up: until the first batch's predictions are in
    batch_seconds: list[float] = field(default_factory=list)
    device: str = "cpu"
    device_name: str = "cpu"
    peak_memory_bytes: int = 0

    def efficiency(self) -> dict:
        return {
            "instances_per_second": self.instances / self.wall_seconds if self.wall_seconds else None,
            "instances_timed": self.instances,
            "wall_seconds": self.wall_seconds,
            "first_batch_seconds": self.first_batch_seconds,
            "model_seconds": sum(self.batch_seconds),
            "batch_latency_p50_ms": percentile(self.batch_seconds, 50) * 1000,
            "batch_latency_p95_ms": percentile(self.batch_seconds, 95) * 1000,
            "batches": len(self.batch_seconds),
            "peak_memory_bytes": self.peak_memory_bytes,
            "device": self.device,
            "device_name": self.device_name,
            "shards_resumed": self.shards_skipped,
        }


def align_labels(dataset_labels: list[str], model_labels: list[str], mapping: dict[str, str] | None = None) -> np.ndarray:
    """For each dataset label index, the model label index with the same name (after ``mapping``).

    Raises:
        WorkerFailure: ``label_mismatch``, listing the dataset labels the model lacks.
    """
    mapping = mapping or {}
    model_index = {name: i for i, name in enumerate(model_labels)}
    targets = [mapping.get(name, name) for name in dataset_labels]
    unknown_mapping = sorted(set(mapping) - set(dataset_labels))
    missing = sorted(t for t in targets if t not in model_index)
    if missing or unknown_mapping:
        details = {
            "dataset_only": missing,
            "model_only": sorted(set(model_labels) - set(targets)),
            "mapping_keys_not_in_dataset": unknown_mapping,
        }
        raise WorkerFailure(
            FailureReason.label_mismatch,
            f"dataset labels {missing} are not labels of the model"
            + (f"; mapping keys {unknown_mapping} are not dataset labels" if unknown_mapping else "")
            + "; supply config.label_mapping (dataset name -> model name)",
            details=details,
        )
    return np.array([model_index[t] for t in targets], dtype=np.int64)


def prediction_shard_path(out_dir: Path, shard: Path) -> Path:
    return inside(out_dir, shard.name)


def evaluate_shards(
    model,
    processor,
    shards: list[Path],
    out_dir: str | Path,
    *,
    label_map: np.ndarray,
    options: EvalOptions = EvalOptions(),
    on_shard: Callable[[int, Path, RunStats], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> RunStats:
    """Write ``out_dir/part-NNNNN.parquet`` predictions for each input shard not done yet.

    ``label_map`` maps dataset label indices to model label indices (``align_labels``).
    ``on_batch(instances)`` is called after each batch (for progress within a shard), and
    ``on_shard(index, path, stats)`` after each prediction shard is written; both in
    the calling process, however many replicas run.

    Raises:
        WorkerFailure: ``inference_error`` when a batch cannot be decoded or run.
    """
    resolved = options.resolved()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(resolved.device)
    todo = [(i, p) for i, p in enumerate(shards) if not prediction_shard_path(out_dir, p).exists()]
    stats = RunStats(
        shards_skipped=len(shards) - len(todo),
        device=device.type,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    )
    if not todo:
        return stats
    plan = batch_plan(todo, resolved.batch_size)
    resolved = options.resolved(batches=len(plan))
    predictor = Predictor(model, processor, label_map=label_map, options=resolved)
    writer = ShardWriter(out_dir, shards, plan, stats, on_shard)
    if resolved.replicas > 1:
        run_in_replicas(predictor, plan, writer, replicas=resolved.replicas, on_batch=on_batch)
    else:
        _evaluate_here(predictor, plan, writer, on_batch=on_batch)
    stats.wall_seconds = time.perf_counter() - writer.started
    if device.type == "cuda":
        stats.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
    return stats


@dataclass
class Predictions:
    """The model's verdict on one batch: tensors on the model's device, or numpy arrays
    (``on_host``) to travel from a replica."""

    shard: int
    start: int
    instance_ids: list[str]
    labels: torch.Tensor | np.ndarray
    top_ids: torch.Tensor | np.ndarray
    top_scores: torch.Tensor | np.ndarray
    label_score: torch.Tensor | np.ndarray

    def on_host(self) -> Predictions:
        arrays = {name: getattr(self, name).cpu().numpy() for name in _VALUES}
        return Predictions(self.shard, self.start, self.instance_ids, **arrays)


_VALUES = ("labels", "top_ids", "top_scores", "label_score")


class Predictor:
    """The model's side of an evaluation: a decoded batch in, ``Predictions`` out."""

    def __init__(self, model, processor, *, label_map: np.ndarray, options: ResolvedOptions):
        self.options = options
        self.device = torch.device(options.device)
        self.model = model.to(self.device).eval()
        self.recipe = recipe_for(processor)
        self.k = min(options.top_k, model.config.num_labels)
        self.label_map = torch.from_numpy(label_map)
        self.timer = BatchTimer(self.device)  # a fresh one in each process that predicts (start)

    def start(self) -> None:
        """Ready this process to predict (torch threads, device tensors, timers)."""
        torch.set_num_threads(self.options.torch_threads)
        self.label_lookup = self.label_map.to(self.device)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        self.timer = BatchTimer(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def __call__(self, batch: Batch, decoded: Decoded) -> Predictions:
        mark = self.timer.start()
        values = self.recipe.normalize(decoded.to(self.device))
        decoded.release()
        labels = self.label_lookup[torch.from_numpy(batch.labels).to(self.device, non_blocking=True)]
        with torch.inference_mode(), self.autocast:
            probs = self.model(pixel_values=values).logits.float().softmax(dim=-1)
            top_scores, top_ids = probs.topk(self.k, dim=-1)
            label_score = probs.gather(1, labels[:, None])[:, 0]
        self.timer.stop(mark)
        return Predictions(batch.shard, batch.start, batch.instance_ids, labels, top_ids, top_scores, label_score)

    def batches(self, batches: Iterator[Batch]) -> Iterator[Predictions]:
        """Predictions for each batch, in order; decoding runs ahead in the decoder
        processes (or, with none, in this one).

        Raises:
            WorkerFailure: ``inference_error`` when a batch cannot be decoded or run.
        """
        options = self.options
        depth = max(1, options.decode_workers) * options.batches_per_decoder
        try:
            with DecodePool(self.recipe, workers=options.decode_workers, slots=depth + 2, batch_size=options.batch_size) as pool:
                for batch, decoded in decoded_batches(pool, batches, depth=depth):
                    yield self(batch, decoded)
        except RuntimeError as e:  # a damaged image, a dead decoder (DecodeError), torch's own errors
            raise WorkerFailure(FailureReason.inference_error, str(e)) from e


class ShardWriter:
    """Collects predictions per shard and writes each shard (atomically) once all its rows
    are in, in row order whatever order its batches came in."""

    def __init__(self, out_dir: Path, shards: list[Path], plan: Plan, stats: RunStats, on_shard):
        self.out_dir, self.shards, self.stats, self.on_shard = out_dir, shards, stats, on_shard
        self.pending: dict[int, list[Predictions]] = {}
        self.missing: dict[int, int] = {}  # rows of each shard not yet predicted
        for index, _, start, stop in plan:
            self.missing[index] = self.missing.get(index, 0) + stop - start
        self.started = time.perf_counter()

    def add(self, predictions: Predictions) -> bool:
        """Keep one batch's predictions; True when its shard is now complete."""
        self.stats.first_batch_seconds = self.stats.first_batch_seconds or time.perf_counter() - self.started
        self.pending.setdefault(predictions.shard, []).append(predictions)
        self.missing[predictions.shard] -= len(predictions.instance_ids)
        return self.missing[predictions.shard] == 0

    def write(self, index: int) -> None:
        path = prediction_shard_path(self.out_dir, self.shards[index])
        batches = sorted(self.pending.pop(index), key=lambda p: p.start)
        self.stats.instances += write_predictions(path, batches)
        self.stats.shards_done += 1
        self.stats.wall_seconds = time.perf_counter() - self.started
        if self.on_shard is not None:
            self.on_shard(index, path, self.stats)


def _evaluate_here(predictor: Predictor, plan: Plan, writer: ShardWriter, *, on_batch) -> None:
    """Every batch of ``plan`` in this process, fed by its decoder processes."""
    predictor.start()
    complete: list[int] = []  # shards whose last batch is launched, not yet written
    for predictions in predictor.batches(read_batches(plan)):
        if on_batch is not None:
            on_batch(len(predictions.instance_ids))
        # Written one batch late: on CUDA the GPU then has work while the host waits for
        # the shard's results and writes them.
        for index in complete:
            writer.write(index)
        complete = [predictions.shard] if writer.add(predictions) else []
    for index in complete:
        writer.write(index)
    writer.stats.batch_seconds = predictor.timer.seconds()
    writer.stats.peak_memory_bytes = _peak_memory()


class BatchTimer:
    """Per-batch model time: host clocks on the CPU, CUDA events on the GPU (read at the
    end, so that timing never makes the host wait for the device)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def start(self):
        return self._event() if self.cuda else time.perf_counter()

    def _event(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, started) -> None:
        self.marks.append((started, self._event() if self.cuda else time.perf_counter()))

    def seconds(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in self.marks]
        return [b - a for a, b in self.marks]


def write_predictions(path: Path, batches: list[Predictions], extra: dict[str, pa.Array] | None = None) -> int:
    """One prediction shard in the result-set contract (``shared.results``), with a task's
    ``extra`` columns (a text excerpt…) after the contract's."""
    labels = _joined(batches, "labels").astype(np.int32)
    top_ids = _joined(batches, "top_ids").astype(np.int32)
    top_scores = _joined(batches, "top_scores").astype(np.float32)
    label_score = _joined(batches, "label_score").astype(np.float32)
    n, k = top_ids.shape
    predictions = top_ids[:, 0]
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    columns = {
        "instance_id": pa.array([i for b in batches for i in b.instance_ids], pa.string()),
        "label": pa.array(labels, pa.int32()),
        "prediction": pa.array(predictions, pa.int32()),
        "confidence": pa.array(top_scores[:, 0], pa.float32()),
        "label_score": pa.array(label_score, pa.float32()),
        "correct": pa.array(predictions == labels, pa.bool_()),
        "topk_ids": pa.ListArray.from_arrays(offsets, pa.array(top_ids.reshape(-1), pa.int32())),
        "topk_scores": pa.ListArray.from_arrays(offsets, pa.array(top_scores.reshape(-1), pa.float32())),
    }
    table = pa.Table.from_arrays([columns[f.name] for f in PREDICTION_SCHEMA], schema=PREDICTION_SCHEMA)
    for name, values in (extra or {}).items():
        table = table.append_column(name, values)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)  # atomic: a shard either exists whole or not at all
    return len(labels)


def _joined(batches: list[Predictions], name: str) -> np.ndarray:
    values = [getattr(b, name) for b in batches]
    if isinstance(values[0], torch.Tensor):
        return torch.cat(values).cpu().numpy()  # one copy from the device for the whole shard
    return np.concatenate(values)


def _peak_memory() -> int:
    """This process's peak resident memory (on CUDA, ``evaluate_shards`` reports the GPU's)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def read_predictions(paths: list[Path]) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in paths]) if paths else PREDICTION_SCHEMA.empty_table()


def summarize(prediction_paths: list[Path], label_names: list[str], stats: RunStats | None = None) -> dict:
    """Metrics over all prediction shards, plus the efficiency of the run that made them:
    a ``ClassificationSummary`` as the JSON object summary.json holds (NaN as null)."""
    table = read_predictions(prediction_paths)
    top_k = table.column("topk_ids").combine_chunks()
    k = len(top_k[0]) if len(top_k) else 1
    summary = classification_summary(
        labels=table.column("label").to_numpy(),
        predictions=table.column("prediction").to_numpy(),
        top_k_ids=top_k.flatten().to_numpy().reshape(-1, k),
        confidence=table.column("confidence").to_numpy(),
        label_score=table.column("label_score").to_numpy(),
        label_names=label_names,
        efficiency=stats.efficiency() if stats is not None else None,
    )
    return summary.model_dump(mode="json")
