"""Language-model result sets written by hand following the contract
(``shared.results.LANGUAGE_MODEL_SCHEMAS``, from ``KIND_PREDICTIONS``), with the summary
the evaluate worker would write: for the results routes' and the console's tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shared.entities import Evaluation
from shared.results import LANGUAGE_MODEL_SCHEMAS
from shared.summaries import language_model_summary

N = 240


@dataclass
class LMSet:
    kind: str
    directory: Path
    columns: dict[str, list]
    evaluation: Evaluation | None = None

    def array(self, name: str) -> np.ndarray:
        return np.asarray(self.columns[name])


def _multiple_choice(rng: np.random.Generator, ids: list[str], answers: np.ndarray, skill: float) -> dict[str, list]:
    choices, scores, greedy, pick, pick_norm = [], [], [], [], []
    for answer in answers:
        texts = [f"choice {c}" + "x" * int(rng.integers(0, 6)) for c in range(int(rng.integers(2, 6)))]
        answer = int(answer) % len(texts)
        ll = rng.normal(-8.0, 2.0, len(texts))
        ll[answer] += skill
        choices.append(texts)
        scores.append(ll.tolist())
        greedy.append([bool(g) for g in rng.random(len(texts)) < 0.2])
        pick.append(int(np.argmax(ll)))
        pick_norm.append(int(np.argmax(ll / np.array([len(" " + t) for t in texts]))))
    answer_list = [int(a) % len(c) for a, c in zip(answers, choices)]
    return {
        "prompt": [f"Question {i}?" for i in ids],
        "choices": choices,
        "answer": answer_list,
        "choice_loglikelihoods": scores,
        "choice_greedy": greedy,
        "prediction": pick,
        "prediction_norm": pick_norm,
        "correct": [p == a for p, a in zip(pick, answer_list)],
        "correct_norm": [p == a for p, a in zip(pick_norm, answer_list)],
    }


def _generate(rng: np.random.Generator, ids: list[str], answers: np.ndarray, skill: float) -> dict[str, list]:
    right = rng.random(len(ids)) < skill
    outputs = [str(a) if r else str(int(rng.integers(0, 3))) for a, r in zip(answers, right)]
    return {
        "prompt": [f"What is {i}?" for i in ids],
        "targets": [[str(a), f"{a}.0"] for a in answers],
        "output": [f" {o}\n" for o in outputs],
        "extracted": outputs,
        "correct": [o == str(a) for o, a in zip(outputs, answers)],
    }


def _perplexity(rng: np.random.Generator, ids: list[str], answers: np.ndarray, skill: float) -> dict[str, list]:
    words = rng.integers(5, 200, len(ids))
    return {
        "text_excerpt": [f"text {i} ünïcode" for i in ids],
        "loglikelihood": (-words * rng.uniform(2.0, 4.0, len(ids)) / skill).tolist(),
        "words": words.tolist(),
        "bytes": (words * rng.integers(4, 7, len(ids))).tolist(),
    }


_COLUMNS = {"multiple_choice": _multiple_choice, "generate": _generate, "perplexity": _perplexity}
# What the worker sums for the summary (LanguageModelStatistics): sum -> column.
_SUMS = {
    "multiple_choice": {"hits": "correct", "hits_norm": "correct_norm"},
    "generate": {"matches": "correct"},
    "perplexity": {"loglikelihood": "loglikelihood", "words": "words", "bytes": "bytes"},
}


def write_set(directory: Path, kind: str, *, seed: int, skill: float, shards: int = 3) -> LMSet:
    """A result set of ``kind`` for the same N instances (in a shuffled order) on any seed."""
    answers = np.random.default_rng(99).integers(0, 4, N)
    ids = [f"q{i:04d}" for i in range(N)]
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {"instance_id": ids, "truncated": [bool(t) for t in rng.random(N) < 0.05]}
    columns |= _COLUMNS[kind](rng, ids, answers, skill)
    order = rng.permutation(N)
    table = pa.table(columns, schema=LANGUAGE_MODEL_SCHEMAS[kind]).take(pa.array(order))
    directory.mkdir(parents=True)
    bounds = np.linspace(0, N, shards + 1).astype(int)
    for s in range(shards):
        pq.write_table(table.slice(bounds[s], bounds[s + 1] - bounds[s]), directory / f"part-{s:05d}.parquet")
    found = LMSet(kind, directory, columns)
    sums = {name: found.array(column).astype(float) for name, column in _SUMS[kind].items()}
    summary = language_model_summary(kind=kind, truncated=int(sum(columns["truncated"])), **sums)
    (directory / "summary.json").write_text(summary.model_dump_json())
    return found
