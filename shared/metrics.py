"""Every metric Assay reports, defined once.

A metric is declared here, where it is computed: its name, what it means, which way is
better, whether it has a value per class, which task family it belongs to and which
statistics it needs. The evaluate worker's summary, the per-class and further-metrics
routes, the leaderboard and ``GET /v1/tasks`` all look metrics up here, so a number has one
definition however it is asked for.

A metric is computed from *sufficient statistics*, never from rows. For classification
they are the per-class counts (true positives, support, predicted), the hits of the stored
top-k lists, the calibration bins and the summed negative log-likelihood. The evaluate
worker builds them with numpy over every stored row (``ClassificationStatistics.of_rows``),
the results routes from the few cells a DuckDB aggregate leaves (``of_cells``,
``of_confusion``), and the bootstrap from resampled cell counts. Every statistic has a
leading *sample* axis (one row for a point value, one per bootstrap resample), so a metric
is computed for a whole block of resamples in one call.

Definitions follow scikit-learn, and tests/workers/test_worker_metrics.py checks each one
against it: a per-class metric averaged ``macro`` is the mean over the classes present in
the labels or the predictions, ``weighted`` weighs classes by support, ``micro`` pools the
counts first; a division by zero is 0 (``zero_division=0``); NaN marks a value that is
undefined (Cohen's kappa of a single class, top-k beyond the stored k).

Language-model metrics (``acc``, ``acc_norm``, ``exact_match`` and the perplexities) are
lm-evaluation-harness's, computed from per-instance sums (``LanguageModelStatistics``):
each is a ratio of two sums over instances, so the same weighted-cells bootstrap applies.

Numpy only: the functions, the workers and the SDK (whose request models name metrics from
this registry) all import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

CLASSIFICATION = "classification"  # image and text classification share these metrics
LANGUAGE_MODEL = "language_model"  # text generation: lm-evaluation-harness's metrics
Direction = Literal["higher", "lower"]
AVERAGES = ("macro", "weighted", "micro")
ECE_BINS = 15
LOG_LOSS_EPS = 1e-15  # scikit-learn's clip before the log


def divide(numerator: Any, denominator: Any) -> np.ndarray:
    """``numerator / denominator`` elementwise, broadcast, and 0 where the denominator is 0:
    scikit-learn's ``zero_division=0``, and the one safe division every metric uses."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def sum_by(weights: np.ndarray, index: np.ndarray, size: int) -> np.ndarray:
    """``out[s, c]`` = sum of ``weights[s, j]`` over the cells j with ``index[j] == c``."""
    out = np.zeros((weights.shape[0], size), dtype=np.float64)
    if index.size == 0:
        return out
    order = np.argsort(index, kind="stable")
    present, starts = np.unique(index[order], return_index=True)
    out[:, present] = np.add.reduceat(weights[:, order], starts, axis=1)
    return out


