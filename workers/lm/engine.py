"""The three evaluation kinds of a language model, with lm-evaluation-harness's semantics.

Each takes the evaluated instances (dicts of dataset columns, in dataset order), the few-shot
pool, the config, a loaded model and tokenizer, and returns an ``LMResult``: one record per
instance (what the prediction shards will store) and the summary metrics. The metrics are
lm-eval's: ``acc``/``acc_norm`` the mean of per-instance hits (``numpy.argmax``, so the first
of tied choices), ``exact_match`` the mean of per-instance matches, and the perplexities
weighted by words or bytes over the whole set (``exp(-sum ll / sum words)``).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.modeltasks.text_generation import TextGenerationConfig
from workers.failures import FailureReason, WorkerFailure
from workers.lm.generation import generate
from workers.lm.prompts import FewshotSampler, PromptStyle, build_context, check_template, continuation_delimiter
from workers.lm.scoring import Encoder, Row, score_rows

DEFAULT_MAX_LENGTH = 2048  # lm-eval's, for a model and tokenizer that state no window
_UNSET_MAX_LENGTH = 1_000_000_000_000  # a tokenizer's model_max_length when it states none
_PUNCTUATION = str.maketrans("", "", string.punctuation)
REGEX_FALLBACK = "[invalid]"


@dataclass
class LMResult:
    records: list[dict[str, Any]]
    metrics: dict[str, float]
    truncated: int = 0  # instances whose prompt lost tokens on the left
    counts: dict[str, int] = field(default_factory=dict)


def window_of(model, tokenizer) -> int:
    """The model's context length as lm-eval resolves it: the config's ``n_positions``,
    ``max_position_embeddings`` or ``n_ctx``, else the tokenizer's ``model_max_length``."""
    config = getattr(model.config, "text_config", None) or model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    declared = getattr(tokenizer, "model_max_length", None)
    return int(declared) if declared is not None and declared < _UNSET_MAX_LENGTH else DEFAULT_MAX_LENGTH


def _style(config: TextGenerationConfig, tokenizer, columns: Sequence[str]) -> PromptStyle:
    check_template(config.prompt_template, columns)
    if config.apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise WorkerFailure(FailureReason.invalid_config, "apply_chat_template is set but the tokenizer has no chat template")
    return PromptStyle(
        template=config.prompt_template,
        num_fewshot=config.num_fewshot,
        fewshot_delimiter=config.fewshot_delimiter,
        target_delimiter=config.target_delimiter,
        chat_tokenizer=tokenizer if config.apply_chat_template else None,
    )


def _check_choice_instance(doc: Mapping[str, Any], where: str) -> None:
    choices, answer = doc.get("choices"), doc.get("answer")
    if not isinstance(choices, list) or not choices:
        raise WorkerFailure(FailureReason.invalid_dataset, f"{where}: choices must be a non-empty list")
    if not all(isinstance(c, str) and c for c in choices):
        raise WorkerFailure(FailureReason.invalid_dataset, f"{where}: every choice must be a non-empty string")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise WorkerFailure(
            FailureReason.invalid_dataset, f"{where}: answer {answer!r} is not an index into its {len(choices)} choices"
        )


def multiple_choice(
    model,
    tokenizer,
    docs: Sequence[Mapping[str, Any]],
    pool: Sequence[Mapping[str, Any]],
    config: TextGenerationConfig,
    *,
    same_split: bool,
    device="cpu",
    sampler: FewshotSampler | None = None,
) -> LMResult:
    """Score every choice of every instance; pick by log-likelihood and by it per character.

    ``sampler`` draws the few-shot examples (by default one over ``pool``); an evaluation
    run in parts passes the same one to each, so the draws go on where the last part left.
    """
    for i, doc in enumerate(docs):
        _check_choice_instance(doc, f"instance {i}")
    style = _style(config, tokenizer, list(docs[0]) if docs else [])
    sampler = sampler or FewshotSampler(pool, seed=config.seed, same_split=same_split)
    encoder = Encoder(tokenizer, window_of(model, tokenizer))
    delimiter = continuation_delimiter(style)
    groups = []
    for doc in docs:
        context = build_context(doc, sampler.sample(config.num_fewshot, doc), style, lambda d: d["choices"][d["answer"]])
        groups.append((context, [delimiter + choice for choice in doc["choices"]]))
    plans: list[tuple[list[Row], bool]] = []
    for pairs in encoder.encode_groups(groups):
        if all(p[0] == pairs[0][0] for p in pairs):
            plans.append(encoder.rows_for(pairs[0][0], [p[1] for p in pairs]))
        else:  # only an empty context gives choices different contexts: score them apart
            apart = [encoder.rows_for(ctx, [cont]) for ctx, cont in pairs]
            plans.append(([r for rs, _ in apart for r in rs], any(t for _, t in apart)))
    score_rows(model, [row for rows, _ in plans for row in rows], batch_size=config.batch_size, device=device)
    records, hits, hits_norm = [], [], []
    for doc, (rows, truncated) in zip(docs, plans, strict=True):
        results = [result for row in rows for result in row.results]
        lls = np.array([ll for ll, _ in results])
        lengths = np.array([float(len(c)) for c in doc["choices"]])
        pick, pick_norm = int(np.argmax(lls)), int(np.argmax(lls / lengths))
        hits.append(pick == doc["answer"])
        hits_norm.append(pick_norm == doc["answer"])
        records.append(
            {
                "choice_loglikelihoods": lls.tolist(),
                "choice_greedy": [g for _, g in results],
                "prediction": pick,
                "prediction_norm": pick_norm,
                "truncated": truncated,
            }
        )
    metrics = {"acc": float(np.mean(hits)) if hits else math.nan, "acc_norm": float(np.mean(hits_norm)) if hits else math.nan}
    return LMResult(records, metrics, truncated=sum(t for _, t in plans))


