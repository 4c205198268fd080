"""Fixtures for the API tests: the app on the real emulators, accounts and their keys.

Each test gets a wiped Datastore, its own bucket and hint topic (tests/conftest.py); the
app's store refuses queries index.yaml does not serve, as production would.
"""

from __future__ import annotations

from dataclasses import dataclass

import flask
import pytest

from functions.app import create_app
from functions.services import Services
from shared.admin import create_account
from shared.apikeys import new_key
from shared.entities import Scope
from shared.settings import Settings
from shared.storage import Storage


@dataclass
class Tenant:
    """An account and bearer headers for keys of each scope."""

    account: str
    admin: dict[str, str]
    write: dict[str, str]
    read: dict[str, str]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def entry_point_env(settings: Settings) -> dict[str, str]:
    """The environment functions/main.py builds its settings from: this test's emulators,
    bucket and hint topic."""
    return {
        "ASSAY_PROJECT": settings.project,
        "ASSAY_BUCKET": settings.bucket,
        "ASSAY_HINT_TOPIC": settings.hint_topic,
        "DATASTORE_EMULATOR_HOST": settings.datastore_emulator_host,
        "PUBSUB_EMULATOR_HOST": settings.pubsub_emulator_host,
        "STORAGE_EMULATOR_HOST": settings.storage_emulator_host,
    }


@pytest.fixture
def services(settings: Settings, indexes, storage: Storage) -> Services:
    svc = Services.from_settings(settings, indexes=indexes)
    svc.hints.ensure()
    return svc


@pytest.fixture
def app(services: Services) -> flask.Flask:
    return create_app(services=services)


@pytest.fixture
def client(app: flask.Flask):
    return app.test_client()


def make_tenant(services: Services, name: str) -> Tenant:
    account, admin_key = create_account(services.store, name)
    headers = {"admin": bearer(admin_key)}
    for scope in (Scope.write, Scope.read):
        key, plaintext = new_key(account=account.id, name=f"{scope}-key", scopes=[scope])
        services.store.put(key)
        headers[str(scope)] = bearer(plaintext)
    return Tenant(account=account.id, **headers)


@pytest.fixture
def alice(services: Services) -> Tenant:
    return make_tenant(services, "alice")


@pytest.fixture
def bob(services: Services) -> Tenant:
    return make_tenant(services, "bob")


MODEL = {"name": "vit-digits", "labels": {"team": "vision"}, "size": 1000}
DATASET = {"name": "digits", "labels": {"team": "vision"}, "size": 2000}
