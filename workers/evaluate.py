"""Evaluate an image classifier on canonical dataset shards, resumably and fast.

Decoding and preprocessing run in DataLoader worker processes (off the main thread and
off the GIL) with the model's own image-processor semantics (bit-for-bit, see
``FixedSizePreprocess``), after the same ``exif_transpose`` +
RGB conversion the ``transformers`` pipeline applies, so the model sees exactly the
tensors the pipeline would give it. The main process only runs the model: batched, under
``torch.inference_mode()``, with bf16 autocast on CUDA.

Batches never span shards, and each input shard ``part-NNNNN`` yields one prediction
shard of the same name, written atomically. A run that is killed resumes at the first
shard without predictions and ends with byte-identical files.
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
from PIL import ImageOps
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shared.results import PREDICTION_SCHEMA
from workers.failures import FailureReason, WorkerFailure
from workers.images import InvalidImage, decode_image
from workers.metrics import classification_metrics, percentile



@dataclass(frozen=True)
class EvalOptions:
    batch_size: int = 64
    top_k: int = 5
    device: str | None = None  # "cuda" when available, else "cpu"
    # On 2 cores one decode worker plus one torch thread measured fastest; more of
    # either oversubscribes. With more cores, decoding gets half of them.
    decode_workers: int | None = None
    torch_threads: int | None = None
    prefetch_batches: int = 4

    def resolved(self) -> EvalOptions:
        cores = os.cpu_count() or 1
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        workers = self.decode_workers if self.decode_workers is not None else max(1, min(12, cores // 2))
        threads = self.torch_threads if self.torch_threads is not None else max(1, cores - workers)
        return EvalOptions(self.batch_size, self.top_k, device, workers, threads, self.prefetch_batches)


@dataclass
class RunStats:
    instances: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    wall_seconds: float = 0.0
    batch_seconds: list[float] = field(default_factory=list)
    device: str = "cpu"
    device_name: str = "cpu"
    peak_memory_bytes: int = 0

    def efficiency(self) -> dict:
        return {
            "instances_per_second": self.instances / self.wall_seconds if self.wall_seconds else None,
            "instances_timed": self.instances,
            "wall_seconds": self.wall_seconds,
            "batch_latency_p50_ms": percentile(self.batch_seconds, 50) * 1000,
            "batch_latency_p95_ms": percentile(self.batch_seconds, 95) * 1000,
            "batches": len(self.batch_seconds),
            "peak_memory_bytes": self.peak_memory_bytes,
            "device": self.device,
            "device_name": self.device_name,
            "shards_resumed": self.shards_skipped,
        }


def align_labels(
    dataset_labels: list[str], model_labels: list[str], mapping: dict[str, str] | None = None
) -> np.ndarray:
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
    return out_dir / shard.name


class FixedSizePreprocess:
    """The PIL image processors' resize -> rescale -> normalize, vectorised over a batch.

    For the common case (a fixed ``height × width`` resize, no crop, no padding) the
    processor's per-image numpy steps cost more than decoding. This does the same
    operations in the same order and dtypes — PIL resize with the processor's filter,
    ``uint8 -> float64 * rescale_factor -> float32``, ``(x - mean) / std`` in float32 — on
    the whole batch at once, so its output is bit-for-bit the processor's (tested).
    ``for_processor`` returns None for any processor it does not cover, and the processor
    itself is used.
    """

    def __init__(self, height: int, width: int, resample: int, scale: float, mean, std):
        self.size = (width, height)  # PIL order
        self.resample = resample
        self.scale = scale
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    @classmethod
    def for_processor(cls, processor) -> FixedSizePreprocess | None:
        size = getattr(processor, "size", None)
        height, width = (getattr(size, "height", None), getattr(size, "width", None)) if size is not None else (None, None)
        eligible = (
            getattr(processor, "backend", None) == "pil"
            and processor.do_resize
            and height
            and width
            and not getattr(processor, "do_center_crop", None)
            and not getattr(processor, "do_pad", None)
            and processor.do_rescale
            and processor.do_normalize
            and len(processor.image_mean) == len(processor.image_std) == 3
        )
        if not eligible:
            return None
        resample = processor.resample if processor.resample is not None else 2  # PIL BILINEAR, the default
        return cls(height, width, int(resample), processor.rescale_factor, processor.image_mean, processor.image_std)

    def __call__(self, images: list) -> np.ndarray:
        pixels = np.stack([np.asarray(image.resize(self.size, resample=self.resample)) for image in images])
        values = (pixels.astype(np.float64) * self.scale).astype(np.float32)
        values = (values - self.mean) / self.std
        return np.ascontiguousarray(values.transpose(0, 3, 1, 2))


class ShardBatches(IterableDataset):
    """Preprocessed batches of the given shards; worker ``j`` of ``n`` takes shards ``j::n``."""

    def __init__(self, shards: list[tuple[int, Path]], processor, batch_size: int):
        self.shards = shards
        self.processor = processor
        self.fast = FixedSizePreprocess.for_processor(processor)
        self.batch_size = batch_size

    def preprocess(self, images: list) -> np.ndarray:
        if self.fast is not None:
            return self.fast(images)
        return np.asarray(self.processor(images=images, return_tensors="np")["pixel_values"])

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        mine = self.shards if info is None else self.shards[info.id :: info.num_workers]
        for index, path in mine:
            table = pq.read_table(path, columns=["instance_id", "image", "label"])
            ids = table.column("instance_id").to_pylist()
            images = table.column("image").to_pylist()
            labels = table.column("label").to_numpy()
            for start in range(0, len(ids), self.batch_size):
                stop = min(start + self.batch_size, len(ids))
                pixels = [self._load(ids[i], images[i]) for i in range(start, stop)]
                values = self.preprocess(pixels)
                yield {
                    "shard": index,
                    "last": stop == len(ids),
                    "instance_ids": ids[start:stop],
                    "labels": torch.from_numpy(labels[start:stop].copy()),
                    "pixel_values": torch.from_numpy(np.ascontiguousarray(values)),
                }

    @staticmethod
    def _load(instance_id: str, data: bytes):
        try:
            image = decode_image(data)
        except InvalidImage as e:  # ingest validated every image: this is a corrupted shard
            raise RuntimeError(f"instance {instance_id}: {e}") from e
        return ImageOps.exif_transpose(image).convert("RGB")


def _write_predictions(path: Path, rows: dict[str, list]) -> int:
    """One prediction shard in the result-set contract (``shared.results``)."""
    labels = np.concatenate(rows["labels"]).astype(np.int32)
    top_ids = torch.cat(rows["top_ids"]).cpu().numpy().astype(np.int32)
    top_scores = torch.cat(rows["top_scores"]).float().cpu().numpy()
    label_score = torch.cat(rows["label_score"]).float().cpu().numpy()
    n, k = top_ids.shape
    predictions = top_ids[:, 0]
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    columns = {
        "instance_id": pa.array([i for chunk in rows["instance_ids"] for i in chunk], pa.string()),
        "label": pa.array(labels, pa.int32()),
        "prediction": pa.array(predictions, pa.int32()),
        "confidence": pa.array(top_scores[:, 0], pa.float32()),
        "label_score": pa.array(label_score, pa.float32()),
        "correct": pa.array(predictions == labels, pa.bool_()),
        "topk_ids": pa.ListArray.from_arrays(offsets, pa.array(top_ids.reshape(-1), pa.int32())),
        "topk_scores": pa.ListArray.from_arrays(offsets, pa.array(top_scores.reshape(-1), pa.float32())),
    }
    table = pa.Table.from_arrays([columns[f.name] for f in PREDICTION_SCHEMA], schema=PREDICTION_SCHEMA)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)  # atomic: a shard either exists whole or not at all
    return len(labels)


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


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
    ``on_shard(index, path, stats)`` is called after each prediction shard is written, and
    ``on_batch(instances)`` after each batch (for progress within a shard).

    Raises:
        WorkerFailure: ``inference_error`` when a batch cannot be decoded or run.
    """
    options = options.resolved()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(options.device)
    torch.set_num_threads(options.torch_threads)
    model = model.to(device).eval()
    label_names = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    k = min(options.top_k, len(label_names))
    todo = [(i, p) for i, p in enumerate(shards) if not prediction_shard_path(out_dir, p).exists()]
    stats = RunStats(
        shards_skipped=len(shards) - len(todo),
        device=device.type,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    )
    if not todo:
        return stats
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    workers = min(options.decode_workers, len(todo))
    loader = DataLoader(
        ShardBatches(todo, processor, options.batch_size),
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=options.prefetch_batches if workers else None,
        multiprocessing_context="fork" if workers else None,
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    label_lookup = torch.from_numpy(label_map)
    pending: dict[int, dict[str, list]] = {}
    started = time.perf_counter()
    try:
        for batch in loader:
            tick = time.perf_counter()
            pixels = batch["pixel_values"].to(device, non_blocking=True)
            labels = label_lookup[batch["labels"]]
            with torch.inference_mode(), autocast:
                logits = model(pixel_values=pixels).logits
                probs = logits.float().softmax(dim=-1)
                top_scores, top_ids = probs.topk(k, dim=-1)
                label_score = probs.gather(1, labels.to(device)[:, None])[:, 0]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stats.batch_seconds.append(time.perf_counter() - tick)
            rows = pending.setdefault(
                batch["shard"], {"instance_ids": [], "labels": [], "top_ids": [], "top_scores": [], "label_score": []}
            )
            rows["instance_ids"].append(batch["instance_ids"])
            rows["labels"].append(labels.numpy())
            rows["top_ids"].append(top_ids)
            rows["top_scores"].append(top_scores)
            rows["label_score"].append(label_score)
            if on_batch is not None:
                on_batch(len(batch["instance_ids"]))
            if batch["last"]:
                index = batch["shard"]
                path = prediction_shard_path(out_dir, shards[index])
                stats.instances += _write_predictions(path, pending.pop(index))
                stats.shards_done += 1
                stats.wall_seconds = time.perf_counter() - started
                if on_shard is not None:
                    on_shard(index, path, stats)
    except RuntimeError as e:
        raise WorkerFailure(FailureReason.inference_error, str(e)) from e
    stats.wall_seconds = time.perf_counter() - started
    stats.peak_memory_bytes = _peak_memory(device)
    return stats


def read_predictions(paths: list[Path]) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in paths]) if paths else PREDICTION_SCHEMA.empty_table()


def summarize(prediction_paths: list[Path], label_names: list[str], stats: RunStats | None = None) -> dict:
    """Metrics over all prediction shards, plus the efficiency of the run that made them."""
    table = read_predictions(prediction_paths)
    top_k = table.column("topk_ids").combine_chunks()
    k = len(top_k[0]) if len(top_k) else 1
    summary = classification_metrics(
        labels=table.column("label").to_numpy(),
        predictions=table.column("prediction").to_numpy(),
        top_k_ids=top_k.flatten().to_numpy().reshape(-1, k),
        confidence=table.column("confidence").to_numpy(),
        label_score=table.column("label_score").to_numpy(),
        label_names=label_names,
    )
    summary["label_names"] = label_names
    if stats is not None:
        summary["efficiency"] = stats.efficiency()
    return summary
