"""Each model task's implementation in the workers, found by the task's name.

A task's declaration (``shared.modeltasks``) says what it accepts; its implementation here
is a module with three functions, which ``workers.jobs`` calls for any task alike:

- ``verify_model_archive(archive, work_dir) -> (root, ModelReport)``: extract the upload
  safely, verify it, return the directory of verified files and what was learned;
- ``ingest_dataset(source, out_dir, *, work_dir, shape) -> manifest``: write the canonical
  shards and ``manifest.json`` (``workers.ingest`` describes the manifest); ``shape`` is
  the one the upload declared, None for a task with one shape;
- ``evaluate(model_dir, shards, out_dir, *, dataset_label_names, config, on_shard, on_batch,
  other_splits) -> summary``: write one prediction shard per dataset shard not done yet
  (resumable), and return the summary: the metrics, ``label_names``, ``efficiency`` and
  optionally ``timings``. ``other_splits`` maps each split ``config.other_splits`` names
  to its canonical shards (few-shot examples).

Modules are imported when first used, so a worker loads only its own task's libraries.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from shared.modeltasks import image_classification, text_classification, text_generation

IMPLEMENTATIONS: dict[str, str] = {
    image_classification.SPEC.name: "workers.image_classification",
    text_classification.SPEC.name: "workers.text",
    text_generation.SPEC.name: "workers.lm",
}


def implementation(task: str) -> ModuleType:
    """The module implementing ``task``. Raises KeyError for a task with none."""
    return importlib.import_module(IMPLEMENTATIONS[task])
