"""A tiny causal language model and multiple-choice questions for it, built in seconds,
nothing downloaded: a 2-layer GPT-2 (n_embd 64) from its config with a byte-level BPE
tokenizer trained on generated text, then trained a few seconds on that text, so its choices
are not ties and its generations not noise. ``make demo``'s second part evaluates it; the
language-model tests and bench build the same model (tests/workers/lm_fixtures.py)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from devstack.digits import build_once

ANIMALS = ["cat", "dog", "cow", "owl", "fox", "bee", "ant", "eel", "yak", "hen", "pig", "rat"]
COLOURS = ["red", "blue", "green", "black", "white", "yellow"]
KINDS = {
    "cat": "mammal",
    "dog": "mammal",
    "cow": "mammal",
    "owl": "bird",
    "fox": "mammal",
    "bee": "insect",
    "ant": "insect",
    "eel": "fish",
    "yak": "mammal",
    "hen": "bird",
    "pig": "mammal",
    "rat": "mammal",
}
CATEGORIES = ["mammal", "bird", "insect", "fish"]
EOS = "<|endoftext|>"
WINDOW = 128


def _sentence(rnd: random.Random) -> str:
    animal = rnd.choice(ANIMALS)
    return rnd.choice(
        [
            f"The {animal} is a {KINDS[animal]}.",
            f"Question: What is a {animal}? Answer: a {KINDS[animal]}.",
            f"The {rnd.choice(COLOURS)} {animal} sat on the mat.",
            f"One {animal} plus one {animal} makes two {animal}s.",
        ]
    )


def corpus(n: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    return [" ".join(_sentence(rnd) for _ in range(rnd.randint(2, 6))) for _ in range(n)]


def build_model(directory: Path, *, steps: int = 300) -> Path:
    """Write a tiny GPT-2 trained ``steps`` steps (a fixed count, so the same model on any
    machine, however loaded) with its tokenizer to ``directory`` (save_pretrained)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    texts = corpus(2000)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=EOS, model_max_length=WINDOW)
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=2,
        n_positions=WINDOW,
        vocab_size=len(tokenizer),
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    stream = [t for text in texts for t in tokenizer.encode(text) + [eos]]
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rnd = random.Random(0)
    model.train()
    for _ in range(steps):
        starts = [rnd.randrange(0, len(stream) - 65) for _ in range(16)]
        batch = torch.tensor([stream[s : s + 64] for s in starts])
        loss = model(batch, labels=batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def cached_tiny_lm(cache_root: str | Path, *, steps: int = 300) -> Path:
    """The trained model directory, built once per recipe (this file and ``steps``)."""
    recipe = hashlib.sha256(Path(__file__).read_bytes() + str(steps).encode()).hexdigest()[:12]
    return build_once(Path(cache_root) / f"tiny-lm-{recipe}", lambda d: build_model(d, steps=steps))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def choice_rows(n: int, seed: int, *, phrases: float = 0.5) -> list[dict]:
    """Four-choice questions; a share ``phrases`` of them with answers of several tokens
    ("a small bird"), the rest of one word, so both ways of scoring choices are exercised."""
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        animal = rnd.choice(ANIMALS)
        choices = rnd.sample(CATEGORIES, 4)
        answer = choices.index(KINDS[animal])
        if rnd.random() < phrases:
            choices = [f"a {rnd.choice(['small', 'big', 'red'])} {c}" for c in choices]
        # Some questions are long enough that a few-shot prompt overflows the window.
        padding = " ".join(_sentence(rnd) for _ in range(rnd.choice([0, 0, 0, 8])))
        rows.append(
            {"question": f"{padding} Question: What is a {animal}? Answer:".strip(), "choices": choices, "answer": answer}
        )
    return rows
