"""Request and response models of the results routes: the one definition the server (its
OpenAPI document included) and the SDK share.

Query strings arrive as text; these models validate and convert them, so nothing below
sees an unchecked value, and user text only ever reaches DuckDB as a bound parameter.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.api import PageToken, SplitName, id_type
from shared.metrics import AVERAGES, CLASSIFICATION, FROM_PREDICTIONS, LANGUAGE_MODEL, METRICS, names as metric_names
from shared.modeltasks.text_generation import EvaluationKind
from shared.summaries import REPORTED, EvaluationSummary

# --- the summary ---------------------------------------------------------------------------


class SummaryResult(EvaluationSummary):
    """``GET …/results``: the summary the evaluate worker wrote, with the evaluation's id."""

    evaluation_id: str


# --- per-instance rows --------------------------------------------------------------------

InstanceOrder = Literal["instance_id", "-instance_id", "confidence", "-confidence"]


class InstancesQuery(BaseModel):
    """``GET …/results/instances``: filters, order and a page.

    ``label`` and ``prediction`` take a label name, or a class index when no name matches.
    A ``min_confidence`` above ``max_confidence`` is an empty range: no rows. A language
    model's rows filter by ``correct`` (not perplexity's: it has no verdict) and order by
    ``instance_id``; the classification filters are refused there.
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
    text_excerpt: str | None = Field(default=None, description="The start of the instance's text, for text tasks.")


class ChoiceScore(BaseModel):
    index: int
    text: str
    loglikelihood: float = Field(description="The summed log-likelihood of target_delimiter + choice after the prompt.")
    greedy: bool = Field(description="Whether the choice is the greedy continuation.")


class LanguageModelInstance(BaseModel):
    """One instance of a language-model evaluation: its kind's fields, the others null."""

    instance_id: str
    kind: EvaluationKind
    truncated: bool = Field(description="The prompt lost tokens on the left to fit the model's window.")
    prompt: str | None = Field(default=None, description="multiple_choice, generate: the instance's own prompt.")
    choices: list[ChoiceScore] | None = Field(default=None, description="multiple_choice")
    answer: int | None = Field(default=None, description="multiple_choice: the index of the right choice.")
    prediction: int | None = Field(default=None, description="multiple_choice: the pick by log-likelihood.")
    prediction_norm: int | None = Field(default=None, description="multiple_choice: the pick by it per character.")
    correct: bool | None = Field(default=None, description="multiple_choice: the pick is the answer; generate: a match.")
    correct_norm: bool | None = Field(default=None, description="multiple_choice: prediction_norm is the answer.")
    output: str | None = Field(default=None, description="generate: the generated text, cut before the first stop string.")
    extracted: str | None = Field(default=None, description="generate: what exact_match compared.")
    targets: list[str] | None = Field(default=None, description="generate: the right answers.")
    text_excerpt: str | None = Field(default=None, description="perplexity: the start of the text.")
    loglikelihood: float | None = Field(default=None, description="perplexity: the text's log-likelihood, in nats.")
    words: int | None = Field(default=None, description="perplexity")
    bytes: int | None = Field(default=None, description="perplexity: UTF-8 bytes.")


class InstancesPage(BaseModel):
    """Rows of a classification (``InstanceRow``) or of a language model (``LanguageModelInstance``)."""

    items: list[InstanceRow] | list[LanguageModelInstance]
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

# The metrics the route computes from a stored result set: the registry's classification
# metrics whose statistics the stored predictions give, and the language-model ones
# (shared/metrics.py). Which of them one result set has depends on its family and kind.
ROUTE_METRICS: dict[str, tuple[str, ...]] = {
    CLASSIFICATION: tuple(metric_names(CLASSIFICATION, needs_within=FROM_PREDICTIONS)),
    LANGUAGE_MODEL: tuple(metric_names(LANGUAGE_MODEL)),
}
_ROUTE_METRICS = tuple(name for names in ROUTE_METRICS.values() for name in names)
MetricName = Literal[_ROUTE_METRICS]  # type: ignore[valid-type]
Average = Literal[AVERAGES]  # type: ignore[valid-type]
_PARAMETERS = ("k", "beta", "average")
_DEFAULTS: dict[str, Any] = {"beta": 1.0, "average": "macro"}  # k has none: top_k_accuracy requires it
_TAKES = {name: METRICS[name].takes() for name in _ROUTE_METRICS}


