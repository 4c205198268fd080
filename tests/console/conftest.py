"""Fixtures for the console tests: the app on the real emulators, two accounts, and one
complete evaluation whose result set and dataset shard (real PNG images) are stored where
the workers write them."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from functions.app import create_app
from functions.services import Services
from shared.admin import create_account
from shared.apikeys import new_key
from shared.entities import Dataset, Model, Scope
from shared.storage import dataset_shard
from tests.results.conftest import generate, stored_evaluation, upload_result_set

HOSTILE = "<img src=x onerror=alert(1)>"


@dataclass
class Tenant:
    account: str
    keys: dict[str, str]  # scope -> plaintext key


@pytest.fixture
def services(settings, indexes, storage) -> Services:
    svc = Services.from_settings(settings, indexes=indexes)
    svc.hints.ensure()
    return svc


@pytest.fixture
def app(services):
    return create_app(services=services)


@pytest.fixture
def client(app):
    return app.test_client()


def make_tenant(services: Services, name: str) -> Tenant:
    account, admin_key = create_account(services.store, name)
    keys = {"admin": admin_key}
    for scope in (Scope.write, Scope.read):
        key, plaintext = new_key(account=account.id, name=f"{scope}-key", scopes=[scope])
        services.store.put(key)
        keys[str(scope)] = plaintext
    return Tenant(account=account.id, keys=keys)


@pytest.fixture
def alice(services) -> Tenant:
    return make_tenant(services, "alice")


@pytest.fixture
def bob(services) -> Tenant:
    return make_tenant(services, "bob")


def form_csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def sign_in(client, api_key: str):
    page = client.get("/ui/sign-in")
    return client.post(
        "/ui/sign-in", data={"api_key": api_key, "csrf": form_csrf(page.get_data(as_text=True)), "next": "/ui/evaluations"}
    )


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class World:
    model: Model
    dataset: Dataset
    evaluation: object
    label_names: list[str]


@pytest.fixture
def world(services, storage, tmp_path, alice) -> World:
    """Alice's ready model and dataset, and a complete evaluation of 300 instances over 10
    classes (one class named with markup) in 2 shards, each with its dataset shard."""
    generated = generate(tmp_path / "results", n=300, classes=10, shards=2, seed=1)
    names = list(generated.label_names)
    names[3] = HOSTILE
    (generated.directory / "summary.json").write_text(__import__("json").dumps({"label_names": names, "instances": 300}))
    store = services.store
    model = Model(
        id=Model.new_id(),
        account=alice.account,
        name="digits-vit",
        status="ready",
        declared_size=10,
        content_type="application/zip",
        upload_object="uploads/models/x/model.zip",
        label_names=names,
    )
    dataset = Dataset(
        id=Dataset.new_id(),
        account=alice.account,
        name="digits",
        status="ready",
        declared_size=10,
        content_type="application/zip",
        upload_object="uploads/datasets/x/dataset.zip",
        splits={"test": 300},
        label_names=names,
    )
    store.put(model)
    store.put(dataset)
    summary = {
        "label_names": names,
        "instances": 300,
        "accuracy": 0.5,
        "f1_macro": 0.4,
        "ece_bins": 10,
        "efficiency": {"instances_per_second": 1234.5, "device": "cpu"},
    }
    evaluation = stored_evaluation(
        store, account=alice.account, model_id=model.id, dataset_id=dataset.id, summary=summary, name="digits-vit-digits-test"
    )
    upload_result_set(storage, evaluation.id, generated.directory)
    for i, path in enumerate(sorted(generated.directory.glob("part-*.parquet"))):
        ids = pq.read_table(path, columns=["instance_id", "label"])
        shard = pa.table(
            {
                "instance_id": ids.column("instance_id"),
                "image": pa.array([png(k % 256) for k in range(ids.num_rows)], pa.binary()),
                "label": ids.column("label").cast(pa.int64()),
            }
        )
        local = tmp_path / f"shard-{i}.parquet"
        pq.write_table(shard, local)
        storage.upload_file(dataset_shard(dataset.id, "test", i), local)
    return World(model, dataset, evaluation, names)
