"""Classification metrics from stored predictions, defined as scikit-learn defines them.

Computed with numpy from the prediction columns alone (``label``, ``prediction``,
``topk_ids``, ``confidence``, ``label_score``; see ``shared.results``), so the same numbers can be recomputed
from a result set without the model. Per-class metrics cover the classes present in the
labels or the predictions (scikit-learn's default), with ``zero_division=0``.
"""

from __future__ import annotations

import math

import numpy as np

ECE_BINS = 15
LOG_LOSS_EPS = 1e-15


def confusion(labels: np.ndarray, predictions: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``matrix[i, j]``: instances of ``classes[i]`` predicted as ``classes[j]``."""
    position = np.full(int(max(classes.max(initial=0), labels.max(initial=0), predictions.max(initial=0))) + 1, -1)
    position[classes] = np.arange(len(classes))
    n = len(classes)
    flat = position[labels] * n + position[predictions]
    return np.bincount(flat, minlength=n * n).reshape(n, n)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Equal-width bins over (0, 1]: sum of |accuracy − mean confidence| weighted by bin size."""
    if len(confidence) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin b holds confidences in (edges[b], edges[b+1]]; 0 goes to the first bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    conf_sum = np.bincount(index, weights=confidence.astype(np.float64), minlength=bins)
    correct_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)
    return float(np.abs(correct_sum - conf_sum).sum() / len(confidence))


def classification_metrics(
    *,
    labels: np.ndarray,
    predictions: np.ndarray,
    top_k_ids: np.ndarray,
    confidence: np.ndarray,
    label_score: np.ndarray,
    label_names: list[str],
) -> dict:
    """The summary of an evaluation.

    Args:
        labels, predictions: class indices into ``label_names`` (the model's classes).
        top_k_ids: ``(n, k)`` class indices, best first.
        confidence: the probability of the top prediction.
        label_score: the probability the model gave the true label.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    n = len(labels)
    if n == 0:
        return {"instances": 0}
    correct = labels == predictions
    classes = np.union1d(labels, predictions)
    matrix = confusion(labels, predictions, classes)
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    weights = support / support.sum()

    top_k_ids = np.asarray(top_k_ids).reshape(n, -1)
    k = top_k_ids.shape[1]
    hits = np.cumsum(top_k_ids == labels[:, None], axis=1).astype(bool)  # hits[:, j]: label in top j+1
    scores = np.clip(np.asarray(label_score, dtype=np.float64), LOG_LOSS_EPS, 1.0)

    per_class = {
        label_names[c]: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, c in enumerate(classes)
    }
    return {
        "instances": n,
        "accuracy": float(correct.mean()),
        "top_k": k,
        "top_k_accuracy": float(hits[:, k - 1].mean()),
        # Top-5 needs at least 5 stored ids (config.top_k >= 5, the default).
        "top_5_accuracy": float(hits[:, 4].mean()) if k >= 5 else None,
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "precision_weighted": float((precision * weights).sum()),
        "recall_weighted": float((recall * weights).sum()),
        "f1_weighted": float((f1 * weights).sum()),
        "per_class": per_class,
        "confusion_matrix": {"labels": [label_names[c] for c in classes], "matrix": matrix.tolist()},
        "expected_calibration_error": expected_calibration_error(np.asarray(confidence), correct),
        "ece_bins": ECE_BINS,
        "log_loss": float(-np.log(scores).mean()),
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else math.nan
