"""A tiny image classifier and datasets built on the spot, with nothing from the hub.

Tests, the demo and the benchmarks all need a real ``transformers`` model and real datasets
in the formats users upload. This module trains a small ViT on scikit-learn's bundled
digits (about a minute on 2 cores) and writes datasets as image-folder archives and as
Hugging Face style Parquet. A trained model is cached on disk keyed by a hash of its
recipe, so a second test session or benchmark run skips training.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

LABEL_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGE_SIZE = 32


@dataclass(frozen=True)
class Recipe:
    """Everything that changes the trained weights; its hash names the cache entry."""

    image_size: int = IMAGE_SIZE
    patch_size: int = 8
    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 128
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 0
    test_fraction: float = 0.25

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def digits_images(split: str = "test", *, recipe: Recipe = Recipe()) -> tuple[list, list[int]]:
    """The digits as 32×32 RGB PIL images and integer labels, split deterministically.

    ``split`` is ``"train"``, ``"test"`` or ``"all"``.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(recipe.seed).permutation(len(digits.target))
    n_test = int(len(order) * recipe.test_fraction)
    chosen = {"test": order[:n_test], "train": order[n_test:], "all": np.arange(len(order))}[split]
    images, labels = [], []
    for i in chosen:
        pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize((recipe.image_size,) * 2, Image.Resampling.BILINEAR).convert("RGB")
        images.append(image)
        labels.append(int(digits.target[i]))
    return images, labels


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def train_digits_vit(out_dir: str | Path, *, recipe: Recipe = Recipe()) -> Path:
    """Train the ViT and ``save_pretrained`` it (safetensors) with its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(recipe.seed)
    config = ViTConfig(  # type: ignore[call-arg]  # num_labels: PretrainedConfig's, which the stub leaves out
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
        hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        intermediate_size=recipe.intermediate_size,
        num_labels=len(LABEL_NAMES),
        id2label=dict(enumerate(LABEL_NAMES)),
        label2id={name: i for i, name in enumerate(LABEL_NAMES)},
    )
    model = ViTForImageClassification(config)
    processor = ViTImageProcessor(size={"height": recipe.image_size, "width": recipe.image_size})
    images, labels = digits_images("train", recipe=recipe)
    pixels = torch.from_numpy(np.asarray(processor(images=images, return_tensors="np")["pixel_values"]))
    targets = torch.tensor(labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate)
    steps_per_epoch = -(-len(targets) // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.learning_rate, total_steps=recipe.epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(recipe.seed)
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(targets), generator=generator)
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            batch = pixels[idx]
            # Light augmentation: shift by up to 2 pixels each way, filling with background.
            dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
            batch = torch.roll(batch, shifts=(dy, dx), dims=(2, 3))
            loss = model(pixel_values=batch, labels=targets[idx]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """``target``, built once by ``build(staging_dir)`` and renamed into place (atomic, safe
    across processes): a cache of trained models keyed by their recipe."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first; its copy is as good as ours
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def cached_digits_vit(cache_root: str | Path, *, recipe: Recipe = Recipe()) -> Path:
    """The trained model directory, training it once per recipe."""
    return build_once(Path(cache_root) / f"digits-vit-{recipe.digest()}", lambda d: train_digits_vit(d, recipe=recipe))


def archive_directory(source: str | Path, archive: str | Path, *, fmt: str = "zip") -> Path:
    """Pack a directory's files (flat paths relative to it) as ``zip`` or ``tar.gz``."""
    source, archive = Path(source), Path(archive)
    files = sorted(p for p in source.rglob("*") if p.is_file())
    if fmt == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                zf.write(path, path.relative_to(source).as_posix())
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for path in files:
                tf.add(path, path.relative_to(source).as_posix())
    return archive


def write_imagefolder_archive(
    archive: str | Path, splits: dict[str, tuple[list, list[int]]], *, fmt: str = "zip", label_names=LABEL_NAMES
) -> Path:
    """``split/class_name/NNNNN.png`` for each split's (images, labels)."""
    with tempfile.TemporaryDirectory() as tmp:
        for split, (images, labels) in splits.items():
            for i, (image, label) in enumerate(zip(images, labels)):
                path = Path(tmp, split, label_names[label], f"{i:05d}.png")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(png_bytes(image))
        return archive_directory(tmp, archive, fmt=fmt)


def write_hf_parquet(
    path: str | Path,
    images: list,
    labels: list[int],
    *,
    label_names=LABEL_NAMES,
    image_as_struct: bool = True,
    encoded: list[bytes] | None = None,
) -> Path:
    """Parquet as ``datasets`` writes an ``Image()`` + ``ClassLabel`` dataset.

    ``image`` is ``{bytes, path}`` (or plain bytes), and the schema metadata carries the
    features under ``huggingface`` so the label names travel with the file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = encoded if encoded is not None else [png_bytes(image) for image in images]
    if image_as_struct:
        image_column = pa.array(
            [{"bytes": b, "path": f"{i:05d}.png"} for i, b in enumerate(blobs)],
            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
    else:
        image_column = pa.array(blobs, type=pa.binary())
    features = {
        "image": {"_type": "Image"},
        "label": {"names": list(label_names), "_type": "ClassLabel"},
    }
    table = pa.table({"image": image_column, "label": pa.array(labels, type=pa.int64())})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, path)
    return Path(path)
