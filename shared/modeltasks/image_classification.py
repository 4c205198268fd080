"""Image classification: a transformers ``*ForImageClassification`` on labelled images."""

from __future__ import annotations

from shared.modeltasks.base import CLASSIFICATION_METRICS, CLASSIFICATION_PREDICTIONS, ClassificationConfig, Column, ModelTaskSpec


class ImageClassificationConfig(ClassificationConfig):
    """How to run an image classifier (images are preprocessed by the model's own processor)."""


SPEC = ModelTaskSpec(
    name="image-classification",
    description="A transformers image classifier (save_pretrained directory, safetensors) on labelled images.",
    auto_class="AutoModelForImageClassification",
    architecture_suffix="ForImageClassification",
    model_files=frozenset({"preprocessor_config.json", "processor_config.json"}),
    dataset_formats=("imagefolder-zip", "imagefolder-tar.gz", "parquet"),
    dataset_columns=(
        Column("instance_id", "string", description="File path in the archive, or the row's id."),
        Column("image", "binary", description="PNG or JPEG bytes."),
        Column("label", "int64", description="Index into the dataset's label names."),
    ),
    config=ImageClassificationConfig,
    prediction_columns=CLASSIFICATION_PREDICTIONS,
    metrics=CLASSIFICATION_METRICS,
    gpu=True,
)
