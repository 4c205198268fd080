"""Text classification on the CPU with one single-threaded replica of the model per core.

Measured on 2 cores (``bench/README.md``): one process with two torch threads is slower
than one thread as soon as anything else wants a core (every layer ends at a barrier that
waits for the slower thread), and one thread leaves a core idle. So each core runs a
replica: a process forked from the one that loaded the model (the weights shared,
copy-on-write, never written), with one torch thread. The calling process tokenizes and
pads (the fast tokenizer's Rust is a small share of the time), hands each padded batch to
a replica with room (``DEPTH`` batches queued each, so none waits for the next), and gets
back only its top-k and label scores. Replicas are forked before the calling process
tokenizes anything, so they never inherit the tokenizer's thread pool.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import cast

import numpy as np
import torch

from workers.decoding import start_forked_child
from workers.failures import FailureReason, WorkerFailure

DEPTH = 2  # batches queued per replica

Inputs = dict[str, np.ndarray]
Scores = tuple[np.ndarray, np.ndarray, np.ndarray]  # top ids, top scores, label score


class ReplicaPool:
    """``replicas`` forked processes that each run ``predict(inputs, labels) -> Scores`` on
    the batches they are sent; a context manager that always stops them."""

    def __init__(self, predict, replicas: int):
        self.predict, self.replicas = predict, replicas
        self.tasks: dict[Connection, Connection] = {}  # result pipe -> task pipe
        self.processes: dict[Connection, multiprocessing.process.BaseProcess] = {}
        self.seconds: list[float] = []

    def __enter__(self) -> ReplicaPool:
        context = multiprocessing.get_context("fork")
        for _ in range(self.replicas):
            task_out, task_in = context.Pipe(duplex=False)
            result_out, result_in = context.Pipe(duplex=False)
            process = context.Process(target=_replica, args=(self.predict, task_out, result_in, os.getpid()))
            process.start()
            task_out.close()
            result_in.close()  # only the replica holds it now: EOF here once it exits, however it exits
            self.tasks[result_out], self.processes[result_out] = task_in, process
        return self

    def __exit__(self, *exc) -> None:
        for receiver, process in self.processes.items():
            process.kill()
            process.join()
            receiver.close()
            self.tasks[receiver].close()

    def run(self, batches: Iterable[tuple[int, Inputs, np.ndarray]]) -> Iterator[tuple[int, Scores]]:
        """``(key, scores)`` for every ``(key, inputs, labels)`` batch, in the order they finish.

        Raises:
            WorkerFailure: ``inference_error`` when a replica fails or dies.
        """
        pending = iter(batches)
        queued = dict.fromkeys(self.tasks, 0)
        outstanding = 0
        exhausted = False
        while True:
            for receiver in queued:
                while not exhausted and queued[receiver] < DEPTH:
                    batch = next(pending, None)
                    if batch is None:
                        exhausted = True
                        break
                    self.tasks[receiver].send(batch)
                    queued[receiver] += 1
                    outstanding += 1
            if outstanding == 0:
                return
            for receiver in cast(list[Connection], wait(list(queued))):  # wait() returns what it was given
                try:
                    kind, body = receiver.recv()
                except EOFError:
                    raise WorkerFailure(
                        FailureReason.inference_error,
                        f"an evaluation process died (exit code {self.processes[receiver].exitcode}; out of memory?)",
                    ) from None
                if kind == "failed":
                    raise WorkerFailure(FailureReason.inference_error, body)
                if kind == "error":
                    raise RuntimeError(f"an evaluation process failed:\n{body}")
                key, scores, seconds = body
                self.seconds.append(seconds)
                queued[receiver] -= 1
                outstanding -= 1
                yield key, scores


def _replica(predict, tasks: Connection, results: Connection, parent: int) -> None:
    start_forked_child(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when replicas stop
    torch.set_num_threads(1)
    try:
        while True:
            key, inputs, labels = tasks.recv()
            started = _now()
            scores = predict(inputs, labels)
            results.send(("scores", (key, scores, _now() - started)))
    except EOFError:  # the parent closed the pipe: done
        return
    except WorkerFailure as e:
        results.send(("failed", e.message))
    except Exception:  # noqa: BLE001 - a bug: the parent raises it
        results.send(("error", traceback.format_exc(limit=20)))


def _now() -> float:
    import time

    return time.perf_counter()
