"""Further metrics from stored predictions, with bootstrap intervals, and no new inference.

Every metric asked for is a function of a few per-class totals, which are sums over
*cells*: the distinct (label, prediction, rank of the label in the stored top-k) triples
with their counts. DuckDB reduces the result set to those cells in one scan; the rest is
numpy on arrays as small as the number of cells.

The bootstrap resamples instances with replacement. Resampling n instances is the same,
in distribution, as drawing the cell counts from a multinomial(n, cell frequencies), so
each bootstrap sample costs O(cells), not O(n): 1,000 samples of a million rows take
milliseconds. Intervals are percentile intervals; a seed makes them reproducible.

Definitions follow scikit-learn: precision, recall and F-beta average over the classes
present in the labels or the predictions (``zero_division=0``), balanced accuracy over
the classes present in the labels, Cohen's kappa unweighted, Matthews' correlation the
multiclass R_K (0 where undefined).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from functions.results.resultset import ResultSet
from shared.errors import Invalid
from shared.results_api import BootstrapSpec, Interval, MetricSpec, MetricsRequest, MetricsResult, MetricValue

# Bootstrap samples are drawn in blocks of about this many cells, to bound memory.
_BLOCK_CELLS = 2_000_000


@dataclass(frozen=True)
class Cells:
    """Distinct (label, prediction, rank) triples of a result set and their counts.

    ``rank`` is the 1-based position of the label among the first ``max_k`` stored top-k
    ids, 0 when it is not among them (or no top-k metric was asked for).
    """

    label: np.ndarray
    prediction: np.ndarray
    rank: np.ndarray
    count: np.ndarray
    classes: int


def stored_k(result_set: ResultSet) -> int:
    """The shortest stored top-k list: the largest k any instance can answer for."""
    [(shortest,)] = result_set.execute("SELECT coalesce(min(len(topk_ids)), 0) FROM {view}").fetchall()
    return int(shortest)


def cells(result_set: ResultSet, *, max_k: int = 0) -> Cells:
    """The result set reduced to cells in one scan (``max_k`` 0: no top-k ranks)."""
    if max_k:
        rank = "coalesce(list_position(topk_ids[1:$max_k], label), 0)"
        params = {"max_k": max_k}
    else:
        rank, params = "0", {}
    found = result_set.execute(
        f"SELECT label, prediction, {rank} AS rank, count(*) AS n FROM {{view}} GROUP BY ALL", params
    ).fetchnumpy()
    label = found["label"].astype(np.int64)
    prediction = found["prediction"].astype(np.int64)
    rank_of = found["rank"].astype(np.int64)
    result_set.check_indices(label, prediction)
    # GROUP BY returns cells in any order; a seeded bootstrap needs them in a fixed one.
    order = np.lexsort((rank_of, prediction, label))
    count = found["n"].astype(np.int64)
    return Cells(label[order], prediction[order], rank_of[order], count[order], len(result_set.label_names))


class _Totals:
    """Per-class totals of a batch of weightings of the cells (one row per sample)."""

    def __init__(self, cells: Cells, weights: np.ndarray):
        self.n = weights.sum(axis=1).astype(np.float64)
        self.support = _sum_by(weights, cells.label, cells.classes)
        self.predicted = _sum_by(weights, cells.prediction, cells.classes)
        diagonal = cells.label == cells.prediction
        self.tp = _sum_by(weights[:, diagonal], cells.label[diagonal], cells.classes)
        self._weights = weights
        self._rank = cells.rank

    def hits(self, k: int) -> np.ndarray:
        inside = (self._rank >= 1) & (self._rank <= k)
        return self._weights[:, inside].sum(axis=1).astype(np.float64)


def _sum_by(weights: np.ndarray, index: np.ndarray, size: int) -> np.ndarray:
    """``out[s, c]`` = sum of ``weights[s, j]`` over cells j with ``index[j] == c``."""
    out = np.zeros((weights.shape[0], size), dtype=np.float64)
    if index.size == 0:
        return out
    order = np.argsort(index, kind="stable")
    present, starts = np.unique(index[order], return_index=True)
    out[:, present] = np.add.reduceat(weights[:, order], starts, axis=1)
    return out


def _div(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _averaged(per_class: np.ndarray, t: _Totals, average: str | None, micro: np.ndarray) -> np.ndarray:
    """``average`` None is macro, MetricSpec's default (which it fills in)."""
    if average == "micro":
        return micro
    present = (t.support + t.predicted) > 0
    if average == "weighted":
        return _div((per_class * t.support).sum(axis=1), t.support.sum(axis=1))
    return _div((per_class * present).sum(axis=1), present.sum(axis=1))