def _takers(parameter: str) -> str:
    found = [name for name, takes in _TAKES.items() if parameter in takes]
    return ", ".join(found[:-1]) + " and " + found[-1] if len(found) > 1 else found[0]


def _metric_spec_schema(schema: dict[str, Any]) -> None:
    """Say in the schema what ``MetricSpec._parameters`` checks: one variant per set of
    parameters a metric takes, each with exactly those (null where it takes none)."""
    props = schema["properties"]
    null = {"type": "null"}
    types = {"k": {key: v for key, v in props["k"]["anyOf"][0].items()}, "beta": props["beta"], "average": props["average"]}
    for p in ("beta", "average"):
        types[p].pop("title", None)
        types[p].pop("default", None)
    signatures: dict[tuple[str, ...], list[str]] = {}
    for name, takes in _TAKES.items():
        signatures.setdefault(takes, []).append(name)
    variants = []
    for takes, names in signatures.items():
        fields: dict[str, Any] = {"name": {"enum": names, "type": "string"}}
        fields.update({p: types[p] if p in takes else null for p in _PARAMETERS})
        required = ["name", *(p for p in takes if p not in _DEFAULTS)]
        variants.append({"type": "object", "properties": fields, "required": required, "additionalProperties": False})
    schema.clear()
    schema["anyOf"] = variants
    schema["description"] = MetricSpec.__doc__


class MetricSpec(BaseModel):
    """One metric to compute; parameters only where the metric takes them."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_metric_spec_schema)

    name: MetricName
    k: int | None = Field(default=None, ge=1, le=1000, description=f"{_takers('k')} only")
    beta: float | None = Field(default=None, gt=0.0, le=1000.0, description=f"{_takers('beta')} only (default 1)")
    average: Average | None = Field(default=None, description=f"{_takers('average')} (default macro)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand_and_defaults(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = {"name": value}
        if isinstance(value, dict) and isinstance(value.get("name"), str) and value["name"] in _TAKES:
            value = dict(value)
            for p in _TAKES[value["name"]]:
                if value.get(p) is None and p in _DEFAULTS:
                    value[p] = _DEFAULTS[p]
        return value

    @model_validator(mode="after")
    def _parameters(self) -> MetricSpec:
        takes = _TAKES[self.name]
        for p in _PARAMETERS:
            given = getattr(self, p) is not None
            if given and p not in takes:
                raise ValueError(f"{p} is taken by {_takers(p)} only")
            if not given and p in takes:
                raise ValueError(f"{p} is required by {self.name}")
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
        description="default: accuracy, balanced_accuracy, f_beta (β=1, macro), cohen_kappa, matthews_corrcoef; "
        "for a language model, its kind's metrics (acc and acc_norm, exact_match, or the perplexities)",
        json_schema_extra=lambda schema: schema.update(
            items={"anyOf": [{"type": "string", "enum": [n for n, takes in _TAKES.items() if "k" not in takes]}, schema["items"]]}
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
    # fraction with the same predicted label name (the same pick, the same output: language models)
    agreement: float
    both_correct: int
    both_wrong: int
    only_a_correct: Discordant
    only_b_correct: Discordant
    metric: str = Field(
        default="accuracy",
        description="What correct means, and so what accuracy_a and accuracy_b are: accuracy (classification), "
        "acc (multiple choice) or exact_match (generate)",
    )
    accuracy_a: float
    accuracy_b: float
    accuracy_difference: AccuracyDifference
    mcnemar: McNemar


# A leaderboard ranks by a number a summary reports (shared/summaries.py: SUMMARIES).
LeaderboardMetric = Literal[tuple(REPORTED)]  # type: ignore[valid-type]


def higher_is_better(metric: str) -> bool:
    """Which way a summary number ranks; KeyError for a key no summary reports."""
    return REPORTED[metric].definition.higher_is_better


class LeaderboardQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: SplitName | None = None
    metric: LeaderboardMetric | None = Field(  # type: ignore[valid-type]
        default=None,
        description="default: the dataset task's headline for its shape (accuracy; acc_norm, exact_match or bits_per_byte)",
    )
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
    metric: LeaderboardMetric  # type: ignore[valid-type]
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
