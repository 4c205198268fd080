"""Further metrics against scikit-learn, and the bootstrap against resampling instances."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
from sklearn import metrics as sk

from functions.results import metrics
from functions.results.resultset import opened
from shared import metrics as registry
from shared.errors import Invalid
from shared.metrics import ClassificationStatistics
from shared.results_api import ROUTE_METRICS, BootstrapSpec, MetricName, MetricsRequest
from tests.metric_references import REFERENCES, Case
from tests.results.conftest import generate


def _compute(g, specs, bootstrap=None):
    with opened(g.directory, g.label_names) as rs:
        return metrics.compute(rs, MetricsRequest(metrics=specs, bootstrap=bootstrap))


def test_the_route_computes_every_metric_its_statistics_allow():
    classification = set(registry.names(registry.CLASSIFICATION, needs_within=registry.FROM_PREDICTIONS))
    assert set(get_args(MetricName)) == classification | set(registry.names(registry.LANGUAGE_MODEL))
    assert set(ROUTE_METRICS[registry.CLASSIFICATION]) == classification
    assert classification <= set(REFERENCES)  # each one is checked against scikit-learn below


@pytest.mark.parametrize("seed,classes,skill", [(0, 7, 1.5), (1, 3, 0.2), (2, 12, 3.0)])
def test_point_values_equal_sklearn(tmp_path, seed, classes, skill):
    g = generate(tmp_path / "r", n=1500, classes=classes, seed=seed, skill=skill, top_k=5)
    case = Case(labels=g.labels, scores=g.scores)
    specs, expected = [], []
    for name in ROUTE_METRICS[registry.CLASSIFICATION]:
        parameter_sets, reference = REFERENCES[name]
        for parameters in parameter_sets:
            if parameters.get("k", 0) > g.top_k:
                continue
            specs.append({"name": name, **parameters})
            expected.append(reference(case, **parameters))
    result = _compute(g, specs)
    assert result.instances == 1500
    for spec, got, value in zip(specs, result.metrics, expected, strict=True):
        assert got.name == spec["name"] and got.parameters == {k: v for k, v in spec.items() if k != "name"}
        assert got.value == pytest.approx(value, abs=1e-12), spec


def test_statistics_from_cells_equal_those_from_rows(generated):
    """The route's statistics (DuckDB cells) are the worker's (every row), so both give the
    registry the same numbers."""
    case = Case(labels=generated.labels, scores=generated.scores)
    classes = len(generated.label_names)
    rows = ClassificationStatistics.of_rows(
        labels=case.labels, predictions=case.predictions, classes=classes, top_k_ids=case.order[:, : generated.top_k]
    )
    with opened(generated.directory, generated.label_names) as rs:
        found = metrics.cells(rs, max_k=generated.top_k)
    from_cells = found.statistics(found.count, max_k=generated.top_k)
    for name in ("n", "tp", "support", "predicted", "hits"):
        np.testing.assert_array_equal(getattr(from_cells, name), getattr(rows, name), err_msg=name)


def test_top_k_beyond_stored_k_is_refused(generated):
    with pytest.raises(Invalid) as e:
        _compute(generated, [{"name": "top_k_accuracy", "k": 6}])
    assert e.value.details == {"k": 6, "stored_k": 5}


def test_undefined_kappa_is_none(tmp_path):
    labels = np.zeros(50, dtype=int)
    g = generate(tmp_path / "r", n=50, classes=2, labels=labels, skill=50.0)  # always right, one class
    result = _compute(g, ["cohen_kappa", "matthews_corrcoef"])
    assert result.metrics[0].value is None  # sklearn: nan
    assert result.metrics[1].value == sk.matthews_corrcoef(g.labels, g.predictions) == 0.0


def _naive_bootstrap(g, statistic, samples, seed):
    rng = np.random.default_rng(seed)
    n = len(g.labels)
    values = []
    for _ in range(samples):
        i = rng.integers(0, n, n)
        values.append(statistic(g.labels[i], g.predictions[i]))
    return np.quantile(values, [0.025, 0.975])


@pytest.mark.parametrize(
    "spec,statistic",
    [
        ("accuracy", sk.accuracy_score),
        ("cohen_kappa", sk.cohen_kappa_score),
        ("matthews_corrcoef", sk.matthews_corrcoef),
        ({"name": "f_beta", "beta": 2.0}, lambda y, p: sk.fbeta_score(y, p, beta=2.0, average="macro", zero_division=0)),
    ],
)
def test_bootstrap_interval_matches_resampling_instances(tmp_path, spec, statistic):
    g = generate(tmp_path / "r", n=600, classes=4, seed=5, skill=1.0)
    result = _compute(g, [spec], BootstrapSpec(samples=2000, seed=11)).metrics[0]
    low, high = _naive_bootstrap(g, statistic, samples=500, seed=3)
    # Two independent Monte Carlo estimates of the same quantiles: equal up to noise.
    width = high - low
    assert result.interval.low == pytest.approx(low, abs=0.15 * width)
    assert result.interval.high == pytest.approx(high, abs=0.15 * width)
    assert result.interval.low < result.value < result.interval.high


def test_bootstrap_matches_scipy_on_accuracy(tmp_path):
    from scipy import stats

    g = generate(tmp_path / "r", n=800, classes=5, seed=9)
    correct = (g.labels == g.predictions).astype(float)
    reference = stats.bootstrap((correct,), np.mean, n_resamples=4000, method="percentile", random_state=1)
    result = _compute(g, ["accuracy"], BootstrapSpec(samples=4000, seed=2)).metrics[0]
    ci = reference.confidence_interval
    assert result.interval.low == pytest.approx(ci.low, abs=0.006)
    assert result.interval.high == pytest.approx(ci.high, abs=0.006)


def test_bootstrap_is_reproducible_and_blockwise_identical(generated):
    spec = BootstrapSpec(samples=300, seed=4)
    first = _compute(generated, ["balanced_accuracy"], spec).metrics[0].interval
    again = _compute(generated, ["balanced_accuracy"], spec).metrics[0].interval
    assert first == again
    other = _compute(generated, ["balanced_accuracy"], BootstrapSpec(samples=300, seed=5)).metrics[0].interval
    assert other != first


def test_multinomial_draws_are_a_resampling_of_instances():
    counts = np.array([5, 0, 20, 75])
    weights = np.concatenate(list(metrics.bootstrap_weights(counts, samples=5000, seed=0, block=700)))
    assert weights.shape == (5000, 4)
    assert (weights.sum(axis=1) == 100).all()
    assert (weights[:, 1] == 0).all()
    assert np.allclose(weights.mean(axis=0), counts, atol=0.5)
    # variance of a resampled cell count: n p (1 - p)
    assert np.allclose(weights.var(axis=0), 100 * (counts / 100) * (1 - counts / 100), rtol=0.1, atol=0.05)


def test_request_defaults_and_explicit_nulls():
    request = MetricsRequest.model_validate_json(b'{"metrics": [{"name": "f_beta", "beta": null, "average": null}]}', strict=True)
    assert request.metrics[0].beta == 1.0 and request.metrics[0].average == "macro"
    assert [m.name for m in MetricsRequest.model_validate_json(b"{}", strict=True).metrics][0] == "accuracy"
    with pytest.raises(ValueError):
        MetricsRequest.model_validate({"metrics": [{"name": ["f_beta"]}]})
