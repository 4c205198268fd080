"""What a model task is: the one declaration everything else reads.

A model task (``image-classification``, ``text-classification``…) is declared once, by a
``ModelTaskSpec`` in a module of this package: which models it accepts, which dataset
formats and columns, its inference configuration (defaults, bounds, and which fields
change results and so enter the fingerprint), the columns of its prediction shards, its
metrics and whether its evaluations want a GPU. The API validates requests against it,
the daemon sizes jobs by it, the workers pick their implementation by its name and
``GET /v1/tasks`` publishes it.

Nothing here imports torch, pyarrow or a cloud client: the SDK may read these models.
A task's metrics are names in the metric registry (``shared.metrics``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from shared import metrics

# A split name becomes a directory of the worker and part of object names
# (``datasets/{id}/{split}/…``): one path component, never '.', '..', '/' or a leading dot.
# Defined here, where a task config naming a split (few-shot examples) reads it, and
# re-exported by shared.entities.
SPLIT_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"


class TaskConfig(BaseModel):
    """How to run an evaluation of one task. Only ``RESULT_FIELDS`` enter the fingerprint:
    a batch size changes how fast, never what, so ordering the same evaluation with another
    batch size reuses the result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    RESULT_FIELDS: ClassVar[tuple[str, ...]] = ()

    def canonical(self) -> str:
        return json.dumps(self.model_dump(include=set(self.RESULT_FIELDS)), sort_keys=True, separators=(",", ":"))

    def other_splits(self, split: str) -> list[str]:
        """Dataset splits the evaluation of ``split`` reads besides it (few-shot examples)."""
        return []


class ClassificationConfig(TaskConfig):
    """What every classification task can be told."""

    top_k: int = Field(default=5, ge=1, le=100, description="How many of the best labels each prediction keeps.")
    label_mapping: dict[str, str] | None = Field(
        default=None, description="Dataset label name -> model label name, for datasets whose names differ."
    )
    batch_size: int = Field(default=64, ge=1, le=4096, description="Instances per forward pass (speed only).")

    RESULT_FIELDS: ClassVar[tuple[str, ...]] = ("top_k", "label_mapping")


@dataclass(frozen=True)
class Column:
    """A column of a dataset or of a prediction shard, as ``GET /v1/tasks`` describes it."""

    name: str
    type: str  # an Arrow type name: string, int32, int64, float32, bool, binary, list<int32>…
    required: bool = True
    description: str = ""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "required": self.required, "description": self.description}


# The prediction columns every classification task writes (shared.results builds the
# Arrow schema from them; the results queries read them).
CLASSIFICATION_PREDICTIONS: tuple[Column, ...] = (
    Column("instance_id", "string", description="The dataset instance."),
    Column("label", "int32", description="The true label, an index into the model's label names."),
    Column("prediction", "int32", description="The best label."),
    Column("confidence", "float32", description="The probability of the prediction."),
    Column("label_score", "float32", description="The probability given to the true label."),
    Column("correct", "bool", description="prediction == label."),
    Column("topk_ids", "list<int32>", description="The top_k best labels, best first."),
    Column("topk_scores", "list<float32>", description="Their probabilities."),
)

# A classification task's metrics: the registry's classification family.
CLASSIFICATION_METRICS: tuple[str, ...] = tuple(metrics.names(metrics.CLASSIFICATION))


@dataclass(frozen=True)
class ModelTaskSpec:
    name: str
    description: str
    # The transformers auto class a model must load with, and the suffix its architecture
    # name has (``ViTForImageClassification``): only classes transformers itself implements.
    auto_class: str
    architecture_suffix: str
    # Files a model directory may hold besides config.json and safetensors weights.
    model_files: frozenset[str]
    dataset_formats: tuple[str, ...]
    dataset_columns: tuple[Column, ...]  # of the canonical dataset shards
    config: type[TaskConfig]
    prediction_columns: tuple[Column, ...]
    metrics: tuple[str, ...]  # names in shared.metrics, the headline first
    gpu: bool  # whether its evaluations run on the GPU pool (verification and ingestion never do)
    # The shapes a dataset of this task may have, declared at upload (empty: one shape), the
    # config field that must name the dataset's shape, and the metric a leaderboard of a
    # dataset of each shape ranks by by default.
    dataset_shapes: tuple[str, ...] = ()
    shape_field: str | None = None
    shape_headline: Mapping[str, str] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """The metric family (``shared.metrics``) its evaluations report."""
        return metrics.METRICS[self.metrics[0]].family

    def headline(self, shape: str | None = None) -> str:
        """The metric that sums up an evaluation of a dataset of ``shape``."""
        return self.shape_headline.get(shape or "", self.metrics[0])

    def parse_config(self, values: dict[str, Any] | None, *, strict: bool = False) -> TaskConfig:
        """The config with defaults filled in. Raises pydantic.ValidationError."""
        return self.config.model_validate(values or {}, strict=strict)

    def describe(self) -> dict[str, Any]:
        """The public description: what ``GET /v1/tasks`` answers."""
        return {
            "name": self.name,
            "description": self.description,
            "model": {
                "framework": "transformers",
                "auto_class": self.auto_class,
                "architectures": f"*{self.architecture_suffix}",
                "files": sorted(self.model_files | {"config.json", "model.safetensors"}),
            },
            "dataset": {
                "formats": list(self.dataset_formats),
                "shapes": list(self.dataset_shapes),
                "columns": [c.describe() for c in self.dataset_columns],
            },
            "config_schema": self.config.model_json_schema(),
            "prediction_columns": [c.describe() for c in self.prediction_columns],
            "metrics": list(self.metrics),
            "gpu": self.gpu,
        }