# --- classification statistics ------------------------------------------------------------


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    """The ``classes x classes`` count matrix (rows: true class, columns: predicted).

    Raises:
        ValueError: a class index outside ``0..classes-1``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    for values in (labels, predictions):
        if values.size and (values.min() < 0 or values.max() >= classes):
            bad = values.min() if values.min() < 0 else values.max()
            raise ValueError(f"class index {int(bad)} is outside the {classes} classes")
    return np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)


@dataclass(frozen=True)
class ClassificationStatistics:
    """What every classification metric is computed from; arrays lead with the sample axis.

    ``hits[:, j]``: instances whose label is among the first j+1 stored top-k ids.
    ``bin_confidence``/``bin_correct``: per equal-width confidence bin over (0, 1] (0 goes to
    the first), the summed confidence and the correct instances. ``neg_log_likelihood``: the
    sum of −log(max(label score, 1e-15)). Each is None where its source was not read.
    """

    n: np.ndarray  # (samples,)
    tp: np.ndarray  # (samples, classes)
    support: np.ndarray  # (samples, classes): instances of each true class
    predicted: np.ndarray  # (samples, classes): instances predicted as each class
    hits: np.ndarray | None = None  # (samples, stored k)
    bin_confidence: np.ndarray | None = None  # (samples, bins)
    bin_correct: np.ndarray | None = None  # (samples, bins)
    neg_log_likelihood: np.ndarray | None = None  # (samples,)

    @property
    def stored_k(self) -> int:
        return 0 if self.hits is None else int(self.hits.shape[1])

    @property
    def present(self) -> np.ndarray:
        """Classes seen in the labels or the predictions: what a macro average covers."""
        return (self.support + self.predicted) > 0

    def pooled(self) -> ClassificationStatistics:
        """The counts summed over classes (one class): what a micro average computes on."""
        sums = {name: getattr(self, name).sum(axis=-1, keepdims=True) for name in ("tp", "support", "predicted")}
        return dataclasses.replace(self, **sums)

    @classmethod
    def of_confusion(cls, matrix: np.ndarray) -> ClassificationStatistics:
        """One sample from a ``C x C`` count matrix (rows: true class, columns: predicted)."""
        matrix = np.asarray(matrix, dtype=np.float64)
        return cls(
            n=np.array([matrix.sum()]),
            tp=np.diag(matrix)[None, :],
            support=matrix.sum(axis=1)[None, :],
            predicted=matrix.sum(axis=0)[None, :],
        )

    @classmethod
    def of_cells(
        cls,
        *,
        label: np.ndarray,
        prediction: np.ndarray,
        rank: np.ndarray,
        weights: np.ndarray,
        classes: int,
        max_k: int = 0,
    ) -> ClassificationStatistics:
        """From cells: distinct (label, prediction, rank) triples, ``rank`` the 1-based
        position of the label among the first ``max_k`` stored ids (0: not among them), and
        ``weights[s, j]`` the instances of cell j in sample s."""
        weights = np.atleast_2d(weights)
        diagonal = label == prediction
        hits = np.cumsum(sum_by(weights, rank, max_k + 1)[:, 1:], axis=1) if max_k else None
        return cls(
            n=weights.sum(axis=1).astype(np.float64),
            tp=sum_by(weights[:, diagonal], label[diagonal], classes),
            support=sum_by(weights, label, classes),
            predicted=sum_by(weights, prediction, classes),
            hits=hits,
        )

    @classmethod
    def of_rows(
        cls,
        *,
        labels: np.ndarray,
        predictions: np.ndarray,
        classes: int,
        top_k_ids: np.ndarray | None = None,
        confidence: np.ndarray | None = None,
        label_score: np.ndarray | None = None,
        bins: int = ECE_BINS,
    ) -> ClassificationStatistics:
        """One sample from every row: class indices below ``classes``, ``top_k_ids`` of
        shape ``(n, k)`` best first, the top prediction's ``confidence`` and the probability
        the model gave the true label (``label_score``).

        Raises:
            ValueError: a class index outside ``0..classes-1``.
        """
        labels = np.asarray(labels, dtype=np.int64)
        predictions = np.asarray(predictions, dtype=np.int64)
        found = cls.of_confusion(confusion_counts(labels, predictions, classes))
        extra: dict[str, np.ndarray] = {}
        if top_k_ids is not None:
            top = np.asarray(top_k_ids).reshape(len(labels), -1) if len(labels) else np.zeros((0, 1), np.int64)
            inside = np.cumsum(top == labels[:, None], axis=1) > 0  # inside[i, j]: label among the first j+1
            extra["hits"] = inside.sum(axis=0, dtype=np.float64)[None, :]
        if confidence is not None:
            confidence = np.asarray(confidence, dtype=np.float64)
            edges = np.linspace(0.0, 1.0, bins + 1)
            # Bin b holds confidences in (edges[b], edges[b+1]]; 0 goes to the first bin.
            index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
            extra["bin_confidence"] = np.bincount(index, weights=confidence, minlength=bins)[None, :]
            correct = (labels == predictions).astype(np.float64)
            extra["bin_correct"] = np.bincount(index, weights=correct, minlength=bins)[None, :]
        if label_score is not None:
            scores = np.clip(np.asarray(label_score, dtype=np.float64), LOG_LOSS_EPS, 1.0)
            extra["neg_log_likelihood"] = np.array([-np.log(scores).sum()])
        return dataclasses.replace(found, **extra)


# --- the registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One metric. ``compute(statistics, **parameters)`` gives one value per sample, or one
    per sample and class when ``per_class`` (then ``average`` is a parameter too)."""

    name: str
    family: str
    description: str
    direction: Direction
    per_class: bool
    parameters: tuple[str, ...]  # besides ``average``
    # statistics: "counts", "ranks", "calibration", "likelihood" (classification);
    # "choices", "generation", "text" (language models: the evaluation's kind)
    needs: frozenset[str]
    compute: Callable[..., np.ndarray]

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher"

    def takes(self) -> tuple[str, ...]:
        """Every parameter, ``average`` included where it applies."""
        return (*self.parameters, "average") if self.per_class else self.parameters


