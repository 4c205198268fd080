"""Every registered metric equals scikit-learn's (or, for calibration error, a plain
reference loop's), computed from rows as the evaluate worker computes them; and the summary
built from the registry reports each of them under its key."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from shared import metrics
from shared.metrics import METRICS, ClassificationStatistics
from shared.summaries import STORED_K, SUMMARIES, ClassificationSummary, classification_summary, report
from tests.metric_references import PER_CLASS, REFERENCES, Case, ece_reference


def _case(seed: int, n: int = 500, classes: int = 7) -> Case:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, classes - 1, n)  # the last class never occurs as a label
    probs[labels == 2, 3] += 5  # class 2 is often mistaken for 3…
    probs[:, 5] *= 0.01  # …and class 5 is never predicted
    probs /= probs.sum(axis=1, keepdims=True)
    return Case(labels=labels, scores=probs)


def _statistics(case: Case, k: int = 5) -> ClassificationStatistics:
    return ClassificationStatistics.of_rows(
        labels=case.labels,
        predictions=case.predictions,
        classes=case.scores.shape[1],
        top_k_ids=case.order[:, :k],
        confidence=case.confidence,
        label_score=case.label_score,
    )


def test_every_metric_has_a_reference():
    """A metric registered without a reference check here fails this test."""
    assert set(metrics.names(metrics.CLASSIFICATION)) == set(REFERENCES)
    assert set(metrics.names(metrics.LANGUAGE_MODEL)) == set(LANGUAGE_MODEL_REFERENCES)
    assert set(METRICS) == set(REFERENCES) | set(LANGUAGE_MODEL_REFERENCES)
    assert {name for name, m in METRICS.items() if m.per_class} == set(PER_CLASS)
    for name, (parameter_sets, _) in REFERENCES.items():
        assert all(set(p) == set(METRICS[name].takes()) for p in parameter_sets), name


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", metrics.names(metrics.CLASSIFICATION))
def test_metric_equals_its_reference(seed, name):
    case = _case(seed)
    statistics = _statistics(case)
    parameter_sets, reference = REFERENCES[name]
    for parameters in parameter_sets:
        got = metrics.value(name, statistics, **parameters)
        assert got.shape == (1,)
        assert got[0] == pytest.approx(reference(case, **parameters), rel=1e-9, abs=1e-12), parameters


# lm-evaluation-harness's definitions, written as it writes them: ``mean`` of per-instance
# hits, and ``weighted_perplexity`` / ``bits_per_byte`` of (log-likelihood, weight) pairs.
LANGUAGE_MODEL_REFERENCES = {
    "acc": lambda rows: sum(r["hit"] for r in rows) / len(rows),
    "acc_norm": lambda rows: sum(r["hit_norm"] for r in rows) / len(rows),
    "exact_match": lambda rows: sum(r["match"] for r in rows) / len(rows),
    "word_perplexity": lambda rows: math.exp(-sum(r["ll"] for r in rows) / sum(r["words"] for r in rows)),
    "byte_perplexity": lambda rows: math.exp(-sum(r["ll"] for r in rows) / sum(r["bytes"] for r in rows)),
    "bits_per_byte": lambda rows: -sum(r["ll"] for r in rows) / sum(r["bytes"] for r in rows) / math.log(2),
}
_SUMS = {"hit": "hits", "hit_norm": "hits_norm", "match": "matches", "ll": "loglikelihood", "words": "words", "bytes": "bytes"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_language_model_metrics_equal_lm_evals_definitions(seed):
    rng = np.random.default_rng(seed)
    n = 300
    rows = [
        {
            "hit": bool(rng.random() < 0.6),
            "hit_norm": bool(rng.random() < 0.5),
            "match": bool(rng.random() < 0.3),
            "ll": float(-rng.uniform(10, 400)),
            "words": int(rng.integers(3, 90)),
            "bytes": int(rng.integers(20, 600)),
        }
        for _ in range(n)
    ]
    statistics = metrics.LanguageModelStatistics.of_rows(**{_SUMS[k]: np.array([r[k] for r in rows]) for k in _SUMS})
    for name, reference in LANGUAGE_MODEL_REFERENCES.items():
        assert metrics.value(name, statistics)[0] == pytest.approx(reference(rows), rel=1e-12), name
    # A kind's statistics leave the other kinds' metrics undefined, never zero.
    only_choices = metrics.LanguageModelStatistics.of_rows(hits=np.ones(3), hits_norm=np.zeros(3))
    assert metrics.value("acc", only_choices)[0] == 1.0 and metrics.value("acc_norm", only_choices)[0] == 0.0
    assert all(np.isnan(metrics.value(name, only_choices)[0]) for name in ("exact_match", "bits_per_byte", "word_perplexity"))
    # A bootstrap block: one row of weights per sample, the same definitions.
    weights = rng.multinomial(n, np.full(n, 1 / n), size=4).astype(float)
    block = metrics.LanguageModelStatistics.of_cells({_SUMS[k]: np.array([r[k] for r in rows], float) for k in _SUMS}, weights)
    for s in range(4):
        resampled = [row for row, w in zip(rows, weights[s]) for _ in range(int(w))]
        for name, reference in LANGUAGE_MODEL_REFERENCES.items():
            assert metrics.value(name, block)[s] == pytest.approx(reference(resampled), rel=1e-9), (name, s)


def test_the_language_model_summary_reports_its_kinds_metrics():
    from shared.summaries import language_model_summary

    summary = language_model_summary(
        kind="perplexity", truncated=0, loglikelihood=np.array([-10.0, -30.0]), words=np.array([4, 6]), bytes=np.array([20, 30])
    ).model_dump()
    assert summary["instances"] == 2 and summary["kind"] == "perplexity"
    assert summary["word_perplexity"] == pytest.approx(math.exp(4.0)) and summary["bits_per_byte"] == pytest.approx(
        0.8 / math.log(2)
    )
    assert summary["acc"] is None and summary["exact_match"] is None


@pytest.mark.parametrize("name", list(PER_CLASS))
def test_per_class_values_equal_the_reference_for_every_class(name):
    case = _case(4)
    parameter_sets, reference = PER_CLASS[name]
    for parameters in parameter_sets:
        got = metrics.per_class(name, _statistics(case), **parameters)
        np.testing.assert_allclose(got[0], reference(case, **parameters), rtol=0, atol=1e-12)


def test_the_summary_reports_every_key_as_its_metric_and_the_per_class_table():
    case = _case(0)
    names = [f"class-{i}" for i in range(case.scores.shape[1])]
    summary = classification_summary(
        labels=case.labels,
        predictions=case.predictions,
        top_k_ids=case.order[:, :5],
        confidence=case.confidence,
        label_score=case.label_score,
        label_names=names,
    ).model_dump()
    for reported in SUMMARIES[metrics.CLASSIFICATION]:
        parameters = {k: 5 if v == STORED_K else v for k, v in reported.parameters.items()}
        _, reference = REFERENCES[reported.metric]
        assert summary[reported.key] == pytest.approx(reference(case, **parameters), rel=1e-9, abs=1e-12), reported.key
    assert (summary["instances"], summary["top_k"], summary["ece_bins"]) == (500, 5, metrics.ECE_BINS)
    y, p = case.labels, case.predictions
    classes = np.union1d(y, p)  # the classes present in the labels or the predictions
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, p, labels=classes, zero_division=0)
    assert list(summary["per_class"]) == [names[c] for c in classes]
    for i, c in enumerate(classes):
        row = summary["per_class"][names[c]]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i]), abs=1e-12
        )
    assert summary["confusion_matrix"]["labels"] == [names[c] for c in classes]
    assert summary["confusion_matrix"]["matrix"] == skm.confusion_matrix(y, p, labels=classes).tolist()


def test_top_k_beyond_the_stored_ids_and_undefined_values_are_null():
    case = _case(1)
    names = [f"c{i}" for i in range(case.scores.shape[1])]
    one_class = Case(labels=np.zeros(20, dtype=int), scores=np.tile([0.9, 0.1], (20, 1)))
    summary = classification_summary(
        labels=case.labels,
        predictions=case.predictions,
        top_k_ids=case.order[:, :3],
        confidence=case.confidence,
        label_score=case.label_score,
        label_names=names,
    )
    assert summary.top_k == 3 and summary.top_5_accuracy is None
    assert summary.top_k_accuracy == pytest.approx(skm.top_k_accuracy_score(case.labels, case.scores, k=3, labels=case.classes))
    kappa = metrics.value("cohen_kappa", _statistics(one_class, k=2))
    assert np.isnan(kappa[0])  # scikit-learn: nan
    assert report(_statistics(one_class, k=2))["cohen_kappa"] is None


def test_an_empty_summary_and_indices_outside_the_classes():
    empty = classification_summary(
        labels=np.zeros(0, int),
        predictions=np.zeros(0, int),
        top_k_ids=np.zeros((0, 5), int),
        confidence=np.zeros(0),
        label_score=np.zeros(0),
        label_names=["a", "b"],
    )
    assert empty.instances == 0 and empty.accuracy is None
    with pytest.raises(ValueError, match="outside the 2 classes"):
        ClassificationStatistics.of_rows(labels=np.array([0, 2]), predictions=np.array([0, 1]), classes=2)


def test_expected_calibration_error_matches_a_reference_loop():
    rng = np.random.default_rng(3)
    confidence = np.concatenate([rng.uniform(0, 1, 400), [0.0, 1.0, 1 / 15, 2 / 15]])
    correct = rng.uniform(0, 1, len(confidence)) < confidence
    labels = np.zeros(len(confidence), dtype=int)
    statistics = ClassificationStatistics.of_rows(
        labels=labels, predictions=np.where(correct, 0, 1), classes=2, confidence=confidence
    )
    got = metrics.value("expected_calibration_error", statistics)[0]
    assert got == pytest.approx(ece_reference(confidence, correct), abs=1e-12)
    perfect = ClassificationStatistics.of_rows(labels=labels[:10], predictions=labels[:10], classes=2, confidence=np.ones(10))
    assert metrics.value("expected_calibration_error", perfect)[0] == 0.0


def test_the_summary_model_has_a_field_per_reported_key_and_loads_old_summaries():
    for reported in SUMMARIES[metrics.CLASSIFICATION]:
        field = ClassificationSummary.model_fields[reported.key]
        assert field.description == reported.description
    old = ClassificationSummary.model_validate(
        {"instances": 3, "accuracy": 1, "retired_key": [1, 2], "efficiency": {"instances_per_second": None, "gone": 1}}
    )
    assert old.accuracy == 1.0 and "retired_key" not in old.model_dump()
    assert old.model_dump(mode="json")["efficiency"]["instances_per_second"] is None


def test_describe_says_what_tasks_show():
    [f_beta] = metrics.describe(["f_beta"])
    assert f_beta == {
        "name": "f_beta",
        "description": METRICS["f_beta"].description,
        "direction": "higher",
        "per_class": True,
        "parameters": ["beta", "average"],
    }
    assert metrics.describe(["log_loss"])[0]["direction"] == "lower"
    with pytest.raises(KeyError):
        metrics.describe(["no_such_metric"])
