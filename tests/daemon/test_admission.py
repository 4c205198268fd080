"""Fair admission as a pure function: round robin across accounts, oldest first, caps."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from daemon.admission import fair_order, plan_admission
from shared.entities import QueueReason

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


@dataclass
class Item:
    id: str
    account: str
    created_at: dt.datetime


def items(spec: str) -> list[Item]:
    """'a a a b c' -> one item per letter (its account), one second apart, ids a1, a2, b1 ..."""
    out, seen = [], {}
    for i, account in enumerate(spec.split()):
        seen[account] = seen.get(account, 0) + 1
        out.append(Item(f"{account}{seen[account]}", account, T0 + dt.timedelta(seconds=i)))
    return out


def test_round_robin_takes_one_per_account_per_round_oldest_account_first():
    order = fair_order(items("a a a a b b c"))
    assert [i.id for i in order] == ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]


def test_a_flood_from_one_account_does_not_starve_a_later_one():
    plan = plan_admission(
        items("a " * 50 + "b"), active_by_account={}, global_cap=2, account_cap=10, free_slots=None, positions=100
    )
    assert plan.admit == ["a1", "b1"]
    assert plan.waiting["a2"].reason == QueueReason.global_limit and plan.waiting["a2"].position == 1


def test_account_cap_counts_what_is_already_running():
    plan = plan_admission(
        items("a a a b"), active_by_account={"a": 1}, global_cap=10, account_cap=2, free_slots=None, positions=100
    )
    assert plan.admit == ["a1", "b1"]
    assert plan.waiting == {
        "a2": plan.waiting["a2"],
        "a3": plan.waiting["a3"],
    }
    assert plan.waiting["a2"].reason == QueueReason.account_limit
    assert [plan.waiting[i].position for i in ("a2", "a3")] == [1, 2]


def test_global_cap_and_backend_room_each_hold_work_back_with_their_own_reason():
    by_global = plan_admission(
        items("a b c"), active_by_account={"x": 3}, global_cap=4, account_cap=4, free_slots=None, positions=100
    )
    assert by_global.admit == ["a1"]
    assert {w.reason for w in by_global.waiting.values()} == {QueueReason.global_limit}
    by_backend = plan_admission(items("a b c"), active_by_account={}, global_cap=10, account_cap=4, free_slots=1, positions=100)
    assert by_backend.admit == ["a1"]
    assert {w.reason for w in by_backend.waiting.values()} == {QueueReason.queued}


def test_only_the_first_positions_are_numbered():
    plan = plan_admission(items("a " * 10), active_by_account={"a": 4}, global_cap=8, account_cap=4, free_slots=None, positions=3)
    assert plan.admit == []
    assert [plan.waiting[f"a{i}"].position for i in range(1, 11)] == [1, 2, 3] + [None] * 7
