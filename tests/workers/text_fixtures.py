"""Tiny text classifiers and text datasets built on the spot: nothing is downloaded.

``build_text_classifier`` trains a WordPiece tokenizer with the ``tokenizers`` package on
generated sentences and saves a BERT-style sequence classifier built from its config
(random weights, drawn wide enough that its predictions differ from text to text) beside
it, as ``save_pretrained`` writes them. The API, end-to-end tests and the benchmark reuse
these builders: import them as ``tests.workers.text_fixtures``.
"""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

LABEL_NAMES = ["negative", "neutral", "positive"]
WORDS = [
    "the",
    "a",
    "film",
    "movie",
    "plot",
    "actor",
    "scene",
    "story",
    "was",
    "is",
    "very",
    "quite",
    "not",
    "really",
    "good",
    "great",
    "bad",
    "awful",
    "fine",
    "dull",
    "brilliant",
    "boring",
    "funny",
    "sad",
    "long",
    "short",
    "music",
    "score",
    "camera",
    "light",
    "dark",
    "end",
    "start",
    "moment",
    "I",
    "we",
    "they",
    "loved",
    "hated",
    "liked",
    "watched",
    "saw",
    "again",
    "never",
    "always",
    "best",
    "worst",
    "ever",
    "and",
    "but",
    "or",
    "so",
    "because",
]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def sentences(n: int, *, seed: int = 0, min_words: int = 3, max_words: int = 20) -> list[str]:
    """``n`` sentences of ``min_words`` to ``max_words`` words, with some made-up words
    (split into word pieces) and punctuation."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [
            rng.choice(WORDS)
            if rng.random() < 0.85
            else "".join(rng.choice("bcdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4)))
            for _ in range(rng.randint(min_words, max_words))
        ]
        out.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ""]))
    return out


def train_tokenizer(vocab_size: int = 500):
    """A ``BertTokenizerFast`` around a WordPiece model trained on generated sentences."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import BertTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(
        sentences(2000, seed=1), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    )
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer.decoder = decoders.WordPiece()
    return BertTokenizerFast(tokenizer_object=tokenizer)


def build_text_classifier(
    target: Path,
    *,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate_size: int = 64,
    max_positions: int = 128,
    label_names: list[str] = LABEL_NAMES,
    seed: int = 0,
) -> Path:
    """A ``save_pretrained`` directory of a ``BertForSequenceClassification`` and its
    tokenizer (safetensors), built once: an existing ``target`` is returned as it is."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    if (target / "config.json").exists():
        return target
    tokenizer = train_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
        initializer_range=0.3,  # wide weights: logits far apart, so top-1 has no near-ties
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    staging = target.with_name(target.name + ".staging")
    model.save_pretrained(staging)
    tokenizer.model_max_length = max_positions
    tokenizer.save_pretrained(staging)
    staging.rename(target)
    return target


def zip_directory(directory: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(directory.iterdir()):
            zf.write(path, path.name)
    return archive


def labelled(n: int, *, seed: int = 0, pairs: bool = False) -> dict[str, list]:
    """Columns of ``n`` rows: ``text``, ``label`` (an index into ``LABEL_NAMES``) and, with
    ``pairs``, a ``text_pair`` on every other row."""
    rng = random.Random(seed)
    texts = sentences(n, seed=seed)
    columns: dict[str, list] = {"text": texts, "label": [rng.randrange(len(LABEL_NAMES)) for _ in texts]}
    if pairs:
        columns["text_pair"] = [s if i % 2 else None for i, s in enumerate(sentences(n, seed=seed + 1))]
    return columns


def write_hf_parquet(path: Path, columns: dict[str, list], label_names: list[str] = LABEL_NAMES) -> Path:
    """Parquet as ``datasets`` writes it: integer labels, their names in a ``ClassLabel``
    feature in the schema's ``huggingface`` metadata."""
    features = {"text": {"dtype": "string", "_type": "Value"}, "label": {"names": label_names, "_type": "ClassLabel"}}
    if "text_pair" in columns:
        features["text_pair"] = {"dtype": "string", "_type": "Value"}
    table = pa.table(columns)
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return path


def write_jsonl(path: Path, columns: dict[str, list], label_names: list[str] = LABEL_NAMES) -> Path:
    """JSON Lines with string labels (names)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(len(columns["text"])):
            record = {name: values[i] for name, values in columns.items() if values[i] is not None}
            record["label"] = label_names[record["label"]]
            f.write(json.dumps(record) + "\n")
    return path


def write_csv(path: Path, columns: dict[str, list], label_names: list[str] = LABEL_NAMES) -> Path:
    """CSV with a header and string labels; an absent text pair is an empty field."""
    import csv

    names = list(columns)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for i in range(len(columns["text"])):
            row = {name: columns[name][i] for name in names}
            row["label"] = label_names[row["label"]]
            writer.writerow(["" if row[n] is None else row[n] for n in names])
    return path
