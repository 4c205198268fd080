"""Log-likelihoods of continuations, as lm-evaluation-harness's HF backend computes them,
from fewer tokens than it runs.

Tokens follow lm-eval exactly (``encode_pair``): trailing whitespace of the context moves
to the continuation, the continuation's tokens are those of ``context + continuation``
past the context's own tokens, and a sequence longer than the window keeps its last
``max_length + 1`` tokens (truncated from the left, and counted). Rolling perplexity cuts
a text into lm-eval's disjoint windows (``rolling_windows``).

The speed comes from how rows are packed. lm-eval runs ``context + choice`` once per
choice; here a *row* is one context followed by the tokens of all its branches (each
choice but its last token), each branch seeing the context and itself only, through a 4D
attention mask and position ids that restart after the context. A choice's first token is
scored from the context's last position, so single-token choices cost nothing beyond the
context. Rows without branches (rolling windows, truncated requests) run as plain causal
sequences. The arithmetic is the model's own; what differs from lm-eval is only the order
of floating-point sums inside attention (~1e-6 on a log-likelihood).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from workers.failures import FailureReason, WorkerFailure


@dataclass
class Row:
    """A context and the continuations scored after it: ``results[i]`` will hold
    ``(log-likelihood, is_greedy)`` of ``branches[i]``."""

    prefix: list[int]
    branches: list[list[int]]
    results: list[tuple[float, bool]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.prefix) + sum(len(b) - 1 for b in self.branches)


class Encoder:
    """lm-eval's tokenization of prompts and continuations for one tokenizer and window."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.prefix_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if self.prefix_token_id is None:
            raise WorkerFailure(FailureReason.load_error, "the tokenizer has neither a BOS nor an EOS token to start a text with")
        self._prefix_text = tokenizer.decode(self.prefix_token_id)

    def encode(self, text: str) -> list[int]:
        return self.encode_many([text])[0]

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, in one call to the tokenizer (its Rust side batches).
        A text that already starts with the BOS text (a chat template's) gets no second one."""
        starts = [bool(self._prefix_text) and t.startswith(self._prefix_text) for t in texts]
        plain = [i for i, s in enumerate(starts) if not s]
        prefixed = [i for i, s in enumerate(starts) if s]
        out: list[list[int]] = [[] for _ in texts]
        for indices, special in ((plain, {}), (prefixed, {"add_special_tokens": False})):
            if indices:
                for i, ids in zip(indices, self.tokenizer([texts[i] for i in indices], **special)["input_ids"], strict=True):
                    out[i] = list(ids)
        return out

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """``(context tokens, continuation tokens)`` as lm-eval's ``loglikelihood`` makes them."""
        return self.encode_pairs(context, [continuation])[0]

    def encode_pairs(self, context: str, continuations: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """``encode_pair`` for several continuations of one context."""
        return self.encode_groups([(context, continuations)])[0]

    def encode_groups(self, groups: Sequence[tuple[str, Sequence[str]]]) -> list[list[tuple[list[int], list[int]]]]:
        """``encode_pair`` for each context and its continuations, every text of every group
        in one tokenizer call, each context encoded once."""
        texts: list[str] = []
        for context, continuations in groups:
            if context:
                spaces = len(context) - len(context.rstrip())
                kept, moved = (context[:-spaces], context[-spaces:]) if spaces else (context, "")
                texts += [kept, *(kept + moved + c for c in continuations)]
        encoded = iter(self.encode_many(texts)) if texts else iter([])
        out = []
        for context, continuations in groups:
            if context == "":  # lm-eval's BOS (or EOS) stands for the empty context
                pairs = []
                for ids in self.tokenizer(list(continuations), add_special_tokens=False)["input_ids"]:
                    cont = list(ids)
                    first = cont[:1] == [self.prefix_token_id]
                    pairs.append((cont[:1], cont[1:]) if first else ([self.prefix_token_id], cont))
                out.append(pairs)
                continue
            context_tokens = next(encoded)
            out.append([(context_tokens, next(encoded)[len(context_tokens) :]) for _ in continuations])
        return out

    def rows_for(self, context: list[int], continuations: Sequence[list[int]]) -> tuple[list[Row], bool]:
        """The rows scoring ``continuations`` after ``context``, and whether the context was
        truncated. One packed row when every pair fits the window; else one row per pair,
        each cut from the left as lm-eval cuts it.

        Raises WorkerFailure(invalid_config) for an empty continuation or one longer than the window.
        """
        for cont in continuations:
            if not cont:
                raise WorkerFailure(FailureReason.invalid_config, "a continuation encodes to no tokens (an empty choice?)")
            if len(cont) > self.max_length:
                raise WorkerFailure(
                    FailureReason.invalid_config,
                    f"an answer of {len(cont)} tokens does not fit the model's window of {self.max_length}",
                )
        longest = max(len(c) for c in continuations)
        if len(context) + longest <= self.max_length + 1:
            return [Row(list(context), [list(c) for c in continuations])], False
        rows = []
        for cont in continuations:
            kept = (context + cont)[-(self.max_length + 1) :]
            rows.append(Row(kept[: len(kept) - len(cont)], [list(cont)]))
        return rows, True

    def rolling_windows(self, text: str) -> list[Row]:
        """lm-eval's disjoint rolling windows over ``text`` (``get_rolling_token_windows``
        with a context of one token, then ``make_disjoint_window``), one row each."""
        tokens = self.encode(text)
        rows: list[Row] = []
        if not tokens:
            return rows
        first = min(self.max_length, len(tokens))
        rows.append(Row([self.prefix_token_id], [tokens[:first]]))
        predicted = first
        while predicted < len(tokens):
            count = min(len(tokens) - predicted, self.max_length)
            end = predicted + count
            window = tokens[max(end - self.max_length - 1, 0) : end - 1]
            rows.append(Row(window[: len(window) - (count - 1)], [tokens[end - count : end]]))
            predicted += count
        return rows


def score_rows(model, rows: Sequence[Row], *, batch_size: int, device) -> None:
    """Fill every row's ``results``: batches of rows, longest first, under inference mode.

    Raises WorkerFailure(inference_error) when the model's forward fails.
    """
    import torch

    order = sorted(range(len(rows)), key=lambda i: -rows[i].length)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[start : start + batch_size]]
            try:
                _score_batch(model, batch, device)
            except (RuntimeError, IndexError) as e:
                raise WorkerFailure(FailureReason.inference_error, f"the forward pass failed: {type(e).__name__}: {e}") from e


# Config fields of models whose logits are more than the output projection of the last
# hidden state (soft-capped, scaled): those run their own head on every position.
_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale", "mup_width_multiplier")


def _plain_head(model) -> bool:
    config = getattr(model.config, "text_config", None) or model.config
    return all(getattr(config, name, None) in (None, 1, 1.0) for name in _HEAD_EXTRAS)


def _needs_mask(row: Row) -> bool:
    """Whether the row holds the tokens of two branches, which must not see each other."""
    return sum(len(b) > 1 for b in row.branches) > 1


def _score_batch(model, batch: Sequence[Row], device) -> None:
    import torch

    width = max(row.length for row in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    packed = any(_needs_mask(row) for row in batch)
    # Per position: 0 in the context, k + 1 in branch k, -1 in the padding; and its position id.
    segment = torch.full((len(batch), width), -1, dtype=torch.long)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    # For each scored token: its row in the batch, the position whose logits predict it, its id;
    # for each branch, the span of its tokens in those lists.
    where_row: list[int] = []
    where_pos: list[int] = []
    targets: list[int] = []
    spans: list[list[tuple[int, int]]] = []
    for b, row in enumerate(batch):
        n = len(row.prefix)
        spans.append([])
        ids[b, :n] = torch.tensor(row.prefix)
        segment[b, :n] = 0
        positions[b, :n] = torch.arange(n)
        at = n
        for k, branch in enumerate(row.branches):
            extra = len(branch) - 1
            if extra:
                ids[b, at : at + extra] = torch.tensor(branch[:-1])
                segment[b, at : at + extra] = k + 1
                positions[b, at : at + extra] = torch.arange(n, n + extra)
            spans[b].append((len(targets), len(targets) + len(branch)))
            where_row += [b] * len(branch)
            where_pos += [n - 1, *range(at, at + extra)]
            targets += branch
            at += extra
    kwargs = {}
    if packed:
        # A token sees the earlier tokens of the context and of its own branch.
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        allowed = causal & ((segment[:, None, :] == 0) | (segment[:, None, :] == segment[:, :, None]))
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        kwargs = {"attention_mask": mask[:, None].to(device), "position_ids": positions.to(device)}
    rows_at, positions_at = torch.tensor(where_row, device=device), torch.tensor(where_pos, device=device)
    base, head = getattr(model, "base_model", None), model.get_output_embeddings()
    if base is not None and base is not model and head is not None and _plain_head(model):
        # The output projection only where a token is scored: the context's other positions
        # would cost a vocabulary-wide product each.
        hidden = base(ids.to(device), use_cache=False, **kwargs).last_hidden_state
        picked = head(hidden[rows_at, positions_at])
    else:
        picked = model(ids.to(device), use_cache=False, **kwargs).logits[rows_at, positions_at]
    logprobs = torch.log_softmax(picked.float(), dim=-1)
    target = torch.tensor(targets, device=device)
    # Summed in float32 per continuation, as lm-eval sums them.
    token_ll = logprobs.gather(1, target[:, None])[:, 0].cpu()
    greedy = (logprobs.argmax(dim=-1) == target).cpu()
    for b, row in enumerate(batch):
        row.results = [(float(token_ll[i:j].sum()), bool(greedy[i:j].all())) for i, j in spans[b]]
