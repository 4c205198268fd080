"""An evaluation's summary as a typed model: what the evaluate worker writes to summary.json
and to the entity, and what the API serves (the Evaluation view's ``summary``, ``GET
…/results``), so the OpenAPI document says what each number is.

The metric fields are not written out twice: ``SUMMARIES`` says which numbers a task
family's summary reports (each a metric of ``shared.metrics`` with fixed parameters, under
a key), and that family's model takes one optional number per key, with the metric's
description. Adding a metric to a summary is one line there; a leaderboard ranks by any
key. Each family (classification; language models) has its ``SUMMARIES`` entry and its
model on the same ``Summary`` base; ``EvaluationSummary``, what the API serves, has them all.

Every field is optional and unknown keys are ignored, so the summaries of entities stored
before a field existed (or after one was retired) still load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from shared.metrics import (
    CLASSIFICATION,
    ECE_BINS,
    LANGUAGE_MODEL,
    METRICS,
    ClassificationStatistics,
    LanguageModelStatistics,
    Metric,
    confusion_counts,
    per_class,
    value,
)

# --- what a summary reports -----------------------------------------------------------------

STORED_K = "stored"  # a top_k_accuracy parameter: the k the evaluation stored (config.top_k)


@dataclass(frozen=True)
class Reported:
    """One number of an evaluation's summary: a metric with fixed parameters, under a key."""

    key: str
    metric: str
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def definition(self) -> Metric:
        return METRICS[self.metric]

    @property
    def description(self) -> str:
        fixed = ", ".join(f"{k} {'as stored (top_k)' if v == STORED_K else v}" for k, v in self.parameters.items())
        better = "higher" if self.definition.higher_is_better else "lower"
        return f"{self.definition.description}{f' ({fixed})' if fixed else ''} {better.capitalize()} is better."


def _averaged(name: str) -> tuple[Reported, ...]:
    return tuple(Reported(f"{name}_{average}", name, {"average": average}) for average in ("macro", "weighted"))


SUMMARIES: dict[str, tuple[Reported, ...]] = {
    CLASSIFICATION: (
        Reported("accuracy", "accuracy"),
        Reported("top_k_accuracy", "top_k_accuracy", {"k": STORED_K}),
        Reported("top_5_accuracy", "top_k_accuracy", {"k": 5}),  # None when fewer than 5 ids are stored
        *(r for name in ("precision", "recall", "f1") for r in _averaged(name)),
        Reported("balanced_accuracy", "balanced_accuracy"),
        Reported("cohen_kappa", "cohen_kappa"),
        Reported("matthews_corrcoef", "matthews_corrcoef"),
        Reported("expected_calibration_error", "expected_calibration_error"),
        Reported("log_loss", "log_loss"),
    ),
    LANGUAGE_MODEL: tuple(
        Reported(name, name) for name in ("acc", "acc_norm", "exact_match", "word_perplexity", "byte_perplexity", "bits_per_byte")
    ),
}
# Every summary key, across families (a leaderboard ranks by one of these).
REPORTED: dict[str, Reported] = {r.key: r for reported in SUMMARIES.values() for r in reported}


def report(statistics: Any, family: str = CLASSIFICATION) -> dict[str, float | None]:
    """The summary's numbers from one sample of statistics: None where undefined."""
    out: dict[str, float | None] = {}
    for reported in SUMMARIES[family]:
        parameters = dict(reported.parameters)
        if parameters.get("k") == STORED_K:
            parameters["k"] = statistics.stored_k
        number = float(value(reported.metric, statistics, **parameters)[0])
        out[reported.key] = number if np.isfinite(number) else None
    return out


def language_model_summary(
    *,
    kind: str,
    truncated: int,
    efficiency: dict[str, Any] | None = None,
    tokens: int | None = None,
    **values: np.ndarray,
) -> BaseModel:
    """The summary of a language-model evaluation from its per-instance values (the sums of
    ``LanguageModelStatistics``: ``hits`` and ``hits_norm``, ``matches``, or
    ``loglikelihood``, ``words`` and ``bytes``), every metric from the registry."""
    statistics = LanguageModelStatistics.of_rows(**values)
    return LanguageModelSummary.model_validate(
        {
            "instances": int(statistics.n[0]),
            "kind": kind,
            "truncated": truncated,
            "tokens": tokens,
            **report(statistics, LANGUAGE_MODEL),
            "efficiency": efficiency,
        }
    )


# --- the models ----------------------------------------------------------------------------


class _Figures(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_serialization_defaults_required=True)


