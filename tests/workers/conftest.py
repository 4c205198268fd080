"""Session fixtures for the worker tests: the digits ViT (trained once, cached on disk) and
the digits as datasets in every accepted format. Nothing is fetched from the hub."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Before anything imports transformers: caches stay in the project, and the hub is off.
os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "huggingface"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from devstack import digits  # noqa: E402
from workers.ingest import IngestLimits, ingest_dataset  # noqa: E402

FIXTURE_CACHE = ROOT / ".cache" / "fixtures"


@pytest.fixture(scope="session")
def digits_model_dir() -> Path:
    """A trained ``save_pretrained`` directory (~30 s the first time, then cached by recipe)."""
    return digits.cached_digits_vit(FIXTURE_CACHE)


@pytest.fixture(scope="session")
def digits_model_zip(digits_model_dir, tmp_path_factory) -> Path:
    return digits.archive_directory(digits_model_dir, tmp_path_factory.mktemp("model") / "model.zip")


@pytest.fixture(scope="session")
def digits_test():
    """(images, labels): the 449 held-out digits as 32×32 RGB PIL images."""
    return digits.digits_images("test")


@pytest.fixture(scope="session")
def digits_parquet(digits_test, tmp_path_factory) -> Path:
    images, labels = digits_test
    return digits.write_hf_parquet(tmp_path_factory.mktemp("parquet") / "digits.parquet", images, labels)


@pytest.fixture(scope="session")
def digits_imagefolder_zip(digits_test, tmp_path_factory) -> Path:
    images, labels = digits_test
    path = tmp_path_factory.mktemp("imagefolder") / "digits.zip"
    return digits.write_imagefolder_archive(path, {"test": (images, labels)})


@pytest.fixture(scope="session")
def ingested_digits(digits_parquet, tmp_path_factory) -> tuple[Path, dict]:
    """Canonical shards of the test digits: 5 shards of at most 100 rows, split ``train``."""
    out = tmp_path_factory.mktemp("canonical")
    manifest = ingest_dataset(digits_parquet, out / "dataset", work_dir=out / "work", limits=IngestLimits(shard_rows=100))
    return out / "dataset", manifest


def _raise(record: logging.LogRecord) -> None:
    raise  # noqa: PLE0704 -- called by Handler.emit inside its except block: re-raise what failed


@pytest.fixture(autouse=True)
def production_logging():
    """Every worker test logs as ``python -m workers`` does in production: the root logger at
    INFO through the workers' own handler, so a logging call that raises (a reserved key in
    ``extra=``) or a record that cannot be formatted fails the test instead of passing
    unseen at pytest's default WARNING."""
    from workers.__main__ import LOG_LEVEL, log_handler

    root = logging.getLogger()
    handler = log_handler()
    handler.handleError = _raise  # type: ignore[method-assign] -- fail loudly, as said above
    level = root.level
    root.addHandler(handler)
    root.setLevel(LOG_LEVEL)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
