"""The tiny language model and datasets of each shape for the language-model tests and bench:
the model and the multiple-choice questions are devstack's (``make demo`` uses them too),
the generation and perplexity rows are here."""

from __future__ import annotations

import random

from devstack.tinylm import (  # noqa: F401 -- re-exported for the tests and the bench
    ANIMALS,
    CATEGORIES,
    COLOURS,
    EOS,
    KINDS,
    WINDOW,
    _sentence,
    build_model,
    choice_rows,
    corpus,
    write_jsonl,
)


def generation_rows(n: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        animal = rnd.choice(ANIMALS)
        rows.append({"prompt": f"Question: What is a {animal}? Answer:", "target": f" a {KINDS[animal]}"})
    return rows


def text_rows(n: int, seed: int) -> list[dict]:
    return [{"text": text} for text in corpus(n, seed=seed + 100)] + [{"text": " ".join(corpus(12, seed=seed))}]
