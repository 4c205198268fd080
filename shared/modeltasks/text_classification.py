"""Text classification: a transformers ``*ForSequenceClassification`` on labelled texts
(or text pairs), with the tokenizer saved beside the model."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from shared.modeltasks.base import CLASSIFICATION_METRICS, CLASSIFICATION_PREDICTIONS, ClassificationConfig, Column, ModelTaskSpec

MAX_TEXT_EXCERPT = 200  # characters of each text the prediction shards keep


class TextClassificationConfig(ClassificationConfig):
    """How to run a text classifier: its tokenizer's truncation, and the classification options."""

    max_length: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Tokens per input after truncation; by default the model's own limit "
        "(the tokenizer's model_max_length, capped by the model's position embeddings).",
    )
    truncation_side: Literal["right", "left"] = Field(default="right", description="Which end a long text loses.")

    RESULT_FIELDS: ClassVar[tuple[str, ...]] = ("top_k", "label_mapping", "max_length", "truncation_side")


SPEC = ModelTaskSpec(
    name="text-classification",
    description="A transformers sequence classifier with its tokenizer (save_pretrained directory, safetensors) "
    "on labelled texts or text pairs.",
    auto_class="AutoModelForSequenceClassification",
    architecture_suffix="ForSequenceClassification",
    model_files=frozenset(
        {
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "added_tokens.json",
            "vocab.txt",
            "vocab.json",
            "merges.txt",
        }
    ),
    dataset_formats=("parquet", "jsonl", "csv"),
    dataset_columns=(
        Column("instance_id", "string", description="The row's id column if it has one, else its position."),
        Column("text", "string", description="The text (UTF-8, no NUL bytes, not empty)."),
        Column("text_pair", "string", required=False, description="The second text of a pair, for pair classifiers."),
        Column("label", "int64", description="Index into the dataset's label names (ClassLabel or string labels)."),
    ),
    config=TextClassificationConfig,
    prediction_columns=CLASSIFICATION_PREDICTIONS
    + (Column("text_excerpt", "string", description=f"The first {MAX_TEXT_EXCERPT} characters of the text."),),
    metrics=CLASSIFICATION_METRICS,
    gpu=True,
)
