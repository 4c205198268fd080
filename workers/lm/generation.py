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
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_length: int,
    max_new_tokens: int,
    stops: Sequence[str],
    batch_size: int,
    device,
) -> tuple[list[str], list[bool]]:
    """Greedy continuations of ``prompts`` and, per prompt, whether it was truncated.

    Raises:
        WorkerFailure: ``load_error`` when the tokenizer has no EOS token; ``invalid_config``
            when ``max_new_tokens`` leaves no room for a prompt in the window.
    """
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
    ends = _end_tokens(model, tokenizer)
    lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]] if prompts else []
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    outputs: list[str] = [""] * len(prompts)
    truncated = [n > room for n in lengths]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            texts = [prompts[i] for i in chunk]
            special = {"add_special_tokens": False} if tokenizer.bos_token and texts[0].startswith(tokenizer.bos_token) else {}
            enc = tokenizer(texts, padding="longest", return_tensors="pt", **special)
            ids, mask = enc["input_ids"][:, -room:].to(device), enc["attention_mask"][:, -room:].to(device)
            try:
                rows = _greedy(model, tokenizer, ids, mask, max_new_tokens=max_new_tokens, ends=ends, stops=all_stops)
            except (RuntimeError, IndexError) as e:
                raise WorkerFailure(FailureReason.inference_error, f"generation failed: {type(e).__name__}: {e}") from e
            for i, row in zip(chunk, rows, strict=True):
                outputs[i] = cut_at_stops(tokenizer.decode(row, skip_special_tokens=True), all_stops)
    finally:
        tokenizer.padding_side = old_side
    return outputs, truncated


def _end_tokens(model, tokenizer) -> set[int]:
    """The ids that end a generation: the generation config's EOS ids (as ``generate`` reads
    them), else the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is None:
        return {tokenizer.eos_token_id}
    return set(configured) if isinstance(configured, list) else {int(configured)}


def _greedy(model, tokenizer, ids, mask, *, max_new_tokens: int, ends: set[int], stops: Sequence[str]) -> list[list[int]]:
    """Greedy decoding of a left-padded batch with the KV cache: each row's new tokens, up to
    its end token (excluded) or the step where its text holds a stop string.

    Position ids count the real tokens only, so a left-padded row reads as it would alone
    (as ``generate`` numbers them).
    """
    import torch

    tail = max((len(s) for s in stops), default=1) + 2
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    new: list[list[int]] = [[] for _ in range(ids.shape[0])]
    stopped = [False] * ids.shape[0]
    past = None
    step_ids, step_pos = ids, positions
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            out = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_pos,
                past_key_values=past,
                use_cache=True,
                logits_to_keep=1,
            )
            past = out.past_key_values
            chosen = out.logits[:, -1].argmax(-1)
            for row, token in enumerate(chosen.tolist()):
                if stopped[row]:
                    continue
                if token in ends:
                    stopped[row] = True
                    continue
                new[row].append(token)
                # Only the tail can hold a stop string that was not there one token ago.
                stopped[row] = any(s in tokenizer.decode(new[row][-tail:]) for s in stops)
            if all(stopped):
                break
            step_ids = chosen[:, None]
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
    return new
