"""Queries over a language model's result set: its per-instance rows, the cells its metrics
are computed from, and what two of them are compared on.

A language-model result set has the columns its kind declares
(``shared.modeltasks.text_generation.KIND_PREDICTIONS``) and no classes. Its metrics are
ratios of sums over instances (``shared.metrics.LanguageModelStatistics``), so the cells
are as for classification: distinct verdicts with their counts where the sums are
verdicts (acc, acc_norm, exact_match), and one cell per instance, in instance order, where
they are real numbers (a perplexity's log-likelihood, words and bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from functions.results.queries import decode_token, encode_token
from functions.results.resultset import ResultSet, ResultSetCorrupt
from shared.errors import Invalid
from shared.metrics import LanguageModelStatistics
from shared.modeltasks.text_generation import COMMON_PREDICTIONS, KIND_METRICS, KIND_PREDICTIONS
from shared.results_api import ChoiceScore, InstancesPage, InstancesQuery, LanguageModelInstance

# Per kind, each sum of LanguageModelStatistics and the column it adds up.
SUMS: dict[str, dict[str, str]] = {
    "multiple_choice": {"hits": "correct", "hits_norm": "correct_norm"},
    "generate": {"matches": "correct"},
    "perplexity": {"loglikelihood": "loglikelihood", "words": "words", "bytes": "bytes"},
}
# Kinds whose sums are verdicts (few distinct cells); the others get one cell per instance.
_VERDICTS = frozenset({"multiple_choice", "generate"})
# What two evaluations of a kind are compared on: the verdict's metric (McNemar on
# ``correct``) and the column whose equality is agreement. Perplexity has no verdict.
COMPARED: dict[str, tuple[str, str]] = {"multiple_choice": ("acc", "prediction"), "generate": ("exact_match", "output")}
# InstancesQuery fields that only a classification has.
_CLASSIFICATION_FILTERS = ("label", "prediction", "min_confidence", "max_confidence")


def metrics_of(result_set: ResultSet) -> tuple[str, ...]:
    """The metrics the result set's kind reports (``shared.modeltasks.text_generation``)."""
    return KIND_METRICS[result_set.kind or ""]


# --- per-instance rows ----------------------------------------------------------------------


def _refused_filters(result_set: ResultSet, query: InstancesQuery) -> list[str]:
    refused = [name for name in _CLASSIFICATION_FILTERS if getattr(query, name) is not None]
    if query.order_by not in ("instance_id", "-instance_id"):
        refused.append(f"order_by={query.order_by}")
    if query.correct is not None and "correct" not in result_set.columns:
        refused.append("correct")
    return refused


def instances(result_set: ResultSet, query: InstancesQuery) -> InstancesPage:
    """One page of a language model's rows, in instance id order (keyset pagination, as
    for classification).

    Raises:
        Invalid: a filter or an order this result set's kind does not have.
        InvalidRequest: a page token not made for these filters.
        ResultSetCorrupt: a stored row that does not make an instance.
    """
    refused = _refused_filters(result_set, query)
    if refused:
        raise Invalid(
            f"{', '.join(refused)}: not a filter of {result_set.describe()}; filter by correct"
            f"{'' if 'correct' in result_set.columns else ' (multiple_choice, generate)'} and order by instance_id",
            details={"filters": refused, "kind": result_set.kind},
        )
    kind = result_set.kind or ""
    names = [c.name for c in COMMON_PREDICTIONS + KIND_PREDICTIONS[kind]]
    where: list[str] = []
    params: dict[str, Any] = {"limit": query.limit + 1}  # one more tells whether another page exists
    if query.correct is not None:
        where.append("correct = $correct")
        params["correct"] = query.correct
    key = decode_token(query)
    descending = query.order_by.startswith("-")
    if key is not None:
        where.append(f"instance_id {'<' if descending else '>'} $after_id")
        params["after_id"] = key[-1]
    sql = (
        f"SELECT {', '.join(names)} FROM {{view}}"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY instance_id {'DESC' if descending else 'ASC'} LIMIT $limit"
    )
    rows = result_set.execute(sql, params).fetchall()
    more = len(rows) > query.limit
    items = [_row(kind, dict(zip(names, row))) for row in rows[: query.limit]]
    token = encode_token(query, (items[-1].instance_id,)) if more else None
    return InstancesPage(items=items, next_page_token=token)


def _row(kind: str, stored: dict[str, Any]) -> LanguageModelInstance:
    """The API's row from a stored one: a choice's text, log-likelihood and greedy flag together."""
    values = {name: v for name, v in stored.items() if name not in ("choices", "choice_loglikelihoods", "choice_greedy")}
    try:
        if kind == "multiple_choice":
            texts, scores, greedy = stored["choices"], stored["choice_loglikelihoods"], stored["choice_greedy"]
            if not (texts is not None and scores is not None and greedy is not None and len(texts) == len(scores) == len(greedy)):
                raise ValueError("choices, choice_loglikelihoods and choice_greedy differ in length")
            values["choices"] = [
                ChoiceScore(index=i, text=t, loglikelihood=s, greedy=g) for i, (t, s, g) in enumerate(zip(texts, scores, greedy))
            ]
        return LanguageModelInstance(kind=kind, **values)
    except (ValueError, ValidationError) as e:  # pydantic's ValidationError is a ValueError
        raise ResultSetCorrupt(
            f"instance {stored.get('instance_id')!r} is not a stored {kind} row",
            details={"instance_id": stored.get("instance_id"), "error": str(e).splitlines()[0]},
        ) from e


# --- metric cells ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LanguageModelCells:
    """The values of each sum per cell, and the instances in each cell."""

    values: dict[str, np.ndarray]
    count: np.ndarray
    per_row: bool  # one cell per instance (perplexity): resampled by drawing instances

    def statistics(self, weights: np.ndarray) -> LanguageModelStatistics:
        """The registry's statistics of these cells weighted by ``weights`` (one row per
        sample; the counts themselves for the point values)."""
        return LanguageModelStatistics.of_cells(self.values, weights)


def cells(result_set: ResultSet) -> LanguageModelCells:
    """The result set reduced to cells in one scan, in a fixed order (a seeded bootstrap
    draws the same samples from the same result set).

    Raises:
        ResultSetCorrupt: a null where a value is summed.
    """
    kind = result_set.kind or ""
    sums = SUMS[kind]
    selected = ", ".join(f"{column} AS {name}" for name, column in sums.items())
    if kind in _VERDICTS:
        sql = f"SELECT {selected}, count(*) AS n FROM {{view}} GROUP BY ALL ORDER BY ALL"
    else:
        sql = f"SELECT {selected}, 1 AS n FROM {{view}} ORDER BY instance_id, {', '.join(sums)}"
    found = result_set.execute(sql).fetchnumpy()
    nulls = [sums[name] for name in sums if np.ma.is_masked(found[name])]
    if nulls:
        raise ResultSetCorrupt(f"the result set has nulls in {', '.join(nulls)}", details={"columns": nulls})
    values = {name: np.asarray(found[name], dtype=np.float64) for name in sums}
    return LanguageModelCells(values, np.asarray(found["n"], dtype=np.int64), per_row=kind not in _VERDICTS)
