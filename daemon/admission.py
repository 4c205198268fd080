"""Which pending evaluations run next: fair across accounts, oldest first, within the caps.

``plan_admission`` is pure. The order is a round robin over accounts (the account whose
oldest pending evaluation is oldest goes first; then one evaluation per account per round,
each account's oldest first), so one account with a thousand queued evaluations delays
another account's single one by at most one evaluation per account. Walking that order,
an evaluation is admitted unless its account is at the per-account cap, the global cap is
reached, or the backend has no room; those left waiting get the reason and their
1-based position in the order.

Admission is serialised through ``AdmissionLease``: one replica at a time plans and claims,
so the caps are exact across replicas. The claims themselves are compare-and-sets, so a
replica that lost the lease while paused still cannot claim anything twice; at worst a
cap is overshot for one turn during the hand-over.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Protocol

from shared.entities import Entity, QueueReason, utcnow
from shared.store import ANY_ACCOUNT, Store, Txn


class Queued(Protocol):
    id: str
    account: str
    created_at: dt.datetime


@dataclass(frozen=True)
class Waiting:
    reason: QueueReason
    position: int | None


@dataclass
class AdmissionPlan:
    admit: list[str] = field(default_factory=list)  # ids, in the order to claim them
    waiting: dict[str, Waiting] = field(default_factory=dict)


def fair_order(pending: Sequence[Queued]) -> list[Queued]:
    """Round robin over accounts, oldest first within each and across the first round."""
    by_account: dict[str, list[Queued]] = defaultdict(list)
    for item in sorted(pending, key=lambda e: (e.created_at, e.id)):
        by_account[item.account].append(item)
    accounts = sorted(by_account, key=lambda a: (by_account[a][0].created_at, a))
    order: list[Queued] = []
    depth = 0
    while len(order) < len(pending):
        for account in accounts:
            queue = by_account[account]
            if depth < len(queue):
                order.append(queue[depth])
        depth += 1
    return order


def plan_admission(
    pending: Sequence[Queued],
    *,
    active_by_account: dict[str, int],
    global_cap: int,
    account_cap: int,
    free_slots: int | None,
    positions: int,
) -> AdmissionPlan:
    """What to admit now, and why each of the rest waits.

    ``active_by_account`` counts admitted and running evaluations; ``free_slots`` is the
    backend's room (None: unlimited); only the first ``positions`` waiting evaluations are
    given a position (the rest get None), which bounds the writes a turn makes.
    """
    active = dict(active_by_account)
    global_room = global_cap - sum(active.values())
    backend_room = free_slots if free_slots is not None else len(pending)
    plan = AdmissionPlan()
    position = 0
    for item in fair_order(pending):
        if active.get(item.account, 0) >= account_cap:
            reason = QueueReason.account_limit
        elif global_room <= 0:
            reason = QueueReason.global_limit
        elif backend_room <= 0:
            reason = QueueReason.queued
        else:
            plan.admit.append(item.id)
            active[item.account] = active.get(item.account, 0) + 1
            global_room -= 1
            backend_room -= 1
            continue
        position += 1
        plan.waiting[item.id] = Waiting(reason, position if position <= positions else None)
    return plan


def describe(waiting: Waiting) -> str:
    where = f"position {waiting.position} in the queue" if waiting.position else "in the queue"
    why = {
        QueueReason.account_limit: "this account has as many evaluations running as it may",
        QueueReason.global_limit: "the service is running as many evaluations as it may",
        QueueReason.queued: "waiting for capacity",
    }.get(waiting.reason, str(waiting.reason))
    return f"{why}; {where}"


# --- the admission lease ------------------------------------------------------------------


class LeaseStatus(StrEnum):
    held = "held"


class AdmissionLease(Entity):
    """Which daemon replica admits evaluations, until when. Internal to the daemon."""

    kind: ClassVar[str] = "DaemonLease"
    id_prefix: ClassVar[str] = "dls"
    status_enum: ClassVar[type[StrEnum]] = LeaseStatus
    transitions: ClassVar[dict] = {LeaseStatus.held: frozenset()}
    terminal: ClassVar[frozenset] = frozenset()
    indexed: ClassVar[frozenset[str]] = frozenset()
    history: ClassVar[bool] = False

    ID: ClassVar[str] = "admission"

    status: LeaseStatus = LeaseStatus.held
    holder: str
    expires_at: dt.datetime


def acquire_admission(store: Store, *, holder: str, ttl_s: float) -> bool:
    """Take or renew the admission lease; False while another replica holds it."""

    def take(txn: Txn) -> bool:
        now = utcnow()
        current = txn.find(AdmissionLease, AdmissionLease.ID, account=ANY_ACCOUNT)
        if current is not None and current.holder != holder and current.expires_at > now:
            return False
        txn.put(
            AdmissionLease(
                id=AdmissionLease.ID,
                account="system",
                name="admission",
                holder=holder,
                expires_at=now + dt.timedelta(seconds=ttl_s),
            )
        )
        return True

    return store.run_in_transaction(take)


def release_admission(store: Store, *, holder: str) -> None:
    """Give the lease up on shutdown, so another replica takes over at once."""

    def drop(txn: Txn) -> None:
        current = txn.find(AdmissionLease, AdmissionLease.ID, account=ANY_ACCOUNT)
        if current is not None and current.holder == holder:
            txn.delete(AdmissionLease, AdmissionLease.ID)

    store.run_in_transaction(drop)
