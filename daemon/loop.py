"""The daemon's loop: one turn at a time, woken by a hint or the poll interval.

A turn, in order (each phase reads Datastore afresh; every write is a compare-and-set):

1. deletions: cancel jobs, remove objects and dependents, then the entities (and their
   events); the jobs of cancelled evaluations are stopped;
2. waiting evaluations: released to ``pending`` once both inputs are ready, or failed;
3. claimed tasks: follow their jobs; retry or fail the dead ones;
4. uploaded models and datasets: claim and submit verification/ingestion;
5. pending evaluations (the replica holding the admission lease only): fair admission
   within the caps, and a reason and queue position for each one left waiting;
6. webhook deliveries owed (``daemon/webhooks.py``).

``run`` has one exit per stop condition, each logged: a stop request (SIGTERM), the
iteration limit (tests), or too many failed turns in a row (the process exits non-zero
and Kubernetes restarts it). After each good turn the health file is touched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from daemon.admission import AdmissionPlan, acquire_admission, describe, plan_admission, release_admission
from daemon.cancels import stop_cancelled
from daemon.claims import claim_evaluations, dispatch_uploaded
from daemon.context import Context, for_each
from daemon.deletion import carry_out_deletions
from daemon.follow import follow_active
from daemon.inputs import gate_waiting
from daemon.webhooks import deliver_webhooks
from shared.entities import Evaluation, EvaluationStatus
from shared.errors import Unavailable
from shared.pubsub import Hints
from shared.store import ANY_ACCOUNT

log = logging.getLogger("daemon")


class Exit(StrEnum):
    stopped = "stopped"
    max_iterations = "max_iterations"
    failing = "failing"


@dataclass
class TurnReport:
    counts: dict[str, int]
    failed_phases: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed_phases


class Daemon:
    def __init__(self, ctx: Context, *, hints: Hints | None = None):
        self.ctx = ctx
        self.hints = hints
        self._stop = threading.Event()
        self._holds_admission = False

    # -- one turn --

    def turn(self) -> TurnReport:
        """Run every phase once. A phase that hits an outage is logged and skipped; the
        others still run. A bug propagates."""
        started = time.monotonic()
        self.ctx.counts = {}
        failed: list[str] = []
        phases: list[tuple[str, Callable[[Context], None]]] = [
            ("deletions", carry_out_deletions),
            ("cancels", stop_cancelled),
            ("waiting", gate_waiting),
            ("follow", follow_active),
            ("uploaded", dispatch_uploaded),
            ("admission", self._admit),
            ("webhooks", deliver_webhooks),
        ]
        for name, phase in phases:
            try:
                phase(self.ctx)
            except Unavailable as e:
                failed.append(name)
                log.warning("phase skipped: a dependency is unavailable", extra={"phase": name, "error": e.message})
        report = TurnReport(dict(self.ctx.counts), failed, time.monotonic() - started)
        if report.counts or failed:
            log.info("turn", extra={"counts": report.counts, "failed_phases": failed, "seconds": round(report.seconds, 3)})
        return report

    def _admit(self, ctx: Context) -> None:
        self._holds_admission = acquire_admission(ctx.store, holder=ctx.replica, ttl_s=ctx.daemon.admission_lease_s)
        if not self._holds_admission:
            return
        pending = [  # one whose cancelled job is still stopping waits for it (daemon/cancels.py)
            e
            for e in ctx.store.iterate(
                Evaluation, account=ANY_ACCOUNT, filters={"status": EvaluationStatus.pending}, order="created_at"
            )
            if not e.stopping
        ]
        if not pending:
            return
        active: dict[str, int] = {}
        for status in (EvaluationStatus.admitted, EvaluationStatus.running):
            for evaluation in ctx.store.iterate(Evaluation, account=ANY_ACCOUNT, filters={"status": status}, order=None):
                active[evaluation.account] = active.get(evaluation.account, 0) + 1
        plan = plan_admission(
            pending,
            active_by_account=active,
            global_cap=ctx.daemon.global_concurrency,
            account_cap=ctx.daemon.account_concurrency,
            free_slots=ctx.backend.free_slots(),
            positions=ctx.daemon.queue_positions,
        )
        by_id = {e.id: e for e in pending}
        claim_evaluations(ctx, [by_id[i] for i in plan.admit])
        self._explain_waiting(ctx, plan, by_id)

    @staticmethod
    def _explain_waiting(ctx: Context, plan: AdmissionPlan, by_id: dict[str, Evaluation]) -> None:
        """Write each waiting evaluation's reason and position, only where they changed."""
        stale = [
            by_id[i]
            for i, waiting in plan.waiting.items()
            if by_id[i].reason != waiting.reason or by_id[i].queue_position != waiting.position
        ]

        def explain(evaluation: Evaluation) -> None:
            waiting = plan.waiting[evaluation.id]
            ctx.store.update(
                Evaluation,
                evaluation.id,
                account=ANY_ACCOUNT,
                expected=EvaluationStatus.pending,
                reason=str(waiting.reason),
                message=describe(waiting),
                queue_position=waiting.position,
            )

        for_each(stale, explain, what="explain")

    # -- the loop --

    def run(self, *, max_iterations: int | None = None) -> Exit:
        """Turn until told to stop. Returns why it stopped."""
        failures = 0
        iterations = 0
        log.info("daemon starting", extra={"replica": self.ctx.replica, "backend": self.ctx.daemon.backend})
        self._ensure_hints()
        try:
            while True:
                if self._stop.is_set():
                    log.info("stopping: asked to")
                    return Exit.stopped
                if max_iterations is not None and iterations >= max_iterations:
                    log.info("stopping: iteration limit reached", extra={"iterations": iterations})
                    return Exit.max_iterations
                iterations += 1
                try:
                    report = self.turn()
                except Exception:  # noqa: BLE001 — logged with its stack; repeated failures exit below
                    log.exception("turn failed")
                    report = None
                if report is not None and report.ok:
                    failures = 0
                    self._touch_health()
                else:
                    failures += 1
                    if failures >= self.ctx.daemon.max_failed_turns:
                        log.error("stopping: too many failed turns in a row", extra={"failures": failures})
                        return Exit.failing
                if max_iterations is None or iterations < max_iterations:
                    self.sleep(self.ctx.daemon.poll_interval_s)
        finally:
            self._teardown()

    def sleep(self, seconds: float) -> None:
        """Until a hint arrives, the poll interval passes, or a stop is asked for."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.hints is None:
                self._stop.wait(min(left, 0.5))
                continue
            if self.hints.wait(timeout_s=min(left, 1.0)):
                return

    def stop(self) -> None:
        """Ask the loop to stop after the current turn (safe from a signal handler)."""
        self._stop.set()

    # -- helpers --

    def _ensure_hints(self) -> None:
        if self.hints is None:
            return
        try:
            self.hints.ensure()
        except Exception:  # noqa: BLE001 — hints are an optimisation; polling alone is correct
            log.warning("no hint subscription; polling only", exc_info=True)
            self.hints = None

    def _touch_health(self) -> None:
        if self.ctx.daemon.health_file:
            path = Path(self.ctx.daemon.health_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{time.time():.3f}\n")

    def _teardown(self) -> None:
        if self._holds_admission:
            try:
                release_admission(self.ctx.store, holder=self.ctx.replica)
            except Unavailable:
                log.warning("could not release the admission lease; it expires on its own")
        self.ctx.backend.close()
        if self.hints is not None:
            self.hints.close()
        log.info("daemon stopped")
