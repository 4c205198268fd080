"""Greedy generation as lm-evaluation-harness's HF backend does it: left-padded batches of
prompts (each cut from the left to ``window - max_new_tokens`` tokens, and counted), greedy
decoding of at most ``max_new_tokens`` tokens, the output decoded without special tokens and
cut at the first of the stop strings (the config's, and the EOS token's text).

A row stops as soon as its own text holds a stop string or it emits EOS, rather than when
the whole batch has: what is cut away is never returned, so only the time differs. A
stopped row leaves the batch (its KV cache rows too), so the rows still running do not pay
for it. Prompts are tokenized once and batched longest first, so a batch pads little.
``max_new_tokens`` bounds every generation, always.
"""

from __future__ import annotations

from collections.abc import Sequence

from workers.failures import FailureReason, WorkerFailure
from workers.lm.scoring import encode_ids


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
    encoded = _encode_prompts(tokenizer, prompts)
    truncated = [len(ids) > room for ids in encoded]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    outputs: list[str] = [""] * len(prompts)
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = _left_padded([encoded[i][-room:] for i in chunk], pad, device)
        try:
            rows = _greedy(model, tokenizer, ids, mask, max_new_tokens=max_new_tokens, ends=ends, stops=all_stops)
        except (RuntimeError, IndexError) as e:
            raise WorkerFailure(FailureReason.inference_error, f"generation failed: {type(e).__name__}: {e}") from e
        for i, row in zip(chunk, rows, strict=True):
            outputs[i] = cut_at_stops(tokenizer.decode(row, skip_special_tokens=True), all_stops)
    return outputs, truncated


def _encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt's ids as lm-eval's batch encoding makes them: with the tokenizer's special
    tokens, unless the prompt already starts with the BOS text (a chat template's). lm-eval
    decides that for a batch by its first prompt; here each prompt decides for itself."""
    bos = tokenizer.bos_token
    starts = [bool(bos) and p.startswith(bos) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    for flag in (False, True):
        indices = [i for i, s in enumerate(starts) if s == flag]
        if indices:
            for i, ids in zip(indices, encode_ids(tokenizer, [prompts[i] for i in indices], not flag), strict=True):
                out[i] = ids
    return out


def _left_padded(rows: list[list[int]], pad: int, device):
    """A batch of ``rows`` padded on the left, and its attention mask."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            ids[b, width - len(row) :] = torch.tensor(row)
            mask[b, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


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
    (as ``generate`` numbers them). A row that stops leaves the batch and the cache
    (``reorder_cache``, as beam search selects rows), when the cache can do that.
    """
    import torch

    tail = max((len(s) for s in stops), default=1) + 2
    new: list[list[int]] = [[] for _ in range(ids.shape[0])]
    live = list(range(ids.shape[0]))  # the row of ``new`` behind each row of the batch
    stopped = [False] * ids.shape[0]
    past = None
    step_ids, step_pos = ids, (mask.cumsum(-1) - 1).clamp(min=0)
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
            keep = []
            for b, token in enumerate(chosen.tolist()):
                row = live[b]
                if not stopped[row] and token not in ends:
                    new[row].append(token)
                    # Only the tail can hold a stop string that was not there one token ago.
                    text = tokenizer.decode(new[row][-tail:])
                    stopped[row] = any(s in text for s in stops)
                else:
                    stopped[row] = True
                if not stopped[row]:
                    keep.append(b)
            if not keep:
                break
            if len(keep) < len(live) and hasattr(past, "reorder_cache"):
                index = torch.tensor(keep, device=chosen.device)
                past.reorder_cache(index)
                chosen, mask, step_pos = chosen[index], mask[index], step_pos[index]
                live = [live[b] for b in keep]
            step_ids = chosen[:, None]
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
    return new
