"""Verify an uploaded model: a ``transformers`` ``save_pretrained`` directory, zipped or tarred.

The order of checks is the order of danger: the archive is extracted safely; every file
name must be on an allow-list, with pickle files (``pytorch_model.bin``, ``*.pt``…) and
Python files refused by name before anything reads them; the configs are read as plain
JSON and refused if they ask for remote code; the architecture must be an image
classifier ``transformers`` itself implements, with a bounded label set of usable names.
Only then is the model loaded — from safetensors only, with ``trust_remote_code=False`` and
local files only, and strictly: a checkpoint whose tensors do not match the architecture's
parameters one for one (missing, unexpected or of another shape) is refused, since
``transformers`` would initialise the missing ones at random on every load — and run on
one batch of synthetic images.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.entities import MAX_CLASSES, check_class_names
from workers.archive import ArchiveLimits, extract_archive, strip_common_root
from workers.failures import FailureReason, WorkerFailure

ALLOWED_FILES = frozenset(
    {
        "config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "README.md",
        "LICENSE",
        "LICENSE.md",
        "LICENSE.txt",
        ".gitattributes",
    }
)
_SAFETENSORS_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5"})
CODE_SUFFIXES = frozenset({".py", ".pyc", ".pyo", ".so", ".pyd"})
# Magic numbers of formats that may carry pickles, sniffed in files named .safetensors.
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


@dataclass(frozen=True)
class ModelReport:
    architecture: str
    model_type: str
    label_names: list[str]
    parameter_count: int
    size: int  # bytes of the verified files
    files: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_files(root: Path) -> list[str]:
    """The model's file names, flat; refuses anything not on the allow-list."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    for name in files:
        base = name.rsplit("/", 1)[-1]
        suffix = Path(base).suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            raise WorkerFailure(
                FailureReason.pickle_weights_refused,
                f"{name}: pickle-based files can run code when loaded; upload safetensors weights",
            )
        if suffix in CODE_SUFFIXES:
            raise WorkerFailure(FailureReason.remote_code_refused, f"{name}: model code is never run")
    for name in files:
        if "/" in name or not (name in ALLOWED_FILES or _SAFETENSORS_SHARD.fullmatch(name)):
            raise WorkerFailure(
                FailureReason.file_not_allowed,
                f"{name}: not an allowed file of a save_pretrained directory",
                details={"allowed": sorted(ALLOWED_FILES) + ["model-NNNNN-of-NNNNN.safetensors"]},
            )
    weights = [n for n in files if n.endswith(".safetensors")]
    if not weights:
        raise WorkerFailure(FailureReason.missing_weights, "no model.safetensors weights in the archive")
    for name in weights:
        with open(root / name, "rb") as f:
            head = f.read(4)
        if head.startswith(_PICKLE_MAGIC):
            raise WorkerFailure(FailureReason.pickle_weights_refused, f"{name} is a pickle, not safetensors")
    for required in ("config.json", "preprocessor_config.json"):
        if required not in files:
            raise WorkerFailure(FailureReason.load_error, f"{required} is missing")
    return files


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise WorkerFailure(FailureReason.load_error, f"{path.name} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise WorkerFailure(FailureReason.load_error, f"{path.name} is not a JSON object")
    return value


def check_configs(root: Path) -> tuple[str, str]:
    """(model_type, architecture) from ``config.json``, which must need no remote code."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    config = _read_json(root / "config.json")
    for name in ("config.json", "preprocessor_config.json", "processor_config.json"):
        if not (root / name).exists():
            continue
        data = config if name == "config.json" else _read_json(root / name)
        if "auto_map" in data or data.get("trust_remote_code"):
            raise WorkerFailure(
                FailureReason.remote_code_refused, f"{name} asks for remote code (auto_map); it is never run"
            )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise WorkerFailure(FailureReason.unsupported_architecture, f"unknown model_type {model_type!r}")
    supported = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.get(model_type)
    if supported is None:
        raise WorkerFailure(
            FailureReason.unsupported_architecture, f"model_type {model_type!r} is not an image classifier"
        )
    if not isinstance(supported, str):  # a model type with several image-classification heads
        raise WorkerFailure(
            FailureReason.unsupported_architecture, f"model_type {model_type!r} has several image classifiers: {list(supported)}"
        )
    _check_label_space(config)
    architectures = config.get("architectures") or [supported]
    if supported not in architectures:
        raise WorkerFailure(
            FailureReason.unsupported_architecture,
            f"architectures {architectures} do not include {supported}, the image classifier for {model_type!r}",
        )
    return model_type, supported


def _check_label_space(config: dict) -> None:
    """The label set a config declares is bounded, and its names usable (read as JSON,
    before anything sizes a classifier head by it)."""
    id2label = config.get("id2label")
    count = len(id2label) if isinstance(id2label, dict) else config.get("num_labels", 2)
    if not isinstance(count, int) or not 1 <= count <= MAX_CLASSES:
        raise WorkerFailure(FailureReason.load_error, f"config.json declares {count!r} labels; 1 to {MAX_CLASSES} are allowed")
    try:
        check_class_names([str(name) if isinstance(name, int) else name for name in (id2label or {}).values()])
    except ValueError as e:
        raise WorkerFailure(FailureReason.load_error, f"config.json id2label: {e}") from e


def _check_loading_info(info: dict) -> None:
    """Refuses a checkpoint that does not fill the architecture's parameters exactly."""
    found = {
        "missing": sorted(info.get("missing_keys") or ()),
        "unexpected": sorted(info.get("unexpected_keys") or ()),
        "of another shape": sorted(str(k) for k in info.get("mismatched_keys") or ()),
    }
    if any(found.values()):
        parts = [f"{len(keys)} {what} ({', '.join(map(str, keys[:3]))}{', …' if len(keys) > 3 else ''})" for what, keys in found.items() if keys]
        raise WorkerFailure(
            FailureReason.weights_mismatch,
            "the weights do not match the architecture: parameters " + "; ".join(parts),
            details={what: keys[:50] for what, keys in found.items()},
        )


def _check_size_before_loading(root: Path) -> None:
    """The architecture the config describes, built on the meta device (no memory), must
    not hold more parameters than the checkpoint has values: otherwise loading would
    allocate, and initialise at random, whatever the config asks for (a config is a few
    bytes; the parameters it sizes need not be)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForImageClassification

    try:
        config = AutoConfig.from_pretrained(root, trust_remote_code=False, local_files_only=True)
        with torch.device("meta"):
            skeleton = AutoModelForImageClassification.from_config(config, trust_remote_code=False)
        expected = sum(p.numel() for p in skeleton.parameters())
        stored = 0
        for path in sorted(root.glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as f:  # reads the header only
                for key in f.keys():
                    stored += math.prod(f.get_slice(key).get_shape())
    except Exception as e:  # noqa: BLE001 -- as in load_model: these files are the upload's
        raise WorkerFailure(FailureReason.load_error, f"{type(e).__name__}: {e}") from e
    if stored < expected:
        raise WorkerFailure(
            FailureReason.weights_mismatch,
            f"the weights do not match the architecture: parameters missing "
            f"(the checkpoint holds {stored:,} values, the architecture needs {expected:,})",
        )


def load_model(root: Path):
    """``(model, image_processor)`` loaded safely: safetensors only, no remote code, no hub,
    every parameter from the checkpoint (so two loads are the same model).

    Raises:
        WorkerFailure: ``weights_mismatch`` when parameters are missing, unexpected or of
            another shape; ``load_error`` when the files cannot be loaded at all.
    """
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    _check_size_before_loading(root)
    try:
        # Mismatched shapes are reported (below) rather than raised, so all three kinds
        # of mismatch get the same reason.
        model, info = AutoModelForImageClassification.from_pretrained(
            root, trust_remote_code=False, use_safetensors=True, local_files_only=True,
            output_loading_info=True, ignore_mismatched_sizes=True,
        )
        # PIL, the reference backend, whatever else is installed: the same pixels everywhere,
        # and the processors workers.pixels reproduces bit for bit.
        processor = AutoImageProcessor.from_pretrained(root, trust_remote_code=False, local_files_only=True, backend="pil")
    except Exception as e:  # noqa: BLE001
        # Every earlier check passed, so whatever transformers or safetensors raise on these
        # files (SafetensorError, size mismatches, bad processor fields…) is the upload's fault.
        raise WorkerFailure(FailureReason.load_error, f"{type(e).__name__}: {e}") from e
    _check_loading_info(info)
    return model.eval(), processor


def label_names(model) -> list[str]:
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(model.config.num_labels)]


def run_one_batch(model, processor) -> None:
    """Two synthetic images through the processor and the model: shapes and values must hold."""
    import numpy as np
    import torch
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(2)]
    try:
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            logits = model(pixel_values=pixels).logits
    except Exception as e:  # noqa: BLE001 -- as in load_model: the model's own code path failed
        raise WorkerFailure(FailureReason.load_error, f"one batch failed: {type(e).__name__}: {e}") from e
    expected = (2, model.config.num_labels)
    if tuple(logits.shape) != expected:
        raise WorkerFailure(FailureReason.load_error, f"logits have shape {tuple(logits.shape)}, not {expected}")
    if not torch.isfinite(logits).all():
        raise WorkerFailure(FailureReason.load_error, "the model produced non-finite logits")


def verify_model_dir(root: str | Path) -> ModelReport:
    """Verify a ``save_pretrained`` directory in place.

    Raises:
        WorkerFailure: ``pickle_weights_refused``, ``remote_code_refused``,
            ``file_not_allowed``, ``missing_weights``, ``weights_mismatch``, ``unsupported_architecture`` or
            ``load_error``.
    """
    root = Path(root)
    files = check_files(root)
    model_type, architecture = check_configs(root)
    model, processor = load_model(root)
    run_one_batch(model, processor)
    return ModelReport(
        architecture=architecture,
        model_type=model_type,
        label_names=label_names(model),
        parameter_count=sum(p.numel() for p in model.parameters()),
        size=sum((root / name).stat().st_size for name in files),
        files=files,
    )


def verify_model_archive(
    archive: str | Path, work_dir: str | Path, *, limits: ArchiveLimits = ArchiveLimits()
) -> tuple[Path, ModelReport]:
    """Extract ``archive`` safely under ``work_dir`` and verify it.

    Returns the directory of verified files and the report. Raises ``WorkerFailure``.
    """
    extracted = extract_archive(archive, work_dir, limits=limits)
    root = strip_common_root(extracted)
    return root, verify_model_dir(root)
