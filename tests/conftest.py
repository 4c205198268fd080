"""Test harness on the real services.

One set of emulators per test session (Firestore in Datastore mode, Pub/Sub,
fake-gcs-server publishing finalize notifications to Pub/Sub), on free loopback ports,
stopped at the end whatever happens. Each test gets a wiped Datastore, its own bucket and
its own hint topic, so tests never see each other's state.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import pytest
from test_utils.prefixer import Prefixer

# As the worker's entry point does (workers/__main__.py): evaluation tests fork decoder
# processes from this process, which holds many gRPC channels with calls in flight.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from devstack.emulators import Emulators, EmulatorsMissing
from shared.indexes import load_indexes
from shared.settings import Settings
from shared.storage import Storage
from shared.store import Store

ROOT = Path(__file__).resolve().parent.parent
INDEX_YAML = ROOT / "infra" / "gcp" / "index.yaml"

os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "huggingface"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_counter = itertools.count()
# Every bucket, topic and subscription a test creates is named by google-cloud-testutils'
# Prefixer (assay-tests-<UTC time>-<random>-<n>): a name says which suite made it and
# when, and two sessions never share one.
PREFIXER = Prefixer("assay", "tests", separator="-")
SESSION_PREFIX = PREFIXER.create_prefix()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable sort: tests marked ``last`` move to the end, everything else keeps its order.
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


@pytest.fixture(scope="session")
def emulators():
    state = tempfile.mkdtemp(prefix="assay-emulators-")
    try:
        emu = Emulators(Path(state)).start()
    except EmulatorsMissing as e:
        pytest.exit(str(e), returncode=3)  # fail loudly: never skip the real-service tests
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def settings(emulators, tmp_path) -> Settings:
    """Settings for one test: a wiped Datastore, a fresh bucket and hint topic."""
    emulators.reset_datastore()
    n = next(_counter)
    s = Settings(
        project=emulators.project,
        bucket=f"{SESSION_PREFIX}-{n}",
        hint_topic=f"{SESSION_PREFIX}-hints-{n}",
        hint_subscription=f"{SESSION_PREFIX}-hints-{n}-daemon",
        storage_topic=emulators.storage_topic,
        datastore_emulator_host=emulators.datastore_host,
        pubsub_emulator_host=emulators.pubsub_host,
        storage_emulator_host=emulators.storage_host,
        cache_dir=str(tmp_path / "cache"),
    )
    return s


@pytest.fixture(scope="session")
def indexes():
    return load_indexes(INDEX_YAML) if INDEX_YAML.exists() else []


@pytest.fixture
def store(settings, indexes) -> Store:
    """A store that refuses any query index.yaml does not serve, as production would."""
    return Store.from_settings(settings, indexes=indexes)


@pytest.fixture
def storage(settings) -> Storage:
    s = Storage.from_settings(settings)
    s.ensure_bucket()
    return s
