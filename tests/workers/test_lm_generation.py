"""The greedy loop of workers/lm/generation.py: rows that stop leave the batch, and every
output equals the same prompt generated alone, and Hugging Face's own greedy ``generate``
cut at the stop strings; fast (an untrained model, whose rows stop at scattered steps)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import lm_fixtures as fx  # noqa: E402 -- the fixtures module sits beside this file

from workers.lm.generation import cut_at_stops, generate  # noqa: E402

PROMPTS = [
    "Question: What is a cat? Answer:",
    "The owl",
    "One dog plus one dog makes two dogs. The red hen sat on the mat. Question: What is a hen? Answer:",
    "A",
    "The bee is an insect. The eel",
    "Question: What is a yak?",
    " ".join(fx.corpus(6, seed=9)),  # longer than the window's room: cut from the left
]
STOPS = ["e", "."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = fx.build_model(tmp_path_factory.mktemp("lm") / "model", steps=0)
    return AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)


def run(tiny, batch_size: int, stops=STOPS, new_tokens: int = 12):
    model, tokenizer = tiny
    return generate(
        model, tokenizer, PROMPTS, max_length=64, max_new_tokens=new_tokens, stops=stops, batch_size=batch_size, device="cpu"
    )


def test_rows_leaving_the_batch_change_no_output(tiny):
    alone, truncated = run(tiny, batch_size=1)
    together, truncated_together = run(tiny, batch_size=8)
    assert together == alone
    assert truncated == truncated_together == [False] * 6 + [True]
    assert len({len(o) for o in alone}) > 1  # rows stopped at different steps


def test_outputs_equal_hugging_face_greedy_generate(tiny):
    import torch

    model, tokenizer = tiny
    outputs, _ = run(tiny, batch_size=4, stops=["Question"], new_tokens=10)
    eos_text = tokenizer.decode(tokenizer.eos_token_id)
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        ids = torch.tensor([tokenizer(prompt)["input_ids"][-(64 - 10) :]])
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        want = cut_at_stops(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True), ["Question", eos_text])
        assert output == want
