"""Causal language models: what ``workers.verify`` accepts as one, and how it loads and runs.

A causal language model is an ``AutoModelForCausalLM`` architecture ``transformers`` itself
implements, with its tokenizer files and, if present, ``generation_config.json`` and a chat
template beside the weights. As for text classifiers (``workers.text.model``), every file
a tokenizer or a template is read from is capped in size before anything opens it, and the
JSON ones are checked for remote code like ``config.json``. The tokenizer must fit the
model: every id it can emit must index a row of the input embedding.

Unlike a classifier's, a causal language model's tokenizer often has no padding token:
none is required, since the engine pads its batches itself (``workers.lm.scoring``). An
EOS token is only needed to generate, so its absence is reported, not refused here; an
evaluation of kind ``generate`` refuses it then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.modeltasks.text_generation import SPEC
from workers.failures import FailureReason, WorkerFailure
from workers.lm.engine import window_of
from workers.verify import ModelKind, load_tokenizer, load_weights

_MB = 1024**2
# Every tokenizer, generation and chat-template file the task allows, capped.
FILE_CAPS = {
    "tokenizer.json": 50 * _MB,
    "tokenizer_config.json": 5 * _MB,  # may hold a chat template
    "special_tokens_map.json": 1 * _MB,
    "added_tokens.json": 10 * _MB,
    "vocab.json": 20 * _MB,
    "merges.txt": 20 * _MB,
    "tokenizer.model": 20 * _MB,
    "generation_config.json": 1 * _MB,
    "chat_template.jinja": 1 * _MB,
    "chat_template.json": 1 * _MB,
}
# At least one of these holds the vocabulary.
VOCABULARY_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")
_PROBE = "Assay evaluates language models, and every text is hostile until validated."


def load_model(root: Path):
    """``(model, tokenizer)`` loaded safely, the tokenizer checked against the model.

    Raises:
        WorkerFailure: as ``workers.verify.load_weights``; ``load_error`` when the tokenizer
            cannot load; ``tokenizer_mismatch`` when its ids do not fit the model's embedding.
    """

    if not any((root / name).exists() for name in VOCABULARY_FILES):
        raise WorkerFailure(FailureReason.load_error, f"no tokenizer vocabulary: one of {list(VOCABULARY_FILES)} is needed")
    model = load_weights(root, CAUSAL_LM)
    tokenizer = load_tokenizer(root, model)
    return model, tokenizer


def run_one_batch(model, tokenizer) -> None:
    """One short text through the tokenizer and the model: the logits must have one row
    per token, a column for every token the tokenizer has, and be finite."""
    import torch

    try:
        ids = list(tokenizer(_PROBE)["input_ids"])[:16]
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if not ids and start is None:
            raise WorkerFailure(FailureReason.load_error, "the tokenizer encodes a sentence to no tokens")
        ids = ids or [start]
        with torch.inference_mode():
            logits = model(torch.tensor([ids]), use_cache=False).logits
    except WorkerFailure:
        raise
    except Exception as e:  # noqa: BLE001 -- the model's and tokenizer's own code paths failed on their files
        raise WorkerFailure(
            FailureReason.tokenizer_mismatch if isinstance(e, IndexError) else FailureReason.load_error,
            f"one forward pass failed: {type(e).__name__}: {e}",
        ) from e
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (1, len(ids)) or logits.shape[-1] < len(tokenizer):
        raise WorkerFailure(
            FailureReason.load_error,
            f"logits have shape {tuple(logits.shape)}, not (1, {len(ids)}, at least the {len(tokenizer):,} tokens)",
        )
    if not torch.isfinite(logits).all():
        raise WorkerFailure(FailureReason.load_error, "the model produced non-finite logits")


def describe(model, tokenizer) -> dict[str, Any]:
    """What a user needs to know before choosing an evaluation kind: whether the model can
    generate (an EOS token), can be prompted as a chat, and how long a context it reads."""
    return {
        "eos_token": tokenizer.eos_token,
        "bos_token": tokenizer.bos_token,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "context_length": window_of(model, tokenizer),
        "vocabulary": len(tokenizer),
    }


CAUSAL_LM = ModelKind(
    spec=SPEC,
    what="a causal language model",
    mapping="MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    required=("tokenizer_config.json",),
    configs=("tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.json"),
    load=load_model,
    run_one_batch=run_one_batch,
    max_bytes=FILE_CAPS,
    labelled=False,
    describe=describe,
)
