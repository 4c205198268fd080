"""What an instance of each dataset shape holds, and how one row of an upload is judged.

``parse_row(shape, record, limits)`` gives the row's canonical values, or the problem that
leaves it out (``missing_question``, ``no_choices``, ``answer_out_of_range``, ``bad_target``…);
``workers.lm.dataset`` reads the rows and keeps the other columns, ``workers.lm.evaluation``
tells a dataset's shape by its canonical columns (``SHAPE_SCHEMAS``).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from shared.modeltasks.text_generation import KIND_METRICS, MAX_CHOICES
from workers.canonical import IngestLimits, text_problem

SHAPES = tuple(KIND_METRICS)
# The columns each shape reads (a tuple: any one of them), and the canonical ones it writes.
REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "multiple_choice": (("question",), ("choices",), ("answer",)),
    "generate": (("prompt",), ("targets", "target")),
    "perplexity": (("text",),),
}
SHAPE_SCHEMAS: dict[str, list[tuple[str, pa.DataType]]] = {
    "multiple_choice": [("question", pa.string()), ("choices", pa.list_(pa.string())), ("answer", pa.int64())],
    "generate": [("prompt", pa.string()), ("targets", pa.list_(pa.string()))],
    "perplexity": [("text", pa.string())],
}


def decoded(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _text(record: dict[str, Any], name: str, limits: IngestLimits) -> tuple[str | None, str | None]:
    """A required text field: its value, or why it is not usable (``missing_question``…)."""
    problem = text_problem(record.get(name), limits)
    if problem is None:
        return decoded(record[name]), None
    named = {"missing_text": f"missing_{name}", "text_not_string": f"{name}_not_string", "text_too_long": f"{name}_too_long"}
    return None, named.get(problem, problem.replace("text", name))


def _strings(values: object, limits: IngestLimits, *, empty: bool) -> list[str] | None:
    """A list of usable texts (empty ones too when ``empty``), or None."""
    if not isinstance(values, list):
        return None
    out = []
    for value in values:
        problem = text_problem(value, limits)
        if problem is not None and not (empty and problem == "empty_text"):
            return None
        assert isinstance(value, str | bytes)  # text_problem passed
        out.append(decoded(value))
    return out


def _multiple_choice(record: dict[str, Any], limits: IngestLimits) -> tuple[dict | None, str | None]:
    question, problem = _text(record, "question", limits)
    if problem:
        return None, problem
    choices, answer = record.get("choices"), record.get("answer")
    if choices is None:
        return None, "missing_choices"
    if not isinstance(choices, list):
        return None, "choices_not_list"
    if not choices:
        return None, "no_choices"
    if len(choices) > MAX_CHOICES:
        return None, "too_many_choices"
    kept = _strings(choices, limits, empty=False)
    if kept is None:
        return None, "bad_choice"
    if answer is None:
        return None, "missing_answer"
    if isinstance(answer, bool) or not isinstance(answer, int):
        return None, "answer_not_integer"
    if not 0 <= answer < len(kept):
        return None, "answer_out_of_range"
    return {"question": question, "choices": kept, "answer": answer}, None


def _generate(record: dict[str, Any], limits: IngestLimits) -> tuple[dict | None, str | None]:
    prompt, problem = _text(record, "prompt", limits)
    if problem:
        return None, problem
    targets = record.get("targets")
    if targets is None:
        targets = record.get("target")
    if targets is None:
        return None, "missing_target"
    if isinstance(targets, str | bytes):
        targets = [targets]
    if isinstance(targets, list) and not targets:
        return None, "no_targets"
    kept = _strings(targets, limits, empty=True)
    if kept is None:
        return None, "bad_target"
    return {"prompt": prompt, "targets": kept}, None


def _perplexity(record: dict[str, Any], limits: IngestLimits) -> tuple[dict | None, str | None]:
    text, problem = _text(record, "text", limits)
    return (None, problem) if problem else ({"text": text}, None)


_PARSERS = {"multiple_choice": _multiple_choice, "generate": _generate, "perplexity": _perplexity}


def parse_row(shape: str, record: dict[str, Any], limits: IngestLimits) -> tuple[dict | None, str | None]:
    """``(values, None)``: the row's canonical columns of ``shape``; or ``(None, problem)``."""
    return _PARSERS[shape](record, limits)
