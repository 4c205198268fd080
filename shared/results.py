"""The result-set contract between the evaluate worker and the results queries.

An evaluation's result set is ``evaluations/{id}/predictions/part-NNNNN.parquet`` (one file
per dataset shard, rows in the shard's order) plus ``evaluations/{id}/summary.json``.
The columns of the shards are the evaluation's task's (``shared.modeltasks``): a
classification writes ``CLASSIFICATION_PREDICTIONS`` (labels are integer indices into
``summary.json``'s ``label_names``, the model's label space after any mapping from the
dataset's names); a language model writes ``COMMON_PREDICTIONS`` and its kind's
``KIND_PREDICTIONS``, and its summary.json has no ``label_names``. summary.json is a
summary model of ``shared.summaries`` (``ClassificationSummary``, ``LanguageModelSummary``).

The Arrow schemas below are built from those column declarations, so a column is declared
once, where its task is.
"""

from __future__ import annotations

import pyarrow as pa

from shared.modeltasks.base import CLASSIFICATION_PREDICTIONS, Column
from shared.modeltasks.text_generation import COMMON_PREDICTIONS, KIND_PREDICTIONS

_SCALARS = {
    "string": pa.string(),
    "binary": pa.binary(),
    "bool": pa.bool_(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
}


def arrow_type(name: str) -> pa.DataType:
    """The Arrow type a column declaration names (``int32``, ``list<float64>``…)."""
    if name.startswith("list<") and name.endswith(">"):
        return pa.list_(arrow_type(name[len("list<") : -1]))
    return _SCALARS[name]


def prediction_schema(columns: tuple[Column, ...]) -> pa.Schema:
    """The schema of prediction shards with these columns, none of them nullable."""
    return pa.schema([pa.field(c.name, arrow_type(c.type), nullable=False) for c in columns])


PREDICTION_SCHEMA = prediction_schema(CLASSIFICATION_PREDICTIONS)
# A language-model evaluation's shards, per kind (multiple_choice, generate, perplexity).
LANGUAGE_MODEL_SCHEMAS: dict[str, pa.Schema] = {
    kind: prediction_schema(COMMON_PREDICTIONS + columns) for kind, columns in KIND_PREDICTIONS.items()
}
