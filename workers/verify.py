"""Verify an uploaded model: a ``transformers`` ``save_pretrained`` directory, zipped or tarred.

The order of checks is the order of danger: the archive is extracted safely; every file
name must be on an allow-list, with pickle files (``pytorch_model.bin``, ``*.pt``…) and
Python files refused by name before anything reads them, and each file the kind caps
(a tokenizer's vocabulary…) no larger than its cap; the configs are read as plain JSON and
refused if they ask for remote code; the architecture must be one ``transformers`` itself
implements for the kind (an image classifier, a text classifier…), with a bounded label set
of usable names. Only then is the model loaded — from safetensors only, with
``trust_remote_code=False`` and local files only, and strictly: a checkpoint whose tensors
do not match the architecture's parameters one for one (missing, unexpected or of another
shape) is refused, since ``transformers`` would initialise the missing ones at random on
every load — and run on one batch of synthetic input.

Every task shares these checks; a ``ModelKind`` says what differs between them: the auto
class and the mapping of architectures it accepts, the files beside the weights, which of
them must be present and their size caps, how the preprocessor loads and what one batch is.
The image classifier's kind is defined here (``IMAGE_CLASSIFIER``, the default of every
function); the text classifier's in ``workers.text.model``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shared.entities import MAX_CLASSES, check_class_names
from shared.modeltasks import ModelTaskSpec, image_classification
from workers.archive import ArchiveLimits, extract_archive, strip_common_root
from workers.failures import FailureReason, WorkerFailure

# Files of every kind's directory; a kind adds its own (ModelKind.files).
COMMON_FILES = frozenset(
    {
        "config.json",
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
# Read whole as JSON before anything else reads them: a few KB in any real model.
COMMON_CAPS = {"config.json": 10 * 1024**2, "model.safetensors.index.json": 50 * 1024**2}


@dataclass(frozen=True)
class ModelKind:
    """What one model task accepts, beside what every task accepts.

    ``load(root) -> (model, preprocessor)`` is called once the files and configs passed
    their checks (it builds on ``load_weights``); ``run_one_batch(model, preprocessor)``
    proves the pair runs on synthetic input and raises ``WorkerFailure`` otherwise.
    """

    spec: ModelTaskSpec  # the task's declaration: its auto class and the files it allows
    what: str  # for messages: "an image classifier"
    mapping: str  # the auto class's model_type -> architecture table in transformers.models.auto.modeling_auto
    required: tuple[str, ...]
    configs: tuple[str, ...]  # JSON files beside config.json that may ask for remote code
    load: Callable[[Path], tuple[Any, Any]]
    run_one_batch: Callable[[Any, Any], None]
    max_bytes: Mapping[str, int] = field(default_factory=dict)  # caps beside COMMON_CAPS
    labelled: bool = True  # whether the model names classes (a language model names none)
    # What else the report says of a loaded pair (a language model: its EOS token, chat template…).
    describe: Callable[[Any, Any], dict[str, Any]] | None = None

    @property
    def auto_class(self) -> str:
        return self.spec.auto_class

    @property
    def files(self) -> frozenset[str]:
        """Allowed beside COMMON_FILES and the weights."""
        return self.spec.model_files

    def model_class(self):
        import transformers

        return getattr(transformers, self.auto_class)

    def architectures(self) -> dict[str, str]:
        from transformers.models.auto import modeling_auto

        return getattr(modeling_auto, self.mapping)

    def allowed(self) -> list[str]:
        return sorted(COMMON_FILES | self.files) + ["model-NNNNN-of-NNNNN.safetensors"]


@dataclass(frozen=True)
class ModelReport:
    architecture: str
    model_type: str
    label_names: list[str]
    parameter_count: int
    size: int  # bytes of the verified files
    files: list[str]
    details: dict[str, Any] = field(default_factory=dict)  # the kind's own (ModelKind.describe)

    def to_dict(self) -> dict:
        return asdict(self)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_files(root: Path, kind: ModelKind | None = None) -> list[str]:
    """The model's file names, flat; refuses anything not on the kind's allow-list, or
    larger than its cap (sizes measured on disk, never taken from a header)."""
    kind = kind or IMAGE_CLASSIFIER
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
        if "/" in name or not (name in COMMON_FILES or name in kind.files or _SAFETENSORS_SHARD.fullmatch(name)):
            raise WorkerFailure(
                FailureReason.file_not_allowed,
                f"{name}: not an allowed file of a save_pretrained directory of {kind.what}",
                details={"allowed": kind.allowed()},
            )
        cap = {**COMMON_CAPS, **kind.max_bytes}.get(name)
        if cap is not None and (size := (root / name).stat().st_size) > cap:
            raise WorkerFailure(
                FailureReason.file_too_large,
                f"{name} is {size:,} bytes, more than the {cap:,} allowed for it; is it the right file?",
            )
    weights = [n for n in files if n.endswith(".safetensors")]
    if not weights:
        raise WorkerFailure(FailureReason.missing_weights, "no model.safetensors weights in the archive")
    for name in weights:
        with open(root / name, "rb") as f:
            head = f.read(4)
        if head.startswith(_PICKLE_MAGIC):
            raise WorkerFailure(FailureReason.pickle_weights_refused, f"{name} is a pickle, not safetensors")
    for required in ("config.json", *kind.required):
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


def check_configs(root: Path, kind: ModelKind | None = None) -> tuple[str, str]:
    """(model_type, architecture) from ``config.json``; neither it nor the kind's other JSON
    files may ask for remote code."""
    from transformers import CONFIG_MAPPING

    kind = kind or IMAGE_CLASSIFIER
    config = _read_json(root / "config.json")
    for name in ("config.json", *kind.configs):
        if not (root / name).exists():
            continue
        data = config if name == "config.json" else _read_json(root / name)
        if "auto_map" in data or data.get("trust_remote_code"):
            raise WorkerFailure(FailureReason.remote_code_refused, f"{name} asks for remote code (auto_map); it is never run")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise WorkerFailure(FailureReason.unsupported_architecture, f"unknown model_type {model_type!r}")
    supported = kind.architectures().get(model_type)
    if supported is None:
        raise WorkerFailure(FailureReason.unsupported_architecture, f"model_type {model_type!r} is not {kind.what}")
    if not isinstance(supported, str):  # a model type with several heads of this kind
        raise WorkerFailure(
            FailureReason.unsupported_architecture,
            f"model_type {model_type!r} has several classes of {kind.what}: {list(supported)}",
        )
    _check_label_space(config)
    architectures = config.get("architectures") or [supported]
    if supported not in architectures:
        raise WorkerFailure(
            FailureReason.unsupported_architecture,
            f"architectures {architectures} do not include {supported}, {kind.what} for {model_type!r}",
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
        parts = [
            f"{len(keys)} {what} ({', '.join(map(str, keys[:3]))}{', …' if len(keys) > 3 else ''})"
            for what, keys in found.items()
            if keys
        ]
        raise WorkerFailure(
            FailureReason.weights_mismatch,
            "the weights do not match the architecture: parameters " + "; ".join(parts),
            details={what: keys[:50] for what, keys in found.items()},
        )


def _check_size_before_loading(root: Path, kind: ModelKind) -> None:
    """The architecture the config describes, built on the meta device (no memory), must
    not hold more parameters than the checkpoint has values: otherwise loading would
    allocate, and initialise at random, whatever the config asks for (a config is a few
    bytes; the parameters it sizes need not be)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(root, trust_remote_code=False, local_files_only=True)
        with torch.device("meta"):
            skeleton = kind.model_class().from_config(config, trust_remote_code=False)
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


