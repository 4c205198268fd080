"""The packed scoring of workers/lm/scoring.py against the plainest computation: each
continuation appended to its context, one causal forward, its tokens' log-probabilities
summed. Rows mixing shared leading tokens (the trie), duplicates, single-token choices,
equal prefixes (merged rows) and plain chains in one batch; fast (an untrained model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import lm_fixtures as fx  # noqa: E402 -- the fixtures module sits beside this file

from workers.lm.scoring import Encoder, Row, encode_ids, score_rows  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = fx.build_model(tmp_path_factory.mktemp("lm") / "model", steps=0)
    return AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)


def plain(model, prefix: list[int], branch: list[int]) -> tuple[float, bool]:
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([prefix + branch])).logits[0, len(prefix) - 1 : -1]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(branch)
    return float(logprobs.gather(1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all())


def test_packed_rows_score_as_each_continuation_alone(tiny):
    model, _ = tiny
    rows = [
        # Choices sharing leading tokens, a duplicate, single-token ones.
        Row([5, 6, 7, 8], [[9, 10, 11], [9, 10, 12], [9, 13], [14], [9, 10, 11], [15]]),
        # Branches each a prefix of the next: a chain, no mask of its own.
        Row([3, 4], [[20, 21], [20, 21, 22, 23]]),
        # Equal prefixes: scored as one row.
        Row([30, 31, 32], [[33, 34]]),
        Row([30, 31, 32], [[35, 36, 37]]),
        # A rolling window: BOS, then a long branch; several share that BOS.
        Row([0], [list(range(40, 100))]),
        Row([0], [list(range(100, 150))]),
        Row([0], [[7]]),
    ]
    expected = [[plain(model, row.prefix, branch) for branch in row.branches] for row in rows]
    for batch_size in (1, 3, 16):
        score_rows(model, rows, batch_size=batch_size, device="cpu")
        for row, want in zip(rows, expected, strict=True):
            assert len(row.results) == len(want)
            for (ll, greedy), (want_ll, want_greedy) in zip(row.results, want, strict=True):
                assert ll == pytest.approx(want_ll, abs=1e-4)
                assert greedy == want_greedy


def test_truncated_choices_of_equal_length_share_their_window(tiny):
    model, tokenizer = tiny
    encoder = Encoder(tokenizer, max_length=16)
    context = list(range(10, 40))
    choices = [[50, 51], [52, 53], [54, 55, 56], [57, 58]]
    rows, truncated = encoder.rows_for(context, choices)
    assert truncated and len(rows) == len(choices)
    score_rows(model, rows, batch_size=8, device="cpu")
    for row, choice in zip(rows, choices, strict=True):
        kept = (context + choice)[-17:]
        want_ll, want_greedy = plain(model, kept[: len(kept) - len(choice)], choice)
        assert row.results[0][0] == pytest.approx(want_ll, abs=1e-4)
        assert row.results[0][1] == want_greedy


def test_encode_ids_equals_the_tokenizer(tiny):
    _, tokenizer = tiny
    texts = ["The cat is a mammal.", " a small bird", "", "Question: What is an owl?\n\nAnswer:", "<|endoftext|>The owl"]
    for special in (True, False):
        assert encode_ids(tokenizer, texts, special) == [
            list(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]
        ]
