"""API keys: format, hashing, verification, expiry, revocation, scopes."""

from __future__ import annotations

import datetime as dt

import pytest

from shared import apikeys
from shared.admin import create_account
from shared.entities import Account, ApiKey, Scope, utcnow
from shared.errors import Forbidden, Unauthenticated
from shared.store import ANY_ACCOUNT, Store


def test_key_format_and_only_a_hash_is_stored(store: Store):
    account, plaintext = create_account(store, "acme")
    key_id, secret = apikeys.parse_key(plaintext)
    stored = store.get(ApiKey, key_id, account=account.id)
    assert plaintext.startswith(f"assay_{key_id}_")
    assert secret not in stored.model_dump_json()
    assert stored.secret_hash == apikeys.hash_secret(secret)
    assert apikeys.authenticate(store, f"Bearer {plaintext}").id == key_id


@pytest.mark.parametrize(
    "header",
    [None, "", "Basic abc", "Bearer ", "Bearer assay_nope", "Bearer assay_key_abc_def", "Bearer sk-123"],
)
def test_missing_or_malformed_headers_are_unauthenticated(store: Store, header):
    with pytest.raises(Unauthenticated):
        apikeys.authenticate(store, header)


def test_a_wrong_secret_or_unknown_key_is_unauthenticated(store: Store):
    _, plaintext = create_account(store, "acme")
    key_id, secret = apikeys.parse_key(plaintext)
    wrong = apikeys.format_key(key_id, ("A" if secret[0] != "A" else "B") + secret[1:])
    with pytest.raises(Unauthenticated):
        apikeys.authenticate(store, f"Bearer {wrong}")
    unknown = apikeys.format_key("key_" + "0" * 20, secret)
    with pytest.raises(Unauthenticated):
        apikeys.authenticate(store, f"Bearer {unknown}")


def test_expired_keys_are_refused(store: Store):
    account, _ = create_account(store, "acme")
    key, plaintext = apikeys.new_key(
        account=account.id, name="short", scopes=[Scope.read], expires_at=utcnow() + dt.timedelta(minutes=5)
    )
    store.put(key)
    assert apikeys.authenticate(store, f"Bearer {plaintext}").id == key.id
    with pytest.raises(Unauthenticated, match="expired"):
        apikeys.authenticate(store, f"Bearer {plaintext}", now=utcnow() + dt.timedelta(minutes=6))


def test_revoked_keys_are_refused(store: Store):
    account, plaintext = create_account(store, "acme")
    key_id, _ = apikeys.parse_key(plaintext)
    store.transition(ApiKey, key_id, account=account.id, expected="active", to="revoked", revoked_at=utcnow())
    with pytest.raises(Unauthenticated, match="revoked"):
        apikeys.authenticate(store, f"Bearer {plaintext}")


def test_a_disabled_account_cannot_authenticate(store: Store):
    account, plaintext = create_account(store, "acme")
    store.transition(Account, account.id, account=ANY_ACCOUNT, expected="active", to="disabled")
    with pytest.raises(Unauthenticated):
        apikeys.authenticate(store, f"Bearer {plaintext}")


def test_scopes_imply_narrower_ones():
    key, _ = apikeys.new_key(account="acc_x", name="w", scopes=[Scope.write])
    apikeys.require_scope(key, Scope.read)
    apikeys.require_scope(key, Scope.write)
    with pytest.raises(Forbidden):
        apikeys.require_scope(key, Scope.admin)
    reader, _ = apikeys.new_key(account="acc_x", name="r", scopes=[Scope.read])
    with pytest.raises(Forbidden):
        apikeys.require_scope(reader, Scope.write)
