"""Evaluation on the CPU with one replica of the model per core.

Each replica is a process forked from the one that loaded the model (the weights are
shared, copy-on-write, never written) with one torch thread. Replicas take batches one at
a time, in order, from a shared counter, so they finish together however the rows fall
into shards; each reads and decodes its own images and sends back only its predictions
(a few hundred bytes per image). The calling process runs no model: it assembles each
prediction shard, writes it once all its rows are in, and relays progress to
``on_batch`` and ``on_shard`` (which may talk to Datastore and Cloud Storage, which a
forked child must not). It stops every replica as soon as one fails or a callback raises.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkProcess
from typing import TYPE_CHECKING, cast

from workers.decoding import Batch, Plan, ShardReader, start_forked_child
from workers.failures import FailureReason, WorkerFailure

if TYPE_CHECKING:
    from workers.evaluate import Predictor, ShardWriter


def run_in_replicas(
    predictor: Predictor, plan: Plan, writer: ShardWriter, *, replicas: int, on_batch: Callable[[int], None] | None
) -> None:
    """Predict every batch of ``plan`` in ``replicas`` processes and write the shards.

    Raises:
        WorkerFailure: a replica's own failure (``inference_error``…), or
            ``inference_error`` when a replica died (killed, out of memory).
    """
    context = multiprocessing.get_context("fork")
    next_batch = context.Value("q", 0)
    processes: dict[Connection, ForkProcess] = {}
    batch_seconds: list[float] = []
    try:
        for _ in range(replicas):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_replica, args=(predictor, plan, next_batch, sender, os.getpid()))
            process.start()
            sender.close()  # only the replica holds it now: EOF here once it exits, however it exits
            processes[receiver] = process
        while processes:
            for receiver in cast(list[Connection], wait(list(processes))):  # wait returns what it was given
                try:
                    kind, body = receiver.recv()
                except EOFError:
                    process = processes.pop(receiver)
                    process.join()
                    receiver.close()
                    raise WorkerFailure(
                        FailureReason.inference_error,
                        f"an evaluation process died (exit code {process.exitcode}; out of memory?)",
                    ) from None
                if kind == "predictions":
                    if on_batch is not None:
                        on_batch(len(body.instance_ids))
                    if writer.add(body):
                        writer.write(body.shard)
                elif kind == "done":
                    batch_seconds.extend(body)
                    processes.pop(receiver).join()
                    receiver.close()
                elif kind == "failed":
                    raise WorkerFailure(body[0], body[1], details=body[2])
                else:  # "error": a bug in the replica, raised as one here
                    raise RuntimeError(f"an evaluation process failed:\n{body}")
    finally:
        for receiver, process in processes.items():
            process.kill()
            process.join()
            receiver.close()
    writer.stats.batch_seconds = batch_seconds
    # The largest replica's peak (Linux reports KiB): each holds the shared weights and its own batch.
    writer.stats.peak_memory_bytes = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def _replica(predictor: Predictor, plan: Plan, next_batch, sender: Connection, parent: int) -> None:
    start_forked_child(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when replicas stop

    def claimed() -> Iterator[Batch]:
        reader = ShardReader()
        while True:
            with next_batch.get_lock():
                position = next_batch.value
                next_batch.value += 1
            if position >= len(plan):
                return
            yield reader.batch(*plan[position])

    try:
        predictor.start()
        for predictions in predictor.batches(claimed()):
            sender.send(("predictions", predictions.on_host()))
        sender.send(("done", predictor.timer.seconds()))
    except WorkerFailure as e:
        sender.send(("failed", (e.reason, e.message, e.details)))
    except Exception:  # noqa: BLE001 - a bug: the parent raises it
        sender.send(("error", traceback.format_exc(limit=20)))
