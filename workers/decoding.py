"""Decoder processes that turn image bytes into model input, batch by batch.

Decoding is Python-heavy (PIL's per-image overhead holds the GIL), and a process that
runs a model on a GPU must spend its time keeping the GPU fed, so decoding runs in forked
processes (on the CPU, each model replica decodes for itself: ``workers.replicas``).
Their output does not come back through a pipe: a batch of 64 ViT-Base inputs is 9.6 MB even as ``uint8``, and
unpickling that would take main-process time the model needs. The decoders write into
*slots* of one anonymous shared mapping made before the fork (no ``/dev/shm`` involved),
and a finished task returns nothing but success. A recipe whose output shape is not known
ahead (``ProcessorRecipe``) returns its arrays by value instead.

``workers=0`` decodes in the calling process, when a result is asked for.

``batch_plan`` cuts canonical shards into batches, ``read_batches`` reads them, and
``decoded_batches`` keeps a pool decoding them ahead of whoever consumes them.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from workers.pixels import InvalidImage, PixelRecipe, ProcessorRecipe

# Each decoder process's recipe and slots, set by ``_start_decoder`` (or, with no
# processes, by the pool itself).
_recipe: PixelRecipe | ProcessorRecipe | None = None
_slots: np.ndarray | None = None


class DecodeError(RuntimeError):
    """A batch could not be decoded: a damaged image (ingestion checked every one, so a
    damaged shard) or a decoder process that died."""


def start_forked_child(parent: int) -> None:
    """The first thing a forked helper does.

    It freezes what it inherited out of the garbage collector's reach: the parent's
    garbage may hold gRPC channels (the heartbeat's store), and collecting one here would
    run gRPC code in a process whose gRPC threads did not survive the fork. (The entry
    points also turn gRPC's own fork handlers off: ``GRPC_ENABLE_FORK_SUPPORT``, see
    ``workers/__main__.py``.) It also spares the copy-on-write of pages a collection touches.

    And it dies with ``parent``: a process killed outright (OOM, SIGKILL) cannot stop its
    helpers, and they would wait for work forever."""
    gc.freeze()
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _start_decoder(recipe: PixelRecipe | ProcessorRecipe, slots: np.ndarray | None, parent: int) -> None:
    global _recipe, _slots
    start_forked_child(parent)
    _recipe, _slots = recipe, slots
    torch.set_num_threads(1)  # a decoder runs no torch ops; keep it from starting a thread pool


def _decode(slot: int | None, blobs: list[bytes], first_id: str) -> np.ndarray | None:
    try:
        # A recipe with a batch shape (PixelRecipe) decodes into the shared slots; without one
        # (ProcessorRecipe) it returns its pixels and DecodePool hands out no slot.
        if slot is None:
            return _recipe.decode(blobs)  # type: ignore[union-attr]  # a ProcessorRecipe, as said above
        _recipe.decode_into(blobs, _slots[slot])  # type: ignore[union-attr,index]  # a PixelRecipe and its slots
        return None
    except InvalidImage as e:
        raise DecodeError(f"the batch starting at instance {first_id}: {e}") from None


class Decoded:
    """One decoded batch. ``pixels`` may be a view of a slot: call ``to`` for the tensor
    on the model's device, then ``release`` once that tensor's values have been copied
    (normalizing copies them)."""

    def __init__(self, pool: DecodePool, pixels: torch.Tensor, slot: int | None):
        self._pool, self.pixels, self._slot = pool, pixels, slot

    def to(self, device: torch.device) -> torch.Tensor:
        if device.type != "cuda":
            return self.pixels
        # Through page-locked memory (PyTorch's caching host allocator), so that the copy
        # to the GPU is asynchronous; the slot is free once this returns.
        moved = self.pixels.pin_memory().to(device, non_blocking=True)
        self.release()
        return moved

    def release(self) -> None:
        self._pool._free_slot(self._slot)
        self._slot = None


class PendingBatch:
    """A submitted batch; ``result()`` waits for it."""

    def __init__(self, pool: DecodePool, slot: int | None, blobs: list[bytes], first_id: str, future: Future | None):
        self._pool, self._slot, self._n = pool, slot, len(blobs)
        # With a decoder process the bytes went to it: none kept here.
        self._blobs: list[bytes] = blobs if future is None else []
        self._first_id = first_id
        self._future = future

    def result(self) -> Decoded:
        """Raises DecodeError."""
        try:
            if self._future is None:
                value = self._pool._decode_here(self._slot, self._blobs, self._first_id)
            else:
                value = self._future.result()
        except BrokenProcessPool as e:
            self._pool._free_slot(self._slot)
            raise DecodeError(f"a decoder process died: {e}") from e
        except BaseException:
            self._pool._free_slot(self._slot)
            raise
        if value is not None:
            return Decoded(self._pool, torch.from_numpy(value), None)
        return Decoded(self._pool, self._pool.slot_tensor[self._slot][: self._n], self._slot)  # type: ignore[index]  # slotted


class DecodePool:
    """Decodes batches of image bytes with ``recipe`` in ``workers`` processes.

    At most ``slots`` batches may be submitted and not yet released. Use it as a context
    manager: leaving it stops the decoder processes.
    """

    def __init__(self, recipe: PixelRecipe | ProcessorRecipe, *, workers: int, slots: int, batch_size: int):
        self.recipe = recipe
        self.slots: np.ndarray | None = None
        self.slot_tensor: torch.Tensor | None = None
        layout = recipe.batch_shape(batch_size)
        if layout is not None:
            shape, dtype = (slots, *layout[0]), layout[1]
            self._mapping = mmap.mmap(-1, int(np.prod(shape)) * dtype.itemsize)  # anonymous, MAP_SHARED
            self.slots = np.frombuffer(self._mapping, dtype=dtype).reshape(shape)
            self.slot_tensor = torch.from_numpy(self.slots)
        self._free = list(range(slots))
        self._executor = None
        if workers:
            self._executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_start_decoder,
                initargs=(recipe, self.slots, os.getpid()),
            )

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def submit(self, blobs: list[bytes], first_id: str) -> PendingBatch:
        """Start decoding ``blobs``; ``first_id`` names the batch in errors."""
        slot = self._free.pop() if self.slots is not None else None
        future = None
        if self._executor is not None:
            try:
                future = self._executor.submit(_decode, slot, blobs, first_id)
            except BrokenProcessPool as e:
                self._free_slot(slot)
                raise DecodeError(f"a decoder process died: {e}") from e
        return PendingBatch(self, slot, blobs, first_id, future)

    def _decode_here(self, slot: int | None, blobs: list[bytes], first_id: str) -> np.ndarray | None:
        global _recipe, _slots
        _recipe, _slots = self.recipe, self.slots
        return _decode(slot, blobs, first_id)

    def _free_slot(self, slot: int | None) -> None:
        if slot is not None:
            self._free.append(slot)


@dataclass
class Batch:
    """Up to ``batch_size`` consecutive rows of one shard."""

    shard: int  # the shard's index in the run
    start: int  # its first row's position in the shard
    instance_ids: list[str]
    labels: np.ndarray
    images: list[bytes]


class ShardReader:
    """The rows of one shard at a time, kept until another shard is asked for."""

    def __init__(self):
        self.index: int | None = None

    def batch(self, index: int, path: Path, start: int, stop: int) -> Batch:
        if index != self.index:
            table = pq.read_table(path, columns=["instance_id", "image", "label"])
            self.ids = table.column("instance_id").to_pylist()
            self.images = table.column("image").to_pylist()
            self.labels = table.column("label").to_numpy().astype(np.int64)  # a copy torch may write to
            self.index = index
        return Batch(index, start, self.ids[start:stop], self.labels[start:stop], self.images[start:stop])


Plan = list[tuple[int, Path, int, int]]  # (shard index, path, first row, row after the last)


def batch_plan(shards: Iterable[tuple[int, Path]], batch_size: int) -> Plan:
    """Every batch of the ``(index, path)`` shards, in order; batches never span shards.
    Row counts come from the Parquet footers."""
    plan: Plan = []
    for index, path in shards:
        rows = pq.ParquetFile(path).metadata.num_rows
        plan.extend((index, path, start, min(start + batch_size, rows)) for start in range(0, rows, batch_size))
    return plan


def read_batches(plan: Iterable[tuple[int, Path, int, int]]) -> Iterator[Batch]:
    """The batches of ``plan``; each shard is read once, when its first batch comes up."""
    reader = ShardReader()
    for index, path, start, stop in plan:
        yield reader.batch(index, path, start, stop)


def decoded_batches(pool: DecodePool, batches: Iterator[Batch], *, depth: int) -> Iterator[tuple[Batch, Decoded]]:
    """Each batch with its pixels, in order, ``depth`` batches decoding ahead of the one
    the caller is working on (with no decoder processes, each is decoded when its turn
    comes). The caller releases each one before asking for the next."""
    in_flight: deque[tuple[Batch, PendingBatch]] = deque()
    for batch in batches:
        in_flight.append((batch, pool.submit(batch.images, batch.instance_ids[0])))
        if len(in_flight) > depth:
            ready, pending = in_flight.popleft()
            yield ready, pending.result()
    while in_flight:
        ready, pending = in_flight.popleft()
        yield ready, pending.result()
