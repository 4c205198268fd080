"""Text generation: a causal language model (``AutoModelForCausalLM``) evaluated the way
lm-evaluation-harness evaluates one, so that its numbers mean what users expect.

Three kinds of evaluation, chosen in the config:

- ``multiple_choice``: each choice scored by the summed log-likelihood of
  ``target_delimiter + choice`` after the prompt; ``acc`` and ``acc_norm`` (normalised by
  the choice's length in characters);
- ``generate``: greedy decoding to ``max_new_tokens`` or the first ``until`` string, scored
  by ``exact_match``;
- ``perplexity``: rolling log-likelihood of plain texts over windows of the model's
  context; ``word_perplexity``, ``byte_perplexity`` and ``bits_per_byte``.

Prompts are built from a template of ``{column}`` fields with ``num_fewshot`` solved
examples drawn from the few-shot split with a fixed seed, as lm-eval draws them.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from shared.modeltasks.base import SPLIT_PATTERN, Column, ModelTaskSpec, TaskConfig

EvaluationKind = Literal["multiple_choice", "generate", "perplexity"]
MAX_CHOICES = 64
MAX_NEW_TOKENS = 4096

# The metrics each kind reports (names in shared.metrics once the task is wired in).
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "multiple_choice": ("acc", "acc_norm"),
    "generate": ("exact_match",),
    "perplexity": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
}
# What a leaderboard of a dataset of each shape ranks by, unless asked otherwise.
HEADLINES: dict[str, str] = {"multiple_choice": "acc_norm", "generate": "exact_match", "perplexity": "bits_per_byte"}
MAX_PROMPT_STORED = 4000  # characters of each instance's own prompt the prediction shards keep
MAX_TEXT_EXCERPT = 200  # characters of each perplexity text they keep

# The template each kind uses when the config names none: the shape's own prompt column.
DEFAULT_TEMPLATES: dict[str, str] = {"multiple_choice": "{question}", "generate": "{prompt}", "perplexity": "{text}"}


def _cross_field_rules(schema: dict[str, Any]) -> None:
    """Say in the JSON Schema what the validator below checks across fields."""
    schema["allOf"] = [
        {
            "if": {"properties": {"num_fewshot": {"minimum": 1}}, "required": ["num_fewshot"]},
            "then": {"properties": {"fewshot_split": {"type": "string"}}, "required": ["fewshot_split"]},
        },
        {
            "if": {"properties": {"kind": {"const": "perplexity"}}, "required": ["kind"]},
            "then": {
                "properties": {"num_fewshot": {"const": 0}, "template": {"type": "null"}, "apply_chat_template": {"const": False}}
            },
        },
    ]


class TextGenerationConfig(TaskConfig):
    """How to evaluate a language model. Every field but ``batch_size`` changes results."""

    model_config = ConfigDict(json_schema_extra=_cross_field_rules)

    kind: EvaluationKind = Field(default="multiple_choice", description="What is measured, and so which dataset shape.")
    template: str | None = Field(
        default=None,
        max_length=20_000,
        description="The prompt, with {column} fields filled from each instance ({{ and }} are literal braces); "
        "by default {question} (multiple_choice) or {prompt} (generate). Perplexity reads the text as it is.",
    )
    num_fewshot: int = Field(default=0, ge=0, le=64, description="Solved examples put before each prompt.")
    seed: int = Field(default=1234, description="Seeds the draw of few-shot examples (lm-eval's default).")
    fewshot_split: str | None = Field(
        default=None,
        pattern=SPLIT_PATTERN,
        description="The dataset split few-shot examples are drawn from (required when num_fewshot > 0); "
        "when it is the evaluated split, an instance is never its own example.",
    )
    fewshot_delimiter: str = Field(default="\n\n", max_length=256, description="Between two few-shot examples.")
    target_delimiter: str = Field(default=" ", max_length=256, description="Between a prompt and its answer.")
    max_new_tokens: int = Field(default=256, ge=1, le=MAX_NEW_TOKENS, description="The most tokens a generation gets.")
    until: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None,
        max_length=16,
        description="Generation stops at the first of these strings (and the EOS token); by default the fewshot_delimiter.",
    )
    ignore_case: bool = Field(default=False, description="exact_match: compare lower-cased.")
    ignore_punctuation: bool = Field(default=False, description="exact_match: drop ASCII punctuation before comparing.")
    regex: str | None = Field(
        default=None,
        max_length=1000,
        description="exact_match: compare the first match of this pattern in the output (its first non-empty group, "
        "stripped) instead of the whole output; no match compares as '[invalid]'.",
    )
    apply_chat_template: bool = Field(default=False, description="Wrap each prompt in the tokenizer's chat template.")
    batch_size: int = Field(default=32, ge=1, le=4096, description="Sequences per forward pass (speed only).")

    RESULT_FIELDS: ClassVar[tuple[str, ...]] = (
        "kind",
        "template",
        "num_fewshot",
        "seed",
        "fewshot_split",
        "fewshot_delimiter",
        "target_delimiter",
        "max_new_tokens",
        "until",
        "ignore_case",
        "ignore_punctuation",
        "regex",
        "apply_chat_template",
    )

    @model_validator(mode="after")
    def _fewshot_has_a_split(self) -> TextGenerationConfig:
        if self.num_fewshot > 0 and self.fewshot_split is None:
            raise ValueError("num_fewshot > 0 needs fewshot_split: the split the examples are drawn from")
        if self.kind == "perplexity" and (self.num_fewshot or self.template is not None or self.apply_chat_template):
            raise ValueError("perplexity scores each text as it is: no template, few-shot examples or chat template")
        return self

    def other_splits(self, split: str) -> list[str]:
        if self.num_fewshot and self.fewshot_split is not None and self.fewshot_split != split:
            return [self.fewshot_split]
        return []

    @property
    def prompt_template(self) -> str:
        return self.template if self.template is not None else DEFAULT_TEMPLATES[self.kind]

    @property
    def stop_strings(self) -> list[str]:
        return list(self.until) if self.until is not None else [self.fewshot_delimiter]


# The prediction shards: every row of an evaluation has the common columns and its kind's.
# A result set's kind is known by its columns (``choice_loglikelihoods``, ``output`` or
# ``loglikelihood``). ``correct`` is the instance's verdict: the pick by log-likelihood is
# the answer (multiple_choice), the output matches a target (generate).
COMMON_PREDICTIONS: tuple[Column, ...] = (
    Column("instance_id", "string", description="The dataset instance."),
    Column("truncated", "bool", description="The prompt lost tokens on the left to fit the model's window."),
)
PROMPT = Column(
    "prompt", "string", description=f"The instance's own prompt (no few-shot examples), {MAX_PROMPT_STORED:,} characters at most."
)
KIND_PREDICTIONS: dict[str, tuple[Column, ...]] = {
    "multiple_choice": (
        PROMPT,
        Column("choices", "list<string>", description="The choices."),
        Column("answer", "int32", description="The index of the right choice."),
        Column(
            "choice_loglikelihoods",
            "list<float64>",
            description="Per choice, the summed log-likelihood of target_delimiter + choice after the prompt.",
        ),
        Column("choice_greedy", "list<bool>", description="Per choice, whether it is the greedy continuation."),
        Column("prediction", "int32", description="The pick by log-likelihood."),
        Column("prediction_norm", "int32", description="The pick by log-likelihood per character."),
        Column("correct", "bool", description="prediction == answer (acc)."),
        Column("correct_norm", "bool", description="prediction_norm == answer (acc_norm)."),
    ),
    "generate": (
        PROMPT,
        Column("targets", "list<string>", description="The right answers."),
        Column("output", "string", description="The generated text, cut before the first stop string."),
        Column(
            "extracted",
            "string",
            description="What exact_match compared: the output after the regex filter and the normalisation.",
        ),
        Column("correct", "bool", description="The extracted answer equals a normalised target (exact_match)."),
    ),
    "perplexity": (
        Column("text_excerpt", "string", description=f"The first {MAX_TEXT_EXCERPT} characters of the text."),
        Column("loglikelihood", "float64", description="The text's rolling log-likelihood, in nats."),
        Column("words", "int64", description="Its words, as lm-eval counts them (split on whitespace)."),
        Column("bytes", "int64", description="Its UTF-8 bytes."),
    ),
}
# What GET /v1/tasks lists: the common columns, then each kind's (optional: one kind's only).
PREDICTIONS: tuple[Column, ...] = COMMON_PREDICTIONS + tuple(
    {
        c.name: Column(c.name, c.type, required=False, description=c.description)
        for columns in KIND_PREDICTIONS.values()
        for c in columns
    }.values()
)


def kind_of_columns(columns: set[str] | frozenset[str]) -> str | None:
    """The kind of a result set with these columns, or None when it matches none."""
    for kind, wanted in KIND_PREDICTIONS.items():
        if {c.name for c in wanted} <= columns:
            return kind
    return None


SPEC = ModelTaskSpec(
    name="text-generation",
    description="A transformers causal language model with its tokenizer (save_pretrained directory, safetensors), "
    "evaluated as lm-evaluation-harness does: multiple choice, generation or perplexity.",
    auto_class="AutoModelForCausalLM",
    architecture_suffix="ForCausalLM",
    model_files=frozenset(
        {
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "added_tokens.json",
            "vocab.json",
            "merges.txt",
            "tokenizer.model",
            "generation_config.json",
            "chat_template.jinja",
            "chat_template.json",
        }
    ),
    dataset_formats=("parquet", "jsonl"),
    dataset_columns=(
        Column("instance_id", "string", description="The row's id column if it has one, else its position."),
        Column("question", "string", required=False, description="multiple_choice: the question."),
        Column("context", "string", required=False, description="multiple_choice: a passage the question is about."),
        Column("choices", "list<string>", required=False, description=f"multiple_choice: 1 to {MAX_CHOICES} answers."),
        Column("answer", "int64", required=False, description="multiple_choice: the index of the right choice."),
        Column("prompt", "string", required=False, description="generate: what the model continues."),
        Column(
            "targets",
            "list<string>",
            required=False,
            description="generate: the right answers (a `target` string column is read as one).",
        ),
        Column("text", "string", required=False, description="perplexity: the text scored."),
    ),
    config=TextGenerationConfig,
    prediction_columns=PREDICTIONS,
    metrics=tuple(name for names in KIND_METRICS.values() for name in names),
    gpu=True,
    dataset_shapes=tuple(KIND_METRICS),
    shape_field="kind",
    shape_headline=HEADLINES,
)
