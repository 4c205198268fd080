"""Prompts as lm-evaluation-harness builds them, so that a number means the same here.

An instance's prompt is its template filled from its columns, after ``num_fewshot`` solved
examples: each example is ``prompt + target_delimiter + answer + fewshot_delimiter``. The
examples are drawn by one ``random.Random(seed)`` for the whole evaluation, instance after
instance in dataset order, with lm-eval's draw (``ContextSampler.sample``): ``n`` from the
few-shot pool, or, when the pool is the evaluated split, ``n + 1`` with the instance itself
removed. The same seed and data give the same examples as lm-eval, which is what lets the
tests compare every instance.

With ``apply_chat_template`` the whole plain prompt becomes one user message of the
tokenizer's chat template with the generation prompt added (lm-eval's single-turn default),
and a multiple-choice answer follows it with no delimiter.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workers.failures import FailureReason, WorkerFailure

_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def template_fields(template: str) -> set[str]:
    """The column names ``template`` reads."""
    return {m.group(1) for m in _FIELD.finditer(template) if m.group(1)}


def check_template(template: str, columns: Sequence[str]) -> None:
    """Raises WorkerFailure(invalid_config) when ``template`` names a column the dataset lacks."""
    missing = sorted(template_fields(template) - set(columns))
    if missing:
        raise WorkerFailure(
            FailureReason.invalid_config,
            f"the template names {', '.join('{' + m + '}' for m in missing)}, which the dataset has no column for "
            f"(its columns: {', '.join(sorted(columns))})",
        )


def fill(template: str, doc: Mapping[str, Any]) -> str:
    """``template`` with each ``{column}`` replaced by the instance's value; ``{{`` and ``}}``
    are literal braces. Raises WorkerFailure(invalid_config) for a column the instance lacks."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        if name not in doc:
            raise WorkerFailure(
                FailureReason.invalid_config, f"the template names {{{name}}}, which the dataset has no column for"
            )
        return str(doc[name])

    return _FIELD.sub(one, template)


class FewshotSampler:
    """lm-eval's default few-shot draw: one random stream, consumed instance by instance.

    ``same_split`` says the pool is the evaluated split: the instance is then never its own
    example (compared by value, as lm-eval compares documents).
    """

    def __init__(self, pool: Sequence[Mapping[str, Any]], *, seed: int, same_split: bool):
        self.pool = list(pool)
        self.rnd = random.Random(seed)
        self.same_split = same_split

    def sample(self, n: int, doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """``n`` examples for ``doc``. Raises WorkerFailure(invalid_config) when the pool is too small."""
        if n == 0:
            return []
        available = len(self.pool) - (1 if self.same_split else 0)
        if available < n:
            raise WorkerFailure(
                FailureReason.invalid_config,
                f"num_fewshot is {n} but the few-shot split has only {max(available, 0)} examples to draw from",
            )
        if not self.same_split:
            return self.rnd.sample(self.pool, n)
        drawn = [x for x in self.rnd.sample(self.pool, n + 1) if x != doc][:n]
        if len(drawn) < n:  # the pool holds copies of the instance: draw again without any of them
            drawn = self.rnd.sample([x for x in self.pool if x != doc], n)
        return drawn


@dataclass(frozen=True)
class PromptStyle:
    """What shapes a prompt: from the config, and the tokenizer when a chat template is asked for."""

    template: str
    num_fewshot: int
    fewshot_delimiter: str
    target_delimiter: str
    chat_tokenizer: Any = None  # the tokenizer whose chat template wraps the prompt, or None


def build_context(doc: Mapping[str, Any], examples: Sequence[Mapping[str, Any]], style: PromptStyle, answer_of) -> str:
    """The prompt for ``doc`` after ``examples`` (each ended by its answer, ``answer_of(example)``).

    An example whose answer is empty is written without delimiters, as lm-eval writes it.
    """
    parts = []
    for example in examples:
        question, answer = fill(style.template, example), answer_of(example)
        parts.append(question + style.target_delimiter + answer + style.fewshot_delimiter if answer != "" else question)
    parts.append(fill(style.template, doc))
    context = "".join(parts)
    if style.chat_tokenizer is None:
        return context
    try:
        return style.chat_tokenizer.apply_chat_template(
            [{"role": "user", "content": context}],
            tokenize=False,
            add_generation_prompt=True,
            continue_final_message=False,
        )
    except Exception as e:  # noqa: BLE001 -- the chat template is the upload's Jinja code: any error is its fault
        raise WorkerFailure(FailureReason.invalid_config, f"the tokenizer's chat template fails: {type(e).__name__}: {e}") from e


def continuation_delimiter(style: PromptStyle) -> str:
    """What joins a prompt and a scored choice: none after a chat template's generation prompt."""
    return "" if style.chat_tokenizer is not None else style.target_delimiter