def _targets(doc: Mapping[str, Any], where: str) -> list[str]:
    targets = doc.get("targets")
    if targets is None and "target" in doc:
        targets = doc["target"]
    if isinstance(targets, str):
        return [targets]
    if isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        return targets
    raise WorkerFailure(FailureReason.invalid_dataset, f"{where}: needs a target string or a non-empty list of targets")


def normalise_answer(text: str, config: TextGenerationConfig) -> str:
    """What exact_match compares: lower-cased and without punctuation when asked (lm-eval's
    ``exact_match_hf_evaluate``)."""
    if config.ignore_case:
        text = text.lower()
    if config.ignore_punctuation:
        text = text.translate(_PUNCTUATION)
    return text


def extract_answer(output: str, pattern: re.Pattern[str] | None) -> str:
    """lm-eval's ``regex`` filter: the first match (its first non-empty group), stripped."""
    if pattern is None:
        return output
    found = pattern.findall(output)
    if not found:
        return REGEX_FALLBACK
    match = found[0]
    if isinstance(match, tuple):
        match = next((m for m in match if m), REGEX_FALLBACK)
    return match.strip()


def generate_answers(
    model,
    tokenizer,
    docs: Sequence[Mapping[str, Any]],
    pool: Sequence[Mapping[str, Any]],
    config: TextGenerationConfig,
    *,
    same_split: bool,
    device="cpu",
    sampler: FewshotSampler | None = None,
) -> LMResult:
    """Greedy outputs, scored by exact match against any of the instance's targets
    (``sampler`` as for ``multiple_choice``)."""
    golds = [_targets(doc, f"instance {i}") for i, doc in enumerate(docs)]
    try:
        pattern = re.compile(config.regex) if config.regex is not None else None
    except re.error as e:
        raise WorkerFailure(FailureReason.invalid_config, f"regex does not compile: {e}") from e
    style = _style(config, tokenizer, list(docs[0]) if docs else [])
    sampler = sampler or FewshotSampler(pool, seed=config.seed, same_split=same_split)
    prompts = [
        build_context(doc, sampler.sample(config.num_fewshot, doc), style, lambda d: _targets(d, "a few-shot example")[0])
        for doc in docs
    ]
    outputs, truncated = generate(
        model,
        tokenizer,
        prompts,
        max_length=window_of(model, tokenizer),
        max_new_tokens=config.max_new_tokens,
        stops=config.stop_strings,
        batch_size=config.batch_size,
        device=device,
    )
    records, matches = [], []
    for output, gold, cut in zip(outputs, golds, truncated, strict=True):
        answer = normalise_answer(extract_answer(output, pattern), config)
        match = any(answer == normalise_answer(g, config) for g in gold)
        matches.append(match)
        records.append({"output": output, "extracted": answer, "exact_match": match, "truncated": cut})
    return LMResult(records, {"exact_match": float(np.mean(matches)) if matches else math.nan}, truncated=sum(truncated))


def perplexity(model, tokenizer, docs: Sequence[Mapping[str, Any]], config: TextGenerationConfig, *, device="cpu") -> LMResult:
    """Rolling log-likelihood of each text over the model's window; perplexities weighted by
    the texts' words (``re.split(r"\\s+")``, as lm-eval counts them) and UTF-8 bytes."""
    encoder = Encoder(tokenizer, window_of(model, tokenizer))
    texts = []
    for i, doc in enumerate(docs):
        text = doc.get("text")
        if not isinstance(text, str) or not text:
            raise WorkerFailure(FailureReason.invalid_dataset, f"instance {i}: text must be a non-empty string")
        texts.append(text)
    windows = [encoder.rolling_windows(text) for text in texts]
    score_rows(model, [row for rows in windows for row in rows], batch_size=config.batch_size, device=device)
    records, total_ll, words, nbytes = [], 0.0, 0, 0
    for text, rows in zip(texts, windows, strict=True):
        ll = sum(row.results[0][0] for row in rows)
        n_words, n_bytes = len(re.split(r"\s+", text)), len(text.encode("utf-8"))
        tokens = sum(len(row.branches[0]) for row in rows)
        records.append({"loglikelihood": ll, "words": n_words, "bytes": n_bytes, "tokens": tokens, "truncated": False})
        total_ll, words, nbytes = total_ll + ll, words + n_words, nbytes + n_bytes
    metrics = {
        "word_perplexity": math.exp(-total_ll / words) if words else math.nan,
        "byte_perplexity": math.exp(-total_ll / nbytes) if nbytes else math.nan,
        "bits_per_byte": -total_ll / nbytes / math.log(2) if nbytes else math.nan,
    }
    return LMResult(records, metrics)
