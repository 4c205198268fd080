"""The result-set contract between the evaluate worker and the results queries.

An evaluation's result set is ``evaluations/{id}/predictions/part-NNNNN.parquet`` (one file
per dataset shard, rows in the shard's order) plus ``evaluations/{id}/summary.json``.
Labels are integer indices into ``summary.json``'s ``label_names`` (the model's label
space, after any mapping from the dataset's names). summary.json is a summary model of
``shared.summaries`` (``ClassificationSummary`` for classification).
"""

from __future__ import annotations

import pyarrow as pa

PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("instance_id", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("prediction", pa.int32(), nullable=False),
        pa.field("confidence", pa.float32(), nullable=False),  # probability of the prediction
        pa.field("label_score", pa.float32(), nullable=False),  # probability given to the true label
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("topk_ids", pa.list_(pa.int32()), nullable=False),  # best first, config.top_k long
        pa.field("topk_scores", pa.list_(pa.float32()), nullable=False),
    ]
)