def _metric(spec: MetricSpec, t: _Totals) -> np.ndarray:
    """One value per sample; NaN where the metric is undefined."""
    accuracy = _div(t.tp.sum(axis=1), t.n)
    if spec.name == "accuracy":
        return accuracy
    if spec.name == "top_k_accuracy":
        assert spec.k is not None  # MetricSpec requires it for top_k_accuracy
        return _div(t.hits(spec.k), t.n)
    if spec.name == "precision":
        return _averaged(_div(t.tp, t.predicted), t, spec.average, accuracy)
    if spec.name == "recall":
        return _averaged(_div(t.tp, t.support), t, spec.average, accuracy)
    if spec.name == "f_beta":
        b2 = (spec.beta or 1.0) ** 2  # MetricSpec fills in its default, 1
        # (1+β²)PR/(β²P+R) written in counts: 0 where a class is neither seen nor predicted.
        return _averaged(_div((1 + b2) * t.tp, b2 * t.support + t.predicted), t, spec.average, accuracy)
    if spec.name == "balanced_accuracy":
        seen = t.support > 0
        return _div((_div(t.tp, t.support) * seen).sum(axis=1), seen.sum(axis=1))
    if spec.name == "cohen_kappa":
        expected = _div((t.support * t.predicted).sum(axis=1), t.n**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(expected < 1, (accuracy - expected) / (1 - expected), np.nan)
    if spec.name == "matthews_corrcoef":
        n = t.n
        cov_ytyp = t.tp.sum(axis=1) * n - (t.support * t.predicted).sum(axis=1)
        cov_ypyp = n**2 - (t.predicted**2).sum(axis=1)
        cov_ytyt = n**2 - (t.support**2).sum(axis=1)
        return _div(cov_ytyp, np.sqrt(cov_ytyt * cov_ypyp))
    raise ValueError(f"unknown metric {spec.name}")


def bootstrap_weights(counts: np.ndarray, *, samples: int, seed: int, block: int | None = None):
    """Yield blocks of bootstrap cell counts: each row is one resample of all instances."""
    n = int(counts.sum())
    rng = np.random.default_rng(seed)
    p = counts / n
    block = block or max(1, _BLOCK_CELLS // max(1, len(counts)))
    done = 0
    while done < samples:
        size = min(block, samples - done)
        yield rng.multinomial(n, p, size=size)
        done += size


def percentile_interval(values: np.ndarray, spec: BootstrapSpec) -> Interval:
    """The central ``spec.confidence`` percentile interval of finite bootstrap values."""
    finite = values[np.isfinite(values)]
    low = high = None
    if finite.size:
        tail = (1 - spec.confidence) / 2
        low, high = (float(v) for v in np.quantile(finite, [tail, 1 - tail]))
    return Interval(low=low, high=high, confidence=spec.confidence, samples=spec.samples, seed=spec.seed)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def compute(result_set: ResultSet, request: MetricsRequest) -> MetricsResult:
    """The requested metrics (and bootstrap intervals) from the stored predictions.

    Raises:
        Invalid: a top-k metric for a k larger than the stored top-k lists.
        ResultSetCorrupt: the stored files cannot be read.
    """
    max_k = max((m.k for m in request.metrics if m.k is not None), default=0)
    if max_k:
        available = stored_k(result_set)
        if max_k > available:
            raise Invalid(
                f"top_k_accuracy needs k <= {available}, the length of the stored top-k lists",
                details={"k": max_k, "stored_k": available},
            )
    found = cells(result_set, max_k=max_k)
    point = _Totals(found, found.count[None, :])
    values = [_metric(spec, point)[0] for spec in request.metrics]
    intervals: list[Interval | None] = [None] * len(request.metrics)
    if request.bootstrap is not None and found.count.sum() > 0:
        spec = request.bootstrap
        draws: list[list[np.ndarray]] = [[] for _ in request.metrics]
        for weights in bootstrap_weights(found.count, samples=spec.samples, seed=spec.seed):
            totals = _Totals(found, weights)
            for i, metric in enumerate(request.metrics):
                draws[i].append(_metric(metric, totals))
        intervals = [percentile_interval(np.concatenate(d), spec) for d in draws]
    return MetricsResult(
        instances=int(found.count.sum()),
        metrics=[
            MetricValue(name=spec.name, parameters=spec.parameters(), value=_finite(value), interval=interval)
            for spec, value, interval in zip(request.metrics, values, intervals)
        ],
    )