METRICS: dict[str, Metric] = {}
# What the results routes derive from a stored result set's cells (DuckDB aggregates).
FROM_PREDICTIONS = frozenset({"counts", "ranks"})


def metric(
    name: str,
    *,
    description: str,
    family: str = CLASSIFICATION,
    direction: Direction = "higher",
    per_class: bool = False,
    parameters: tuple[str, ...] = (),
    needs: Iterable[str] = ("counts",),
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Register the decorated computation as the metric ``name``."""

    def register(compute: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is defined twice")
        METRICS[name] = Metric(name, family, description, direction, per_class, parameters, frozenset(needs), compute)
        return compute

    return register


@metric("accuracy", description="Fraction of instances whose top prediction is the label.")
def _accuracy(s: ClassificationStatistics) -> np.ndarray:
    return divide(s.tp.sum(axis=-1), s.n)


@metric(
    "top_k_accuracy",
    description="Fraction of instances whose label is among the k best predictions.",
    parameters=("k",),
    needs=("ranks",),
)
def _top_k_accuracy(s: ClassificationStatistics, *, k: int) -> np.ndarray:
    if s.hits is None or not 1 <= k <= s.stored_k:
        return np.full(s.n.shape, np.nan)
    return divide(s.hits[:, k - 1], s.n)


@metric("precision", description="Of the instances predicted as a class, the fraction that are of it.", per_class=True)
def _precision(s: ClassificationStatistics) -> np.ndarray:
    return divide(s.tp, s.predicted)


@metric("recall", description="Of the instances of a class, the fraction predicted as it.", per_class=True)
def _recall(s: ClassificationStatistics) -> np.ndarray:
    return divide(s.tp, s.support)


@metric(
    "f_beta",
    description="Weighted harmonic mean of precision and recall, recall beta times as important.",
    per_class=True,
    parameters=("beta",),
)
def _f_beta(s: ClassificationStatistics, *, beta: float) -> np.ndarray:
    b2 = beta**2
    # (1+β²)PR/(β²P+R) written in counts: 0 where a class is neither seen nor predicted.
    return divide((1 + b2) * s.tp, b2 * s.support + s.predicted)


@metric("f1", description="Harmonic mean of precision and recall (F-beta with beta 1).", per_class=True)
def _f1(s: ClassificationStatistics) -> np.ndarray:
    return _f_beta(s, beta=1.0)


@metric("balanced_accuracy", description="Mean recall over the classes present in the labels.")
def _balanced_accuracy(s: ClassificationStatistics) -> np.ndarray:
    seen = s.support > 0
    return divide((divide(s.tp, s.support) * seen).sum(axis=-1), seen.sum(axis=-1))


@metric("cohen_kappa", description="Agreement of predictions and labels beyond chance (unweighted Cohen's kappa).")
def _cohen_kappa(s: ClassificationStatistics) -> np.ndarray:
    observed = divide(s.tp.sum(axis=-1), s.n)
    expected = divide((s.support * s.predicted).sum(axis=-1), s.n**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected < 1, (observed - expected) / (1 - expected), np.nan)


@metric(
    "matthews_corrcoef",
    description="Correlation of predictions and labels (multiclass Matthews R_K, 0 where undefined).",
)
def _matthews_corrcoef(s: ClassificationStatistics) -> np.ndarray:
    cov_ytyp = s.tp.sum(axis=-1) * s.n - (s.support * s.predicted).sum(axis=-1)
    cov_ypyp = s.n**2 - (s.predicted**2).sum(axis=-1)
    cov_ytyt = s.n**2 - (s.support**2).sum(axis=-1)
    return divide(cov_ytyp, np.sqrt(cov_ytyt * cov_ypyp))


@metric(
    "expected_calibration_error",
    direction="lower",
    needs=("calibration",),
    description=f"Mean gap between confidence and accuracy over {ECE_BINS} equal-width confidence bins, weighted by bin size.",
)
def _expected_calibration_error(s: ClassificationStatistics) -> np.ndarray:
    if s.bin_confidence is None or s.bin_correct is None:
        return np.full(s.n.shape, np.nan)
    return divide(np.abs(s.bin_correct - s.bin_confidence).sum(axis=-1), s.n)


@metric(
    "log_loss",
    direction="lower",
    needs=("likelihood",),
    description="Mean negative log of the probability given to the label (cross-entropy).",
)
def _log_loss(s: ClassificationStatistics) -> np.ndarray:
    if s.neg_log_likelihood is None:
        return np.full(s.n.shape, np.nan)
    return divide(s.neg_log_likelihood, s.n)


# --- language-model statistics and metrics --------------------------------------------------


@dataclass(frozen=True)
class LanguageModelStatistics:
    """What every language-model metric is computed from: sums over instances, each of shape
    ``(samples,)``, None where the evaluation's kind does not produce it.

    ``hits``/``hits_norm``: multiple-choice instances whose pick by log-likelihood (by it
    per character) is the answer. ``matches``: generations that match a target.
    ``loglikelihood``/``words``/``bytes``: perplexity's summed log-likelihood (nats) and the
    texts' word and UTF-8 byte counts. Every metric is a ratio of two of these sums, so a
    bootstrap resample is a weighted sum, as for classification.
    """

    n: np.ndarray
    hits: np.ndarray | None = None
    hits_norm: np.ndarray | None = None
    matches: np.ndarray | None = None
    loglikelihood: np.ndarray | None = None
    words: np.ndarray | None = None
    bytes: np.ndarray | None = None

    SUMS: ClassVar[tuple[str, ...]] = ("hits", "hits_norm", "matches", "loglikelihood", "words", "bytes")

    @classmethod
    def of_cells(cls, values: dict[str, np.ndarray], weights: np.ndarray) -> LanguageModelStatistics:
        """From cells: ``values[name][j]`` the value of sum ``name`` in cell j (an instance,
        or instances alike), ``weights[s, j]`` the instances of cell j in sample s. Names
        not in ``values`` stay None."""
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        unknown = set(values) - set(cls.SUMS)
        if unknown:
            raise ValueError(f"not language-model statistics: {sorted(unknown)}")
        sums = {name: weights @ np.asarray(v, dtype=np.float64) for name, v in values.items()}
        return cls(n=weights.sum(axis=1), **sums)

    @classmethod
    def of_rows(cls, **values: np.ndarray) -> LanguageModelStatistics:
        """One sample from per-instance values (booleans count as 0/1)."""
        count = len(next(iter(values.values()))) if values else 0
        return cls.of_cells(values, np.ones((1, count)))


def _ratio(numerator: np.ndarray | None, denominator: np.ndarray | None) -> np.ndarray | None:
    if numerator is None or denominator is None:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _or_nan(values: np.ndarray | None, s: LanguageModelStatistics) -> np.ndarray:
    return np.full(s.n.shape, np.nan) if values is None else values


@metric(
    "acc",
    family=LANGUAGE_MODEL,
    needs=("choices",),
    description="Multiple choice: fraction of instances whose most likely choice (summed log-likelihood) is the answer.",
)
def _acc(s: LanguageModelStatistics) -> np.ndarray:
    return _or_nan(_ratio(s.hits, s.n), s)


@metric(
    "acc_norm",
    family=LANGUAGE_MODEL,
    needs=("choices",),
    description="Multiple choice: as acc, each choice's log-likelihood divided by its length in characters.",
)
def _acc_norm(s: LanguageModelStatistics) -> np.ndarray:
    return _or_nan(_ratio(s.hits_norm, s.n), s)


@metric(
    "exact_match",
    family=LANGUAGE_MODEL,
    needs=("generation",),
    description="Generation: fraction of instances whose output (filtered and normalised as configured) equals a target.",
)
def _exact_match(s: LanguageModelStatistics) -> np.ndarray:
    return _or_nan(_ratio(s.matches, s.n), s)


@metric(
    "word_perplexity",
    family=LANGUAGE_MODEL,
    direction="lower",
    needs=("text",),
    description="Perplexity: exp of the negative log-likelihood per word, over all texts.",
)
def _word_perplexity(s: LanguageModelStatistics) -> np.ndarray:
    per_word = _ratio(None if s.loglikelihood is None else -s.loglikelihood, s.words)
    return _or_nan(None if per_word is None else np.exp(per_word), s)


@metric(
    "byte_perplexity",
    family=LANGUAGE_MODEL,
    direction="lower",
    needs=("text",),
    description="Perplexity: exp of the negative log-likelihood per UTF-8 byte, over all texts.",
)
def _byte_perplexity(s: LanguageModelStatistics) -> np.ndarray:
    per_byte = _ratio(None if s.loglikelihood is None else -s.loglikelihood, s.bytes)
    return _or_nan(None if per_byte is None else np.exp(per_byte), s)


@metric(
    "bits_per_byte",
    family=LANGUAGE_MODEL,
    direction="lower",
    needs=("text",),
    description="Perplexity: negative log-likelihood in bits per UTF-8 byte, over all texts.",
)
def _bits_per_byte(s: LanguageModelStatistics) -> np.ndarray:
    per_byte = _ratio(None if s.loglikelihood is None else -s.loglikelihood, s.bytes)
    return _or_nan(None if per_byte is None else per_byte / np.log(2), s)


def value(name: str, statistics: Any, **parameters: Any) -> np.ndarray:
    """One value per sample of the metric ``name``; a per-class metric is averaged over
    classes by ``average`` (default ``macro``). NaN where the metric is undefined.

    Raises:
        KeyError: no metric is called ``name``.
    """
    found = METRICS[name]
    if not found.per_class:
        return found.compute(statistics, **parameters)
    average = parameters.pop("average", None) or "macro"
    if average == "micro":
        return found.compute(statistics.pooled(), **parameters)[:, 0]
    values = found.compute(statistics, **parameters)
    if average == "weighted":
        return divide((values * statistics.support).sum(axis=-1), statistics.support.sum(axis=-1))
    if average == "macro":
        present = statistics.present
        return divide((values * present).sum(axis=-1), present.sum(axis=-1))
    raise ValueError(f"average must be one of {AVERAGES}, not {average!r}")


def per_class(name: str, statistics: Any, **parameters: Any) -> np.ndarray:
    """``(samples, classes)`` values of a per-class metric, every class (absent ones 0)."""
    found = METRICS[name]
    if not found.per_class:
        raise ValueError(f"{name} has no per-class values")
    return found.compute(statistics, **parameters)


def names(family: str | None = None, *, needs_within: frozenset[str] | None = None) -> list[str]:
    """Registered metric names in declaration order: of one family, and computable from
    ``needs_within`` statistics when given."""
    return [
        m.name
        for m in METRICS.values()
        if (family is None or m.family == family) and (needs_within is None or m.needs <= needs_within)
    ]


def describe(metric_names: Iterable[str]) -> list[dict[str, Any]]:
    """What ``GET /v1/tasks`` shows of each metric. Raises KeyError on an unknown name."""
    return [
        {
            "name": m.name,
            "description": m.description,
            "direction": m.direction,
            "per_class": m.per_class,
            "parameters": list(m.takes()),
        }
        for m in (METRICS[n] for n in metric_names)
    ]
