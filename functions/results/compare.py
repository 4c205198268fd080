"""Two models on the same dataset split, and a dataset's evaluations ranked.

The comparison joins the two result sets on ``instance_id``. Agreement compares predicted
label *names*, since two models may order their classes differently. Two language models
of one kind are compared the same way on their ``correct`` verdicts (acc for multiple
choice, exact_match for generation); they agree where they pick the same choice or
generate the same output. Perplexity has no verdict to compare. McNemar's test looks
at the discordant pairs only (one right, the other wrong); the exact test is the two-sided
binomial test of those counts at p = ½, the χ² one has Edwards' continuity correction.
The accuracy difference's interval is a paired bootstrap: instances are resampled with
both verdicts, which is a multinomial draw over the four (a right?, b right?) cells.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from functions.results.language_models import COMPARED
from functions.results.metrics import bootstrap_weights, percentile_interval
from functions.results.resultset import ResultSet
from shared.errors import Invalid
from shared.metrics import CLASSIFICATION, divide
from shared.results_api import (
    AccuracyDifference,
    BootstrapSpec,
    Discordant,
    McNemar,
    higher_is_better,
)

_DIFFERENCE_BOOTSTRAP = BootstrapSpec(samples=2000, confidence=0.95, seed=0)


def binomial_two_sided_p(k: int, n: int) -> float:
    """Two-sided exact p-value of k successes in n trials at p = ½ (scipy's ``binomtest``)."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    if 2 * low == n:
        return 1.0
    i = np.arange(1, low + 1, dtype=np.float64)
    # log C(n, i) by a running sum of log((n - i + 1) / i); then log-sum-exp.
    log_terms = np.concatenate([[0.0], np.cumsum(np.log((n - i + 1) / i))]) - n * math.log(2)
    peak = log_terms.max()
    tail = math.exp(peak) * float(np.exp(log_terms - peak).sum())
    return min(1.0, 2 * tail)


def mcnemar(only_a: int, only_b: int) -> McNemar:
    """McNemar's test on the discordant counts (a right b wrong, a wrong b right)."""
    n = only_a + only_b
    chi2 = (abs(only_a - only_b) - 1) ** 2 / n if n else 0.0  # as statsmodels' mcnemar(exact=False)
    chi2_p = math.erfc(math.sqrt(chi2 / 2))  # survival function of χ² with 1 degree of freedom
    return McNemar(p_value=binomial_two_sided_p(only_a, n), chi2=chi2, chi2_p_value=chi2_p)


def accuracy_difference(cells: dict[tuple[bool, bool], int], spec: BootstrapSpec = _DIFFERENCE_BOOTSTRAP):
    """acc(a) − acc(b) over paired instances, with a paired percentile bootstrap interval."""
    keys = [(True, True), (True, False), (False, True), (False, False)]
    counts = np.array([cells.get(k, 0) for k in keys], dtype=np.int64)
    n = counts.sum()
    value = float(divide(counts[1] - counts[2], n))
    draws = [np.array([])]
    if n:
        draws = [divide(w[:, 1] - w[:, 2], n) for w in bootstrap_weights(counts, samples=spec.samples, seed=spec.seed)]
    return AccuracyDifference(value=value, interval=percentile_interval(np.concatenate(draws), spec))


def _comparable(a: ResultSet, b: ResultSet) -> str:
    """The metric the verdicts are of. Raises Invalid unless a and b can be compared."""
    if (a.family, a.kind) != (b.family, b.kind):
        raise Invalid(
            f"a is {a.describe()} and b {b.describe()}: only evaluations of one kind compare",
            details={"a": {"task": a.task, "kind": a.kind}, "b": {"task": b.task, "kind": b.kind}},
        )
    if a.family == CLASSIFICATION:
        return "accuracy"
    if a.kind not in COMPARED:
        raise Invalid(
            f"{a.describe()} has no per-instance verdict to compare; {', '.join(COMPARED)} evaluations compare",
            details={"kind": a.kind, "comparable": list(COMPARED)},
        )
    return COMPARED[a.kind][0]


def _agreeing(a: ResultSet, b: ResultSet, rows: dict[str, np.ndarray]) -> np.ndarray:
    """Per joined cell, whether a and b made the same prediction."""
    if a.family != CLASSIFICATION:
        return rows["same"].astype(bool)
    a.check_indices(rows["pa"])
    b.check_indices(rows["pb"])
    # b's class index -> a's index of the same name (a negative, unmatched index otherwise)
    position = {name: i for i, name in enumerate(a.label_names)}
    b_to_a = np.array([position.get(name, -1 - j) for j, name in enumerate(b.label_names)], dtype=np.int64)
    return rows["pa"].astype(np.int64) == b_to_a[rows["pb"].astype(np.int64)] if len(rows["n"]) else np.array([], bool)


def compare(a: ResultSet, b: ResultSet, *, limit: int) -> dict[str, Any]:
    """The figures of ``CompareResult`` that come from the predictions.

    ``a`` and ``b`` must be views of one connection. Lists at most ``limit`` instance ids
    per side, in instance id order.

    Raises:
        Invalid: a and b are of different families or kinds, or of one without a verdict.
    """
    assert a.con is b.con, "compare needs both result sets in one connection"
    metric = _comparable(a, b)
    joined = f"{a.view} AS x JOIN {b.view} AS y USING (instance_id)"
    if a.family == CLASSIFICATION:
        right_a, right_b, picks = "x.label = x.prediction", "y.label = y.prediction", "x.prediction AS pa, y.prediction AS pb"
    else:
        pick = COMPARED[a.kind or ""][1]
        right_a, right_b, picks = "x.correct", "y.correct", f"x.{pick} IS NOT DISTINCT FROM y.{pick} AS same"
    rows = a.execute(f"SELECT {right_a} AS ra, {right_b} AS rb, {picks}, count(*) AS n FROM {joined} GROUP BY ALL").fetchnumpy()
    verdicts: dict[tuple[bool, bool], int] = {}
    for ra, rb, n in zip(rows["ra"], rows["rb"], rows["n"]):
        verdicts[(bool(ra), bool(rb))] = verdicts.get((bool(ra), bool(rb)), 0) + int(n)
    same = _agreeing(a, b, rows)
    instances = int(rows["n"].sum())
    agree = int(rows["n"][same].sum()) if instances else 0
    both = verdicts.get((True, True), 0)

    totals = a.execute(f"SELECT (SELECT count(*) FROM {a.view}), (SELECT count(*) FROM {b.view})")
    [(total_a, total_b)] = totals.fetchall()

    def discordant(a_right: bool) -> Discordant:
        count = verdicts.get((a_right, not a_right), 0)
        ids: list[str] = []
        if limit and count:
            found = a.execute(
                f"SELECT instance_id FROM {joined} WHERE ({right_a}) = $ra"
                f" AND ({right_b}) = $rb ORDER BY instance_id LIMIT $limit",
                {"ra": a_right, "rb": not a_right, "limit": limit},
            )
            ids = [row[0] for row in found.fetchall()]
        return Discordant(count=count, instance_ids=ids, truncated=len(ids) < count)

    only_a, only_b = discordant(True), discordant(False)
    return {
        "instances": instances,
        "metric": metric,
        "unmatched": {"a": int(total_a) - instances, "b": int(total_b) - instances},
        "agreement": float(divide(agree, instances)),
        "both_correct": both,
        "both_wrong": verdicts.get((False, False), 0),
        "only_a_correct": only_a,
        "only_b_correct": only_b,
        # The registry's accuracy (acc, exact_match) on the paired instances: correct over instances.
        "accuracy_a": float(divide(both + only_a.count, instances)),
        "accuracy_b": float(divide(both + only_b.count, instances)),
        "accuracy_difference": accuracy_difference(verdicts),
        "mcnemar": mcnemar(only_a.count, only_b.count),
    }


def metric_value(summary: dict[str, Any] | None, metric: str) -> float | None:
    """A finite number from an evaluation's summary, or None."""
    value = (summary or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def rank(evaluations: Iterable[Any], metric: str) -> list[tuple[Any, float]]:
    """Evaluations that report ``metric`` (a summary key of ``shared.summaries.SUMMARIES``),
    best first by the metric's direction; ties go to the earlier evaluation."""
    scored = [(e, v) for e in evaluations if (v := metric_value(e.summary, metric)) is not None]
    sign = -1.0 if higher_is_better(metric) else 1.0
    return sorted(scored, key=lambda ev: (sign * ev[1], ev[0].created_at, ev[0].id))
