"""Comparison figures against scikit-learn and SciPy; leaderboard ranking."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from functions.results import compare
from functions.results.resultset import Source, open_result_sets
from tests.results.conftest import generate


@pytest.mark.parametrize("k,n", [(0, 0), (0, 1), (3, 10), (5, 10), (7, 9), (40, 100), (480, 1000), (12345, 25000)])
def test_exact_p_value_equals_scipy_binomtest(k, n):
    expected = stats.binomtest(k, n, 0.5).pvalue if n else 1.0
    assert compare.binomial_two_sided_p(k, n) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("b,c", [(10, 3), (3, 10), (50, 50), (1, 0), (200, 150)])
def test_chi2_equals_scipy(b, c):
    result = compare.mcnemar(b, c)
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    assert result.chi2 == pytest.approx(statistic)
    assert result.chi2_p_value == pytest.approx(stats.chi2.sf(statistic, 1), rel=1e-9)


def test_compare_two_models(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 1200)
    ids = np.array([f"x{i:05d}" for i in range(1200)])
    a = generate(tmp_path / "a", n=1200, classes=6, labels=labels, instance_ids=ids, seed=1, skill=1.6)
    b = generate(tmp_path / "b", n=1200, classes=6, labels=labels, instance_ids=ids, seed=2, skill=1.2)
    # b names its classes in another order: agreement must follow names, not indices
    b.label_names = list(reversed(a.label_names))
    sets = open_result_sets({"a": Source(a.directory, a.label_names), "b": Source(b.directory, b.label_names)})
    try:
        result = compare.compare(sets["a"], sets["b"], limit=10)
    finally:
        sets["a"].con.close()
    ra, rb = a.labels == a.predictions, b.labels == b.predictions
    assert result["instances"] == 1200 and result["unmatched"] == {"a": 0, "b": 0}
    names_a = np.array(a.label_names)[a.predictions]
    names_b = np.array(b.label_names)[b.predictions]
    assert result["agreement"] == pytest.approx(np.mean(names_a == names_b))
    assert result["both_correct"] == int((ra & rb).sum()) and result["both_wrong"] == int((~ra & ~rb).sum())
    only_a = ids[ra & ~rb]
    assert result["only_a_correct"].count == len(only_a)
    assert result["only_a_correct"].instance_ids == sorted(only_a)[:10]
    assert result["only_a_correct"].truncated
    assert result["only_b_correct"].count == int((~ra & rb).sum())
    assert result["accuracy_a"] == pytest.approx(ra.mean()) and result["accuracy_b"] == pytest.approx(rb.mean())
    diff = result["accuracy_difference"]
    assert diff.value == pytest.approx(ra.mean() - rb.mean())
    paired = stats.bootstrap(
        (ra.astype(float), rb.astype(float)),
        lambda x, y: x.mean() - y.mean(),
        paired=True,
        n_resamples=3000,
        method="percentile",
        random_state=0,
    ).confidence_interval
    assert diff.interval.low == pytest.approx(paired.low, abs=0.006)
    assert diff.interval.high == pytest.approx(paired.high, abs=0.006)
    expected_p = stats.binomtest(len(only_a), len(only_a) + int((~ra & rb).sum()), 0.5).pvalue
    assert result["mcnemar"].p_value == pytest.approx(expected_p, rel=1e-9)


def test_compare_counts_unmatched_instances(tmp_path):
    ids = np.array([f"x{i:04d}" for i in range(100)])
    labels = np.arange(100) % 3
    a = generate(tmp_path / "a", n=100, classes=3, labels=labels, instance_ids=ids)
    b = generate(tmp_path / "b", n=90, classes=3, labels=labels[5:95], instance_ids=ids[5:95], shards=1)
    sets = open_result_sets({"a": Source(a.directory, a.label_names), "b": Source(b.directory, b.label_names)})
    try:
        result = compare.compare(sets["a"], sets["b"], limit=0)
    finally:
        sets["a"].con.close()
    assert result["instances"] == 90 and result["unmatched"] == {"a": 10, "b": 0}
    assert result["only_a_correct"].instance_ids == []


def test_rank_orders_by_metric_and_skips_missing():
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def ev(i, summary):
        return SimpleNamespace(id=f"e{i}", created_at=t0 + dt.timedelta(minutes=i), summary=summary)

    evs = [
        ev(0, {"accuracy": 0.5, "log_loss": 0.9}),
        ev(1, {"accuracy": 0.9, "log_loss": 0.3}),
        ev(2, {"accuracy": 0.9, "log_loss": float("nan")}),
        ev(3, None),
        ev(4, {"accuracy": True}),
    ]
    assert [e.id for e, _ in compare.rank(evs, "accuracy")] == ["e1", "e2", "e0"]
    assert [e.id for e, _ in compare.rank(evs, "log_loss")] == ["e1", "e0"]
