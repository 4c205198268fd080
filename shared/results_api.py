"""Request and response models of the results routes: the one definition the server (its
OpenAPI document included) and the SDK share.

Query strings arrive as text; these models validate and convert them, so nothing below
sees an unchecked value, and user text only ever reaches DuckDB as a bound parameter.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.api import PageToken, SplitName, id_type

# --- per-instance rows --------------------------------------------------------------------

InstanceOrder = Literal["instance_id", "-instance_id", "confidence", "-confidence"]


class InstancesQuery(BaseModel):
    """``GET …/results/instances``: filters, order and a page.

    ``label`` and ``prediction`` take a label name, or a class index when no name matches.
    A ``min_confidence`` above ``max_confidence`` is an empty range: no rows.
    """

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(default=None, max_length=256)
    prediction: str | None = Field(default=None, max_length=256)
    correct: bool | None = None
    min_confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    max_confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    order_by: InstanceOrder = "instance_id"
    limit: int = Field(default=100, ge=1, le=1000)
    page_token: PageToken | None = None

    def filter_fields(self) -> dict[str, Any]:
        """What a page token is bound to: the same filters and order, any limit."""
        return self.model_dump(exclude={"limit", "page_token"})


class TopKEntry(BaseModel):
    class_index: int
    label: str
    score: float


class InstanceRow(BaseModel):
    instance_id: str
    label: str
    label_index: int
    prediction: str
    prediction_index: int
    correct: bool
    confidence: float
    label_score: float
    top_k: list[TopKEntry]


class InstancesPage(BaseModel):
    items: list[InstanceRow]
    next_page_token: str | None


# --- per-class metrics and the confusion matrix -------------------------------------------


class ClassMetrics(BaseModel):
    label: str
    class_index: int
    precision: float
    recall: float
    f1: float
    support: int
    predicted: int


class ClassesResult(BaseModel):
    instances: int
    classes: list[ClassMetrics]


class ConfusionResult(BaseModel):
    """``matrix[i][j]``: instances of ``labels[i]`` predicted as ``labels[j]``."""

    labels: list[str]
    matrix: list[list[int]]


# --- further metrics ----------------------------------------------------------------------

MetricName = Literal[
    "accuracy",
    "top_k_accuracy",
    "precision",
    "recall",
    "f_beta",
    "balanced_accuracy",
    "cohen_kappa",
    "matthews_corrcoef",
]
Average = Literal["macro", "weighted", "micro"]
_AVERAGED = {"precision", "recall", "f_beta"}


def _metric_spec_schema(schema: dict[str, Any]) -> None:
    """Say in the schema what ``MetricSpec._parameters`` checks: one variant per kind of
    metric, each with exactly the parameters it takes (null where it takes none)."""
    props = schema["properties"]
    null = {"type": "null"}

    def variant(names: list[str], **params: Any) -> dict[str, Any]:
        fields = {"name": {"enum": names, "type": "string"}}
        for p in ("k", "beta", "average"):
            fields[p] = params.get(p, null)
        return {"type": "object", "properties": fields, "required": ["name", *params.get("required", [])],
                "additionalProperties": False}

    plain = [n for n in get_args(MetricName) if n not in _AVERAGED and n != "top_k_accuracy"]
    k = {key: v for key, v in props["k"]["anyOf"][0].items()}
    beta = props["beta"]
    average = props["average"]
    for p in (beta, average):
        p.pop("title", None)
        p.pop("default", None)
    schema.clear()
    schema["anyOf"] = [
        variant(plain),
        variant(["top_k_accuracy"], k=k, required=["k"]),
        variant(["precision", "recall"], average=average),
        variant(["f_beta"], beta=beta, average=average),
    ]
    schema["description"] = MetricSpec.__doc__


class MetricSpec(BaseModel):
    """One metric to compute; parameters only where the metric takes them."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_metric_spec_schema)

    name: MetricName
    k: int | None = Field(default=None, ge=1, le=1000, description="top_k_accuracy only")
    beta: float | None = Field(default=None, gt=0.0, le=1000.0, description="f_beta only (default 1)")
    average: Average | None = Field(default=None, description="precision, recall, f_beta (default macro)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand_and_defaults(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = {"name": value}
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            value = dict(value)
            if value["name"] == "f_beta" and value.get("beta") is None:
                value["beta"] = 1.0
            if value["name"] in _AVERAGED and value.get("average") is None:
                value["average"] = "macro"
        return value

    @model_validator(mode="after")
    def _parameters(self) -> MetricSpec:
        if (self.k is not None) != (self.name == "top_k_accuracy"):
            raise ValueError("k is required by top_k_accuracy and taken by no other metric")
        if self.beta is not None and self.name != "f_beta":
            raise ValueError("beta is taken by f_beta only")
        if self.average is not None and self.name not in _AVERAGED:
            raise ValueError("average is taken by precision, recall and f_beta only")
        return self

    def parameters(self) -> dict[str, Any]:
        return self.model_dump(exclude={"name"}, exclude_none=True)


class BootstrapSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: int = Field(default=1000, ge=100, le=10000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)


DEFAULT_METRICS = ("accuracy", "balanced_accuracy", "f_beta", "cohen_kappa", "matthews_corrcoef")


class MetricsRequest(BaseModel):
    """``POST …/results/metrics``. A metric may be given as its name alone."""

    model_config = ConfigDict(extra="forbid")

    metrics: list[MetricSpec] = Field(
        default_factory=lambda: [MetricSpec(name=n) for n in DEFAULT_METRICS],
        min_length=1,
        max_length=32,
        description="default: accuracy, balanced_accuracy, f_beta (β=1, macro), cohen_kappa, matthews_corrcoef",
        json_schema_extra=lambda schema: schema.update(
            items={"anyOf": [{"type": "string", "enum": [n for n in get_args(MetricName) if n != "top_k_accuracy"]},
                             schema["items"]]}
        ),
    )
    bootstrap: BootstrapSpec | None = Field(default=None, description="percentile interval for every metric")


class Interval(BaseModel):
    low: float | None
    high: float | None
    confidence: float
    samples: int
    seed: int
    method: Literal["percentile"] = "percentile"


class MetricValue(BaseModel):
    name: MetricName
    parameters: dict[str, Any]
    value: float | None  # None where the metric is undefined (e.g. kappa with one class)
    interval: Interval | None = None


class MetricsResult(BaseModel):
    instances: int
    metrics: list[MetricValue]


# --- comparison and leaderboard -----------------------------------------------------------


class CompareQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: id_type("evl")  # type: ignore[valid-type]  # a type built at import
    b: id_type("evl")  # type: ignore[valid-type]  # a type built at import
    limit: int = Field(default=100, ge=0, le=10000, description="instance ids listed per side")


class Discordant(BaseModel):
    count: int
    instance_ids: list[str]
    truncated: bool


class McNemar(BaseModel):
    """McNemar's test on the discordant pairs: exact (binomial) and χ² with continuity
    correction; ``p_value`` is the exact one."""

    p_value: float
    chi2: float
    chi2_p_value: float


class AccuracyDifference(BaseModel):
    value: float  # accuracy of a minus accuracy of b, on the instances both hold
    interval: Interval


class CompareResult(BaseModel):
    a: str
    b: str
    dataset_id: str
    split: str
    instances: int
    unmatched: dict[str, int]  # instances only one side holds
    agreement: float  # fraction with the same predicted label name
    both_correct: int
    both_wrong: int
    only_a_correct: Discordant
    only_b_correct: Discordant
    accuracy_a: float
    accuracy_b: float
    accuracy_difference: AccuracyDifference
    mcnemar: McNemar


LeaderboardMetric = Literal[
    "accuracy",
    "top_k_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "expected_calibration_error",
    "log_loss",
]
LOWER_IS_BETTER = frozenset({"expected_calibration_error", "log_loss"})


class LeaderboardQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: SplitName | None = None
    metric: LeaderboardMetric = "accuracy"
    limit: int = Field(default=50, ge=1, le=500)
    page_token: PageToken | None = None


class LeaderboardEntry(BaseModel):
    rank: int
    evaluation_id: str
    evaluation_name: str
    model_id: str
    model_name: str | None
    split: str
    value: float
    instances: int | None


class LeaderboardPage(BaseModel):
    dataset_id: str
    metric: LeaderboardMetric
    higher_is_better: bool
    items: list[LeaderboardEntry]
    next_page_token: str | None


class DownloadFile(BaseModel):
    name: str
    size: int
    url: str
    method: str
    expires_at: str


class DownloadResult(BaseModel):
    files: list[DownloadFile]