def load_tokenizer(root: Path, model):
    """The tokenizer saved beside ``model``, loaded without remote code or the hub, and
    checked to fit it: every id it can emit must index a row of the input embedding.

    Raises:
        WorkerFailure: ``load_error`` when it does not load; ``tokenizer_mismatch`` when its
            ids do not fit the model's embedding.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(root, trust_remote_code=False, local_files_only=True)
    except Exception as e:  # noqa: BLE001 -- whatever the tokenizer files make transformers raise is the upload's fault
        raise WorkerFailure(FailureReason.load_error, f"the tokenizer does not load: {type(e).__name__}: {e}") from e
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise WorkerFailure(
            FailureReason.tokenizer_mismatch,
            f"the tokenizer has {len(tokenizer):,} tokens but the model's embedding only {rows:,} rows: "
            "upload the tokenizer the model was trained with",
        )
    return tokenizer


def load_weights(root: Path, kind: ModelKind):
    """The kind's model loaded safely: safetensors only, no remote code, no hub, every
    parameter from the checkpoint (so two loads are the same model), in eval mode.

    Raises:
        WorkerFailure: ``weights_mismatch`` when parameters are missing, unexpected or of
            another shape; ``load_error`` when the files cannot be loaded at all.
    """
    _check_size_before_loading(root, kind)
    try:
        # Mismatched shapes are reported (below) rather than raised, so all three kinds
        # of mismatch get the same reason.
        model, info = kind.model_class().from_pretrained(
            root,
            trust_remote_code=False,
            use_safetensors=True,
            local_files_only=True,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
        )
    except Exception as e:  # noqa: BLE001
        # Every earlier check passed, so whatever transformers or safetensors raise on these
        # files (SafetensorError, size mismatches…) is the upload's fault.
        raise WorkerFailure(FailureReason.load_error, f"{type(e).__name__}: {e}") from e
    _check_loading_info(info)
    return model.eval()


def load_model(root: Path):
    """``(model, image_processor)`` of an image classifier, loaded safely (``load_weights``).

    Raises:
        WorkerFailure: as ``load_weights``; ``load_error`` when the processor cannot load.
    """
    from transformers import AutoImageProcessor

    model = load_weights(root, IMAGE_CLASSIFIER)
    try:
        # PIL, the reference backend, whatever else is installed: the same pixels everywhere,
        # and the processors workers.pixels reproduces bit for bit.
        processor = AutoImageProcessor.from_pretrained(root, trust_remote_code=False, local_files_only=True, backend="pil")
    except Exception as e:  # noqa: BLE001 -- as in load_weights: the processor's fields are the upload's
        raise WorkerFailure(FailureReason.load_error, f"{type(e).__name__}: {e}") from e
    return model, processor


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


IMAGE_CLASSIFIER = ModelKind(
    spec=image_classification.SPEC,
    what="an image classifier",
    mapping="MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    required=("preprocessor_config.json",),
    configs=("preprocessor_config.json", "processor_config.json"),
    load=load_model,
    run_one_batch=run_one_batch,
    max_bytes={"preprocessor_config.json": 1024**2, "processor_config.json": 1024**2},
)


def verify_model_dir(root: str | Path, kind: ModelKind = IMAGE_CLASSIFIER) -> ModelReport:
    """Verify a ``save_pretrained`` directory of the ``kind`` in place.

    Raises:
        WorkerFailure: ``pickle_weights_refused``, ``remote_code_refused``,
            ``file_not_allowed``, ``file_too_large``, ``missing_weights``, ``weights_mismatch``,
            ``unsupported_architecture``, ``load_error``, or the kind's own reasons.
    """
    root = Path(root)
    files = check_files(root, kind)
    model_type, architecture = check_configs(root, kind)
    model, preprocessor = kind.load(root)
    kind.run_one_batch(model, preprocessor)
    return ModelReport(
        architecture=architecture,
        model_type=model_type,
        label_names=label_names(model) if kind.labelled else [],
        parameter_count=sum(p.numel() for p in model.parameters()),
        size=sum((root / name).stat().st_size for name in files),
        files=files,
        details=kind.describe(model, preprocessor) if kind.describe is not None else {},
    )


def verify_model_archive(
    archive: str | Path,
    work_dir: str | Path,
    *,
    limits: ArchiveLimits = ArchiveLimits(),
    kind: ModelKind = IMAGE_CLASSIFIER,
) -> tuple[Path, ModelReport]:
    """Extract ``archive`` safely under ``work_dir`` and verify it as a model of ``kind``.

    Returns the directory of verified files and the report. Raises ``WorkerFailure``.
    """
    extracted = extract_archive(archive, work_dir, limits=limits)
    root = strip_common_root(extracted)
    return root, verify_model_dir(root, kind)
