"""Every metric equals scikit-learn's (or, for calibration error, a plain reference loop)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from workers.metrics import classification_metrics, expected_calibration_error


def _case(seed: int, n: int = 500, classes: int = 7):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, classes - 1, n)  # the last class never occurs as a label
    probs[labels == 2, 3] += 5  # class 2 is often mistaken for 3…
    probs[:, 5] *= 0.01  # …and class 5 is never predicted
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")
    return labels, probs, order


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_scikit_learn_on_random_predictions(seed):
    labels, probs, order = _case(seed)
    predictions = order[:, 0]
    names = [f"class-{i}" for i in range(probs.shape[1])]
    got = classification_metrics(
        labels=labels,
        predictions=predictions,
        top_k_ids=order[:, :5],
        confidence=probs[np.arange(len(labels)), predictions],
        label_score=probs[np.arange(len(labels)), labels],
        label_names=names,
    )
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions), abs=1e-12)
    everything = np.arange(probs.shape[1])
    assert got["top_5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(labels, probs, k=5, labels=everything))
    assert got["log_loss"] == pytest.approx(skm.log_loss(labels, probs, labels=everything), rel=1e-9)
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(labels, predictions, average=average, zero_division=0)
        assert (got[f"precision_{average}"], got[f"recall_{average}"], got[f"f1_{average}"]) == pytest.approx((p, r, f), abs=1e-12)
    classes = np.union1d(labels, predictions)
    p, r, f, s = skm.precision_recall_fscore_support(labels, predictions, labels=classes, zero_division=0)
    assert list(got["per_class"]) == [names[c] for c in classes]
    for i, c in enumerate(classes):
        row = got["per_class"][names[c]]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p[i], r[i], f[i], s[i]), abs=1e-12)
    assert got["confusion_matrix"]["matrix"] == skm.confusion_matrix(labels, predictions, labels=classes).tolist()


def _ece_reference(confidence, correct, bins=15):
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [(c, k) for c, k in zip(confidence, correct) if (lo < c <= hi) or (b == 0 and c == 0)]
        if members:
            accuracy = sum(k for _, k in members) / len(members)
            mean_conf = sum(c for c, _ in members) / len(members)
            total += len(members) / len(confidence) * abs(accuracy - mean_conf)
    return total


def test_expected_calibration_error_matches_a_reference_loop():
    rng = np.random.default_rng(3)
    confidence = np.concatenate([rng.uniform(0, 1, 400), [0.0, 1.0, 1 / 15, 2 / 15]])
    correct = rng.uniform(0, 1, len(confidence)) < confidence
    assert expected_calibration_error(confidence, correct) == pytest.approx(_ece_reference(confidence, correct), abs=1e-12)
    assert expected_calibration_error(np.ones(10), np.ones(10, dtype=bool)) == 0.0
