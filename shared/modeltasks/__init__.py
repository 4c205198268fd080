"""The model tasks Assay evaluates: one module per task, each declaring a ``SPEC``.

To add a task: write ``shared/modeltasks/<task>.py`` with its ``SPEC`` and add it to
``SPECS`` below, then give the workers an implementation (``workers/modeltasks.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from shared.modeltasks import image_classification, text_classification, text_generation
from shared.modeltasks.base import ClassificationConfig, Column, ModelTaskSpec, TaskConfig

SPECS: dict[str, ModelTaskSpec] = {
    spec.name: spec for spec in (image_classification.SPEC, text_classification.SPEC, text_generation.SPEC)
}

# The task names, as the API's request and entity models type them (a JSON Schema enum),
# built from the table so never out of step; to the type checker, a string.
# The same for the dataset shapes of the tasks that have several.
if TYPE_CHECKING:
    ModelTask = str
    DatasetShape = str
else:
    ModelTask = Literal[tuple(SPECS)]
    DatasetShape = Literal[tuple(dict.fromkeys(shape for spec in SPECS.values() for shape in spec.dataset_shapes))]
DEFAULT_TASK = image_classification.SPEC.name


def spec_of(task: str) -> ModelTaskSpec:
    """The declaration of ``task``. Raises KeyError for a name that is not a task."""
    return SPECS[task]


__all__ = [
    "SPECS",
    "ModelTask",
    "DatasetShape",
    "DEFAULT_TASK",
    "spec_of",
    "ModelTaskSpec",
    "TaskConfig",
    "ClassificationConfig",
    "Column",
]
