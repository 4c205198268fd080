"""Why a worker refused its input: one exception, one machine-readable reason each.

A ``WorkerFailure`` is a verdict on the user's input (unsafe archive, pickle weights, label
mismatch…); the runner records it as ``failed`` with ``reason`` and ``message``. Anything
else raised inside a worker is a bug or an outage, and is recorded as ``internal_error``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class FailureReason(StrEnum):
    # archives
    invalid_archive = "invalid_archive"  # not a zip / tar.gz, or corrupt
    unsafe_archive = "unsafe_archive"  # absolute path, '..', link, device, duplicate
    unsafe_path = "unsafe_path"  # a name from user data that would be written outside the work dir
    archive_too_large = "archive_too_large"  # total size or file count over the caps
    archive_bomb = "archive_bomb"  # compression ratio over the cap
    # models
    file_not_allowed = "file_not_allowed"
    file_too_large = "file_too_large"  # a model file over its cap (a tokenizer's vocabulary…)
    pickle_weights_refused = "pickle_weights_refused"
    remote_code_refused = "remote_code_refused"
    missing_weights = "missing_weights"
    weights_mismatch = "weights_mismatch"  # parameters missing from, or unknown to, the architecture
    unsupported_architecture = "unsupported_architecture"
    load_error = "load_error"
    tokenizer_mismatch = "tokenizer_mismatch"  # token ids beyond the model's embedding, positions beyond its table
    # datasets
    invalid_dataset = "invalid_dataset"  # also: a size over its bound (labels, splits, text)
    empty_dataset = "empty_dataset"
    too_many_invalid_images = "too_many_invalid_images"
    too_many_invalid_texts = "too_many_invalid_texts"  # texts too long, empty, with NUL bytes, not UTF-8…
    # evaluations
    label_mismatch = "label_mismatch"
    invalid_config = "invalid_config"  # an inference config the model cannot honour (max_length beyond its positions)
    input_not_ready = "input_not_ready"
    split_not_found = "split_not_found"
    inference_error = "inference_error"
    # anything unexpected: a bug or an outage, never the user's fault
    internal_error = "internal_error"


class WorkerFailure(Exception):
    """The task's input is refused; ``reason`` is stable, ``message`` is for people."""

    def __init__(self, reason: FailureReason, message: str, *, details: Any = None):
        super().__init__(f"{reason}: {message}")
        self.reason = FailureReason(reason)
        self.message = message
        self.details = details
