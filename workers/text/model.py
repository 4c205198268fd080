"""Text classifiers: what ``workers.verify`` accepts as one, and how it loads and runs.

A text classifier is a ``*ForSequenceClassification`` model ``transformers`` implements,
with its tokenizer files beside the weights. Tokenizer files are read by Rust and Python
code before any model runs, so each is capped in size (measured on disk, not taken from a
header) before anything opens it, and ``tokenizer_config.json`` is checked for remote code
like ``config.json``. Once loaded, the tokenizer must fit the model: every id it can emit
(its vocabulary and added tokens) must index a row of the input embedding, and the length
texts are cut to must fit the model's position table; a tokenizer that lies about either
would fail mid-evaluation, or silently read another token's embedding.
"""

from __future__ import annotations

from pathlib import Path

from shared.modeltasks.text_classification import SPEC
from workers.failures import FailureReason, WorkerFailure
from workers.verify import ModelKind, load_tokenizer, load_weights

_MB = 1024**2
# Every tokenizer file the task allows (shared.modeltasks.text_classification), capped.
TOKENIZER_CAPS = {
    "tokenizer.json": 50 * _MB,
    "tokenizer_config.json": 1 * _MB,
    "special_tokens_map.json": 1 * _MB,
    "added_tokens.json": 10 * _MB,
    "vocab.txt": 20 * _MB,
    "vocab.json": 20 * _MB,
    "merges.txt": 20 * _MB,
}
# At least one of these holds the vocabulary.
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")
# Beyond any position table a text classifier has; below this, model_max_length is meant.
_UNSET_MAX_LENGTH = 1_000_000
_PROBE_WORDS = ["assay", "evaluates", "models", "on", "datasets", "and", "every", "text", "is", "hostile", "until", "validated"]


def load_model(root: Path):
    """``(model, tokenizer)`` loaded safely, the tokenizer checked against the model.

    Raises:
        WorkerFailure: as ``workers.verify.load_weights``; ``unsupported_architecture`` for a
            regression head; ``load_error`` when the tokenizer cannot load;
            ``tokenizer_mismatch`` when its ids do not fit the model's embedding.
    """

    if not any((root / name).exists() for name in VOCABULARY_FILES):
        raise WorkerFailure(FailureReason.load_error, f"no tokenizer vocabulary: one of {list(VOCABULARY_FILES)} is needed")
    model = load_weights(root, TEXT_CLASSIFIER)
    if model.config.problem_type == "regression":
        raise WorkerFailure(
            FailureReason.unsupported_architecture, "the model is a regression model (problem_type), not a classifier"
        )
    tokenizer = load_tokenizer(root, model)
    if tokenizer.pad_token_id is None:
        raise WorkerFailure(
            FailureReason.load_error, "the tokenizer has no padding token (set pad_token in tokenizer_config.json)"
        )
    return model, tokenizer


def position_limit(model) -> int | None:
    """The longest input the model's position table takes, or None when it has none.

    Models that number positions after the padding index (RoBERTa and its kin keep it as
    ``embeddings.padding_idx``) lose ``padding_idx + 1`` positions of the table.
    """
    positions = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    padding_idx = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
    return positions - (padding_idx + 1) if isinstance(padding_idx, int) else positions


def resolve_max_length(model, tokenizer, requested: int | None) -> int:
    """The length texts are cut to: ``requested``, or by default the tokenizer's
    ``model_max_length`` capped by the model's position table.

    Raises:
        WorkerFailure: ``invalid_config`` when ``requested`` exceeds the position table.
    """
    limit = position_limit(model)
    declared = tokenizer.model_max_length if 0 < tokenizer.model_max_length < _UNSET_MAX_LENGTH else None
    default = min(n for n in (limit, declared, _UNSET_MAX_LENGTH) if n is not None)
    if requested is None:
        return default
    if limit is not None and requested > limit:
        raise WorkerFailure(FailureReason.invalid_config, f"max_length {requested} is more than the model's {limit} positions")
    return requested


def run_one_batch(model, tokenizer) -> None:
    """Two synthetic texts, one cut at the model's longest input, through the tokenizer and
    the model: shapes and values must hold."""
    import torch

    max_length = resolve_max_length(model, tokenizer, None)
    long_text = " ".join(_PROBE_WORDS[i % len(_PROBE_WORDS)] for i in range(min(max_length, 4096) + 8))
    try:
        inputs = tokenizer(["a short text", long_text], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**inputs).logits
    except Exception as e:  # noqa: BLE001 -- the model's and tokenizer's own code paths failed on their files
        raise WorkerFailure(
            FailureReason.tokenizer_mismatch if isinstance(e, IndexError) else FailureReason.load_error,
            f"one batch failed: {type(e).__name__}: {e}",
        ) from e
    expected = (2, model.config.num_labels)
    if tuple(logits.shape) != expected:
        raise WorkerFailure(FailureReason.load_error, f"logits have shape {tuple(logits.shape)}, not {expected}")
    if not torch.isfinite(logits).all():
        raise WorkerFailure(FailureReason.load_error, "the model produced non-finite logits")


TEXT_CLASSIFIER = ModelKind(
    spec=SPEC,
    what="a text classifier",
    mapping="MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    required=("tokenizer_config.json",),
    configs=("tokenizer_config.json", "special_tokens_map.json"),
    load=load_model,
    run_one_batch=run_one_batch,
    max_bytes=TOKENIZER_CAPS,
)
