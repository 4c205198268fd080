"""Greedy generation as lm-evaluation-harness's HF backend does it: left-padded batches of
prompts (each cut from the left to ``window - max_new_tokens`` tokens, and counted), greedy
decoding of at most ``max_new_tokens`` tokens, the output decoded without special tokens and
cut at the first of the stop strings (the config's, and the EOS token's text).

A row stops as soon as its own text holds a stop string or it emits EOS, rather than when
the whole batch has: what is cut away is never returned, so only the time differs.
``max_new_tokens`` bounds every generation, always.
"""

from __future__ import annotations

from collections.abc import Sequence

from workers.failures import FailureReason, WorkerFailure


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


def generate(
    model, tokenizer, prompts: Sequence[str], *, max_length: int, max_new_tokens: int, stops: Sequence[str],
    batch_size: int, device,
) -> tuple[list[str], list[bool]]:
    """Greedy continuations of ``prompts`` and, per prompt, whether it was truncated.

    Raises:
        WorkerFailure: ``load_error`` when the tokenizer has no EOS token; ``invalid_config``
            when ``max_new_tokens`` leaves no room for a prompt in the window.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    if tokenizer.eos_token_id is None:
        raise WorkerFailure(FailureReason.load_error, "generation needs a tokenizer with an EOS token (set eos_token)")
    room = max_length - max_new_tokens
    if room <= 0:
        raise WorkerFailure(
            FailureReason.invalid_config,
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's window of {max_length} tokens",
        )
    eos_text = tokenizer.decode(tokenizer.eos_token_id, skip_special_tokens=False)
    all_stops = list(stops) + ([eos_text] if eos_text not in stops else [])
    tail_tokens = max((len(s) for s in all_stops), default=1) + 2
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    class _Stops(StoppingCriteria):
        def __init__(self, start: int):
            self.start = start

        def __call__(self, input_ids, scores, **kwargs):
            tails = tokenizer.batch_decode(input_ids[:, max(self.start, input_ids.shape[1] - tail_tokens):])
            done = [any(s in tail for s in all_stops) for tail in tails]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    lengths = [len(tokenizer.encode(p)) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    outputs: list[str] = [""] * len(prompts)
    truncated = [n > room for n in lengths]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            texts = [prompts[i] for i in chunk]
            special = {"add_special_tokens": False} if tokenizer.bos_token and texts[0].startswith(tokenizer.bos_token) else {}
            enc = tokenizer(texts, padding="longest", return_tensors="pt", **special)
            ids, mask = enc["input_ids"][:, -room:].to(device), enc["attention_mask"][:, -room:].to(device)
            with torch.inference_mode():
                try:
                    out = model.generate(
                        input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                        pad_token_id=pad_id, stopping_criteria=StoppingCriteriaList([_Stops(ids.shape[1])]),
                    )
                except (RuntimeError, IndexError) as e:
                    raise WorkerFailure(FailureReason.inference_error, f"generation failed: {type(e).__name__}: {e}") from e
            for i, row in zip(chunk, out[:, ids.shape[1]:].tolist(), strict=True):
                outputs[i] = cut_at_stops(tokenizer.decode(row, skip_special_tokens=True), all_stops)
    finally:
        tokenizer.padding_side = old_side
    return outputs, truncated