class Efficiency(_Figures):
    """How fast the evaluation's inference ran, and on what."""

    instances_per_second: float | None = None
    instances_timed: int | None = None
    wall_seconds: float | None = None
    first_batch_seconds: float | None = Field(default=None, description="start-up: until the first batch's predictions")
    model_seconds: float | None = Field(default=None, description="time inside the model, summed over batches")
    batch_latency_p50_ms: float | None = None
    batch_latency_p95_ms: float | None = None
    batches: int | None = None
    peak_memory_bytes: int | None = None
    device: str | None = None
    device_name: str | None = None
    shards_resumed: int | None = Field(default=None, description="prediction shards kept from an earlier attempt")


class ClassFigures(_Figures):
    precision: float
    recall: float
    f1: float
    support: int


class ConfusionMatrix(_Figures):
    """``matrix[i][j]``: instances of ``labels[i]`` predicted as ``labels[j]``."""

    labels: list[str]
    matrix: list[list[int]]


class Summary(_Figures):
    """What every evaluation's summary holds, whatever its task."""

    instances: int | None = None
    model_id: str | None = None
    dataset_id: str | None = None
    split: str | None = None
    efficiency: Efficiency | None = None
    timings: dict[str, float] | None = Field(default=None, description="seconds per phase of the evaluate job")
    label_names: list[str] | None = Field(default=None, description="summary.json only")
    config: dict[str, Any] | None = Field(default=None, description="the inference config; summary.json only")


class _ClassificationFields(Summary):
    top_k: int | None = Field(default=None, description="top-k ids stored per instance")
    ece_bins: int | None = Field(default=None, description="bins of expected_calibration_error")
    per_class: dict[str, ClassFigures] | None = Field(
        default=None, description="classes present in the labels or the predictions; summary.json only"
    )
    confusion_matrix: ConfusionMatrix | None = Field(default=None, description="the same classes; summary.json only")


def _metric_fields(family: str) -> dict[str, Any]:
    return {r.key: (float | None, Field(default=None, description=r.description)) for r in SUMMARIES[family]}


ClassificationSummary = create_model(
    "ClassificationSummary",
    __base__=_ClassificationFields,
    __doc__="The summary of an image or text classification evaluation.",
    **_metric_fields(CLASSIFICATION),
)


class _LanguageModelFields(Summary):
    kind: str | None = Field(default=None, description="multiple_choice, generate or perplexity (the config's kind)")
    truncated: int | None = Field(
        default=None, description="instances whose prompt lost tokens on the left to fit the model's window"
    )
    tokens: int | None = Field(default=None, description="perplexity: the tokens scored")


LanguageModelSummary = create_model(
    "LanguageModelSummary",
    __base__=_LanguageModelFields,
    __doc__="The summary of a language-model evaluation: its kind's metrics, the others null.",
    **_metric_fields(LANGUAGE_MODEL),
)

# The type of an Evaluation's summary on the wire: every family's fields, each evaluation
# filling its own family's (a summary names its family by what it holds; no tag is stored,
# so summaries written before a family existed still load).
EvaluationSummary = create_model(
    "EvaluationSummary",
    __base__=(_ClassificationFields, _LanguageModelFields),
    __doc__="An evaluation's summary: a classification's metrics or a language model's, by the model's task.",
    **_metric_fields(CLASSIFICATION),
    **_metric_fields(LANGUAGE_MODEL),
)


def classification_summary(
    *,
    labels: np.ndarray,
    predictions: np.ndarray,
    top_k_ids: np.ndarray,
    confidence: np.ndarray,
    label_score: np.ndarray,
    label_names: list[str],
    efficiency: dict[str, Any] | None = None,
) -> BaseModel:
    """The summary of classification predictions (class indices into ``label_names``,
    ``top_k_ids`` of shape ``(n, k)`` best first), every metric from the registry."""
    n = len(labels)
    if n == 0:
        return ClassificationSummary.model_validate({"instances": 0, "label_names": label_names, "efficiency": efficiency})
    statistics = ClassificationStatistics.of_rows(
        labels=labels,
        predictions=predictions,
        classes=len(label_names),
        top_k_ids=top_k_ids,
        confidence=confidence,
        label_score=label_score,
    )
    present = np.flatnonzero(statistics.present[0])
    figures = {name: per_class(name, statistics)[0] for name in ("precision", "recall", "f1")}
    matrix = confusion_counts(labels, predictions, len(label_names))
    return ClassificationSummary.model_validate(
        {
            "instances": n,
            "top_k": statistics.stored_k,
            "ece_bins": ECE_BINS,
            **report(statistics, CLASSIFICATION),
            "per_class": {
                label_names[c]: {
                    **{k: float(v[c]) for k, v in figures.items()},
                    "support": int(statistics.support[0, c]),
                }
                for c in present
            },
            "confusion_matrix": {
                "labels": [label_names[c] for c in present],
                "matrix": matrix[np.ix_(present, present)].tolist(),
            },
            "label_names": label_names,
            "efficiency": efficiency,
        }
    )
