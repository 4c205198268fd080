"""Further metrics from stored predictions, with bootstrap intervals, and no new inference.

Every metric asked for is one of ``shared.metrics``, a function of a few per-class totals,
which are sums over *cells*: the distinct (label, prediction, rank of the label in the
stored top-k) triples with their counts. DuckDB reduces the result set to those cells in
one scan; the rest is numpy on arrays as small as the number of cells.

The bootstrap resamples instances with replacement. Resampling n instances is the same,
in distribution, as drawing the cell counts from a multinomial(n, cell frequencies), so
each bootstrap sample costs O(cells), not O(n): 1,000 samples of a million rows take
milliseconds. Intervals are percentile intervals; a seed makes them reproducible.

A language model's result set has cells too (``language_models.cells``): its verdicts
with their counts, resampled the same way, or one cell per instance for perplexity, whose
resamples are uniform draws of instances (``bootstrap_rows``), bounded in number.

The definitions (scikit-learn's, lm-evaluation-harness's) are the registry's; this module
only gathers the cells.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from functions.results import language_models
from functions.results.resultset import ResultSet
from shared import metrics as registry
from shared.errors import Invalid
from shared.metrics import CLASSIFICATION, LANGUAGE_MODEL, ClassificationStatistics
from shared.results_api import (
    DEFAULT_METRICS,
    ROUTE_METRICS,
    BootstrapSpec,
    Interval,
    MetricSpec,
    MetricsRequest,
    MetricsResult,
    MetricValue,
)

# Bootstrap samples are drawn in blocks of about this many cells, to bound memory.
_BLOCK_CELLS = 2_000_000
# At most this many instance draws (instances x samples) for a bootstrap over one cell per
# instance (perplexity): 100,000 texts x 1,000 samples took 5.5 s on this 2-core machine.
MAX_ROW_DRAWS = 100_000_000


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

    def statistics(self, weights: np.ndarray, *, max_k: int) -> ClassificationStatistics:
        """The registry's statistics of these cells weighted by ``weights`` (one row per
        sample; the counts themselves for the point values)."""
        return ClassificationStatistics.of_cells(
            label=self.label, prediction=self.prediction, rank=self.rank, weights=weights, classes=self.classes, max_k=max_k
        )


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


def bootstrap_rows(n: int, *, samples: int, seed: int, block: int | None = None):
    """Yield blocks of bootstrap weights of ``n`` cells of one instance each.

    The distribution of ``bootstrap_weights(np.ones(n))`` (a multinomial with equal
    frequencies counts uniform draws of instances), drawn by counting those draws: on
    100,000 cells the metrics route's bootstrap took 5.5 s instead of 12.3 s.
    """
    rng = np.random.default_rng(seed)
    block = block or max(1, _BLOCK_CELLS // max(1, n))
    done = 0
    while done < samples:
        size = min(block, samples - done)
        drawn = rng.integers(0, n, size=(size, n)) + np.arange(size)[:, None] * n
        yield np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n)
        done += size


def percentile_interval(values: np.ndarray, spec: BootstrapSpec) -> Interval:
    """The central ``spec.confidence`` percentile interval of finite bootstrap values."""
    finite = values[np.isfinite(values)]
    low = high = None
    if finite.size:
        tail = (1 - spec.confidence) / 2
        low, high = (float(v) for v in np.quantile(finite, [tail, 1 - tail]))
    return Interval(low=low, high=high, confidence=spec.confidence, samples=spec.samples, seed=spec.seed)


def _value(spec: MetricSpec, statistics: Any) -> np.ndarray:
    """One value per sample; NaN where the metric is undefined."""
    return registry.value(spec.name, statistics, **spec.parameters())


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


@dataclass(frozen=True)
class Gathered:
    """A result set reduced to cells: the instances in each, and the registry's statistics
    of the cells under given weights (one row per sample). ``per_row``: one cell per
    instance, resampled by ``bootstrap_rows``."""

    counts: np.ndarray
    statistics: Callable[[np.ndarray], Any]
    per_row: bool = False

    def resamples(self, spec: BootstrapSpec) -> Iterator[np.ndarray]:
        """Blocks of bootstrap weights.

        Raises:
            Invalid: a per-instance bootstrap of more draws than ``MAX_ROW_DRAWS``.
        """
        if not self.per_row:
            return bootstrap_weights(self.counts, samples=spec.samples, seed=spec.seed)
        n = len(self.counts)
        if n * spec.samples > MAX_ROW_DRAWS:
            most = MAX_ROW_DRAWS // n
            raise Invalid(
                f"a bootstrap of {n:,} instances allows at most {most:,} samples"
                + ("" if most >= 100 else ", fewer than the 100 least; ask for no bootstrap"),
                details={"instances": n, "samples": spec.samples, "max_samples": most},
            )
        return bootstrap_rows(n, samples=spec.samples, seed=spec.seed)


def _classification_cells(result_set: ResultSet, specs: Sequence[MetricSpec]) -> Gathered:
    max_k = max((m.k for m in specs if m.k is not None), default=0)
    if max_k:
        available = stored_k(result_set)
        if max_k > available:
            raise Invalid(
                f"top_k_accuracy needs k <= {available}, the length of the stored top-k lists",
                details={"k": max_k, "stored_k": available},
            )
    found = cells(result_set, max_k=max_k)
    return Gathered(found.count, lambda weights: found.statistics(weights, max_k=max_k))


def _language_model_cells(result_set: ResultSet, specs: Sequence[MetricSpec]) -> Gathered:
    found = language_models.cells(result_set)
    return Gathered(found.count, found.statistics, per_row=found.per_row)


_GATHER: dict[str, Callable[[ResultSet, Sequence[MetricSpec]], Gathered]] = {
    CLASSIFICATION: _classification_cells,
    LANGUAGE_MODEL: _language_model_cells,
}
# The metrics a result set of each family offers, and those computed when none are named.
_OFFERED: dict[str, Callable[[ResultSet], tuple[str, ...]]] = {
    CLASSIFICATION: lambda _: ROUTE_METRICS[CLASSIFICATION],
    LANGUAGE_MODEL: language_models.metrics_of,
}
_DEFAULTS: dict[str, Callable[[ResultSet], tuple[str, ...]]] = {
    CLASSIFICATION: lambda _: DEFAULT_METRICS,
    LANGUAGE_MODEL: language_models.metrics_of,
}


def requested(result_set: ResultSet, request: MetricsRequest) -> list[MetricSpec]:
    """The metrics to compute: those named, or the result set's defaults when the request
    names none.

    Raises:
        Invalid: a metric of another family, or of another language-model kind.
    """
    if "metrics" not in request.model_fields_set:
        return [MetricSpec(name=name) for name in _DEFAULTS[result_set.family](result_set)]
    offered = _OFFERED[result_set.family](result_set)
    wrong = list(dict.fromkeys(m.name for m in request.metrics if m.name not in offered))
    if wrong:
        raise Invalid(
            f"{', '.join(wrong)}: not a metric of {result_set.describe()}; it has {', '.join(offered)}",
            details={"metrics": wrong, "available": list(offered)},
        )
    return list(request.metrics)


def compute(result_set: ResultSet, request: MetricsRequest) -> MetricsResult:
    """The requested metrics (and bootstrap intervals) from the stored predictions.

    Raises:
        Invalid: a metric the result set does not offer; a top-k metric for a k larger
            than the stored top-k lists; a per-instance bootstrap too large.
        ResultSetCorrupt: the stored files cannot be read.
    """
    specs = requested(result_set, request)
    gathered = _GATHER[result_set.family](result_set, specs)
    counts = gathered.counts
    point = gathered.statistics(counts)
    values = [_value(spec, point)[0] for spec in specs]
    intervals: list[Interval | None] = [None] * len(specs)
    if request.bootstrap is not None and counts.sum() > 0:
        spec = request.bootstrap
        draws: list[list[np.ndarray]] = [[] for _ in specs]
        for weights in gathered.resamples(spec):
            statistics = gathered.statistics(weights)
            for i, metric in enumerate(specs):
                draws[i].append(_value(metric, statistics))
        intervals = [percentile_interval(np.concatenate(d), spec) for d in draws]
    return MetricsResult(
        instances=int(counts.sum()),
        metrics=[
            MetricValue(name=spec.name, parameters=spec.parameters(), value=_finite(value), interval=interval)
            for spec, value, interval in zip(specs, values, intervals)
        ],
    )
