"""scikit-learn's (or a plain loop's) value of every registered metric, for the tests that
check ``shared.metrics`` from rows (tests/workers/test_worker_metrics.py) and from a stored
result set (tests/results/test_metrics.py).

``REFERENCES`` maps each metric name to the parameter sets to try and a function of
``(case, **parameters)``; a metric registered without an entry here fails
``test_every_metric_has_a_reference``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as sk

from shared.metrics import ECE_BINS


@dataclass
class Case:
    """Predictions with every class's probability: what scikit-learn needs."""

    labels: np.ndarray
    scores: np.ndarray  # (n, classes)

    @property
    def order(self) -> np.ndarray:
        return np.argsort(-self.scores, axis=1, kind="stable")

    @property
    def predictions(self) -> np.ndarray:
        return self.order[:, 0]

    @property
    def confidence(self) -> np.ndarray:
        return self.scores[np.arange(len(self.labels)), self.predictions]

    @property
    def label_score(self) -> np.ndarray:
        return self.scores[np.arange(len(self.labels)), self.labels]

    @property
    def classes(self) -> np.ndarray:
        return np.arange(self.scores.shape[1])


def ece_reference(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error by a plain loop over (lo, hi] bins (0 in the first)."""
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [(c, k) for c, k in zip(confidence, correct) if (lo < c <= hi) or (b == 0 and c == 0)]
        if members:
            accuracy = sum(k for _, k in members) / len(members)
            mean_conf = sum(c for c, _ in members) / len(members)
            total += len(members) / len(confidence) * abs(accuracy - mean_conf)
    return total


def _averaged(score: Callable[..., float], **fixed: Any) -> Callable[..., float]:
    def reference(c: Case, *, average: str, **parameters: Any) -> float:
        return score(c.labels, c.predictions, average=average, zero_division=0, **fixed, **parameters)

    return reference


AVERAGED = [{"average": a} for a in ("macro", "weighted", "micro")]
# name -> (parameter sets to try, reference)
REFERENCES: dict[str, tuple[list[dict[str, Any]], Callable[..., float]]] = {
    "accuracy": ([{}], lambda c: sk.accuracy_score(c.labels, c.predictions)),
    "top_k_accuracy": (
        [{"k": 1}, {"k": 2}, {"k": 5}],
        lambda c, k: sk.top_k_accuracy_score(c.labels, c.scores, k=k, labels=c.classes),
    ),
    "precision": (AVERAGED, _averaged(sk.precision_score)),
    "recall": (AVERAGED, _averaged(sk.recall_score)),
    "f1": (AVERAGED, _averaged(sk.f1_score)),
    "f_beta": (
        [{"beta": b, **a} for b in (0.5, 1.0, 2.0) for a in AVERAGED],
        _averaged(sk.fbeta_score),
    ),
    "balanced_accuracy": ([{}], lambda c: sk.balanced_accuracy_score(c.labels, c.predictions)),
    "cohen_kappa": ([{}], lambda c: sk.cohen_kappa_score(c.labels, c.predictions)),
    "matthews_corrcoef": ([{}], lambda c: sk.matthews_corrcoef(c.labels, c.predictions)),
    "expected_calibration_error": ([{}], lambda c: ece_reference(c.confidence, c.labels == c.predictions)),
    "log_loss": ([{}], lambda c: sk.log_loss(c.labels, c.scores, labels=c.classes)),
}
# Per class over every class of the model: name -> (parameter sets, reference).
PER_CLASS: dict[str, tuple[list[dict[str, Any]], Callable[..., np.ndarray]]] = {
    "precision": (
        [{}],
        lambda c: sk.precision_score(c.labels, c.predictions, labels=c.classes, average=None, zero_division=0),
    ),
    "recall": (
        [{}],
        lambda c: sk.recall_score(c.labels, c.predictions, labels=c.classes, average=None, zero_division=0),
    ),
    "f1": ([{}], lambda c: sk.f1_score(c.labels, c.predictions, labels=c.classes, average=None, zero_division=0)),
    "f_beta": (
        [{"beta": 0.5}, {"beta": 2.0}],
        lambda c, beta: sk.fbeta_score(c.labels, c.predictions, beta=beta, labels=c.classes, average=None, zero_division=0),
    ),
}
