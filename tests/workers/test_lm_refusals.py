"""Bad inputs to the language-model engine end in a WorkerFailure a user can act on, and a
context longer than the window is cut from the left and counted; fast (an untrained model)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.modeltasks.text_generation import SPEC, TextGenerationConfig
from workers.failures import FailureReason, WorkerFailure


@pytest.fixture(scope="module")
def tiny():
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        ["the cat sat on the mat"] * 10,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=1,
            n_embd=32,
            n_head=2,
            n_positions=32,
            vocab_size=len(tokenizer),
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    ).eval()
    return model, tokenizer


def refused(call, reason: FailureReason) -> str:
    with pytest.raises(WorkerFailure) as caught:
        call()
    assert caught.value.reason == reason
    return caught.value.message


def test_bad_choices_and_templates_are_refused(tiny):
    from workers.lm.engine import multiple_choice

    model, tokenizer = tiny
    config = TextGenerationConfig()

    def run(docs, cfg=config):
        return lambda: multiple_choice(model, tokenizer, docs, [], cfg, same_split=False)

    assert "non-empty list" in refused(run([{"question": "q", "choices": [], "answer": 0}]), FailureReason.invalid_dataset)
    assert "not an index" in refused(run([{"question": "q", "choices": ["a"], "answer": 3}]), FailureReason.invalid_dataset)
    message = refused(
        run([{"question": "q", "choices": ["a"], "answer": 0}], TextGenerationConfig(template="{missing}")),
        FailureReason.invalid_config,
    )
    assert "{missing}" in message
    few = TextGenerationConfig(num_fewshot=2, fewshot_split="train")
    assert "only 0 examples" in refused(
        run([{"question": "q", "choices": ["a"], "answer": 0}], few), FailureReason.invalid_config
    )


def test_long_context_is_cut_from_the_left_and_counted(tiny):
    from workers.lm.engine import multiple_choice

    model, tokenizer = tiny
    docs = [
        {"question": "the cat sat " * 40, "choices": ["mat", "cat sat"], "answer": 0},
        {"question": "the cat", "choices": ["mat", "cat"], "answer": 1},
    ]
    result = multiple_choice(model, tokenizer, docs, [], TextGenerationConfig(), same_split=False)
    assert result.truncated == 1
    assert [r["truncated"] for r in result.records] == [True, False]


def test_generation_needs_eos_and_room_and_is_bounded(tiny):
    from workers.lm.engine import generate_answers

    model, tokenizer = tiny
    docs = [{"prompt": "the cat", "target": " sat"}]
    too_long = TextGenerationConfig(kind="generate", max_new_tokens=32)
    assert "no room" in refused(
        lambda: generate_answers(model, tokenizer, docs, [], too_long, same_split=False), FailureReason.invalid_config
    )
    bounded = TextGenerationConfig(kind="generate", max_new_tokens=5, until=["never appears"])
    result = generate_answers(model, tokenizer, docs, [], bounded, same_split=False)
    assert len(tokenizer.encode(result.records[0]["output"])) <= 5
    no_eos = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, pad_token="<eos>")
    assert "EOS" in refused(
        lambda: generate_answers(model, no_eos, docs, [], bounded, same_split=False), FailureReason.load_error
    )


def test_config_rules_and_fingerprint():
    with pytest.raises(ValidationError):
        TextGenerationConfig(num_fewshot=1)  # no split to draw from
    with pytest.raises(ValidationError):
        TextGenerationConfig(kind="perplexity", template="{text}")
    with pytest.raises(ValidationError):
        TextGenerationConfig(kind="generate", until=[""])
    assert TextGenerationConfig(batch_size=1).canonical() == TextGenerationConfig(batch_size=64).canonical()
    assert TextGenerationConfig(seed=1).canonical() != TextGenerationConfig(seed=2).canonical()
    assert SPEC.auto_class == "AutoModelForCausalLM" and "generation_config.json" in SPEC.model_files
    assert set(SPEC.config.RESULT_FIELDS) == set(TextGenerationConfig.model_fields) - {"batch_size"}
