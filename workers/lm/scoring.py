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


def encode_ids(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """The tokenizer's ids of ``texts``. A fast tokenizer's Rust backend is called as the
    tokenizer itself calls it (no truncation, no padding, its special-token splitting), but
    for the ids alone: building each text's offsets and dicts costs as much as the encoding.
    Anything else goes through the tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (
        backend is not None
        and hasattr(backend, "encode_batch_fast")
        and backend.truncation is None
        and backend.padding is None
        and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False))
    ):
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]


@dataclass
class Row:
    """A context and the continuations scored after it: ``results[i]`` will hold
    ``(log-likelihood, is_greedy)`` of ``branches[i]``."""

    prefix: list[int]
    branches: list[list[int]]
    results: list[tuple[float, bool]] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Positions the row takes at most (branches that share leading tokens take fewer)."""
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
        for indices, special in ((plain, True), (prefixed, False)):
            if indices:
                for i, ids in zip(indices, encode_ids(self.tokenizer, [texts[i] for i in indices], special), strict=True):
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
                for ids in encode_ids(self.tokenizer, list(continuations), False):
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

    merged = _merge_shared_prefixes(rows)
    order = sorted(range(len(merged)), key=lambda i: -merged[i][0].length)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [merged[i][0] for i in order[start : start + batch_size]]
            try:
                _score_batch(model, batch, device)
            except (RuntimeError, IndexError) as e:
                raise WorkerFailure(FailureReason.inference_error, f"the forward pass failed: {type(e).__name__}: {e}") from e
    for row, members in merged:
        at = 0
        for member in members:
            member.results = row.results[at : at + len(member.branches)]
            at += len(member.branches)


def _merge_shared_prefixes(rows: Sequence[Row]) -> list[tuple[Row, list[Row]]]:
    """Rows whose prefixes are equal, scored as one row: the prefix once, then every branch.

    They arise wherever lm-eval repeats a context: the choices of a truncated request that
    have the same length keep the same window, an empty context is the same BOS token, and
    a zero-shot question may recur. The positions of the prefix are the same in each, so its
    hidden states are too. A merged row grows by at most ``max(len(prefix), 64)`` branch
    tokens, so that one shared BOS does not make a row the size of the whole set.
    """
    by_prefix: dict[tuple[int, ...], list[tuple[Row, list[Row]]]] = {}
    out: list[tuple[Row, list[Row]]] = []
    for row in rows:
        candidates = by_prefix.setdefault(tuple(row.prefix), [])
        extra = row.length - len(row.prefix)
        if candidates:
            merged, members = candidates[-1]
            if merged.length + extra <= len(merged.prefix) + max(len(merged.prefix), 64):
                merged.branches.extend(row.branches)
                members.append(row)
                continue
        entry = (Row(row.prefix, list(row.branches)), [row])
        candidates.append(entry)
        out.append(entry)
    return out


# Config fields of models whose logits are more than the output projection of the last
# hidden state (soft-capped, scaled): those run their own head on every position.
_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale", "mup_width_multiplier")


def _plain_head(model) -> bool:
    config = getattr(model.config, "text_config", None) or model.config
    return all(getattr(config, name, None) in (None, 1, 1.0) for name in _HEAD_EXTRAS)


@dataclass
class _Layout:
    """A row as the model reads it: the prefix, then one position per distinct proper prefix
    of the branches (a trie: choices " a big cat" and " a big dog" share " a" and " big"),
    each node seeing the prefix and its own ancestors only."""

    ids: list[int]
    positions: list[int]
    # Per node position (from len(prefix) on): the position of its parent, len(prefix) - 1 for a root.
    parents: list[int]
    # Per branch: the positions whose logits predict each of its tokens.
    predictors: list[list[int]]

    @property
    def chain(self) -> bool:
        """Whether the nodes follow each other (at most one branch of several tokens, or
        branches each a prefix of the next): then a plain causal mask is exact."""
        n = len(self.positions) - len(self.parents)
        return all(parent == n - 1 + i for i, parent in enumerate(self.parents))


def _layout(row: Row) -> _Layout:
    n = len(row.prefix)
    if len(row.branches) == 1:  # a rolling window, a truncated request: one chain
        branch = row.branches[0]
        predict = list(range(n - 1, n + len(branch) - 1))
        return _Layout(row.prefix + branch[:-1], list(range(n + len(branch) - 1)), predict[:-1], [predict])
    ids, positions, parents = list(row.prefix), list(range(n)), []
    root: dict[int, tuple[int, dict]] = {}
    predictors = []
    for branch in row.branches:
        at, children = n - 1, root
        predict = [at]
        for depth, token in enumerate(branch[:-1]):
            if token not in children:
                children[token] = (len(ids), {})
                ids.append(token)
                positions.append(n + depth)
                parents.append(at)
            at, children = children[token]
            predict.append(at)
        predictors.append(predict)
    return _Layout(ids, positions, parents, predictors)


def _score_batch(model, batch: Sequence[Row], device) -> None:
    import torch

    layouts = [_layout(row) for row in batch]
    width = max(len(lay.ids) for lay in layouts)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    # For each scored token: its row in the batch, the position whose logits predict it, its id;
    # for each branch, the span of its tokens in those lists.
    where_row: list[int] = []
    where_pos: list[int] = []
    targets: list[int] = []
    spans: list[list[tuple[int, int]]] = []
    for b, (row, lay) in enumerate(zip(batch, layouts, strict=True)):
        ids[b, : len(lay.ids)] = torch.tensor(lay.ids)
        positions[b, : len(lay.ids)] = torch.tensor(lay.positions)
        spans.append([])
        for branch, predict in zip(row.branches, lay.predictors, strict=True):
            spans[b].append((len(targets), len(targets) + len(branch)))
            where_row += [b] * len(branch)
            where_pos += predict
            targets += branch
    kwargs = {}
    if not all(lay.chain for lay in layouts):
        kwargs = {"attention_mask": _tree_mask(layouts, width, model).to(device), "position_ids": positions.to(device)}
    rows_at, positions_at = torch.tensor(where_row, device=device), torch.tensor(where_pos, device=device)
    base, head = getattr(model, "base_model", None), model.get_output_embeddings()
    if base is not None and base is not model and head is not None and _plain_head(model):
        # The output projection only where a token is scored: the context's other positions
        # would cost a vocabulary-wide product each.
        hidden = base(ids.to(device), use_cache=False, **kwargs).last_hidden_state
        picked = head(hidden[rows_at, positions_at])
    else:
        picked = model(ids.to(device), use_cache=False, **kwargs).logits[rows_at, positions_at]
    picked = picked.float()
    target = torch.tensor(targets, device=device)
    # A token's log-probability is its logit less the log-sum-exp of its position's logits:
    # what log_softmax computes, without writing a vocabulary-wide row per token.
    # Summed in float32 per continuation, as lm-eval sums them.
    token_ll = (picked.gather(1, target[:, None])[:, 0] - torch.logsumexp(picked, dim=-1)).cpu()
    greedy = (picked.argmax(dim=-1) == target).cpu()
    for b, row in enumerate(batch):
        row.results = [(float(token_ll[i:j].sum()), bool(greedy[i:j].all())) for i, j in spans[b]]


def _tree_mask(layouts: Sequence[_Layout], width: int, model):
    """The additive 4D attention mask of a batch: causal over each prefix (and over a row
    that is one chain), every node seeing the prefix, its ancestors and itself; padding
    sees the first token only, so that no softmax runs over nothing."""
    import torch

    allowed = torch.zeros((len(layouts), width, width), dtype=torch.bool)
    allowed[:, :, 0] = True
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for b, lay in enumerate(layouts):
        if lay.chain:
            allowed[b, : len(lay.ids), : len(lay.ids)] = causal[: len(lay.ids), : len(lay.ids)]
            continue
        n = len(lay.ids) - len(lay.parents)
        allowed[b, :n, :n] = causal[:n, :n]
        allowed[b, n : len(lay.ids), :n] = True
        seen: list[list[int]] = []
        queries, keys = [], []
        for i, parent in enumerate(lay.parents):
            line = [*seen[parent - n], n + i] if parent >= n else [n + i]
            seen.append(line)
            queries += [n + i] * len(line)
            keys += line
        allowed[b, queries, keys] = True
    dtype = next(model.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]
