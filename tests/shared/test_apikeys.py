"""API keys: format, hashing, verification, expiry, revocation, scopes."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from shared import apikeys
from shared.admin import create_account
from shared.entities import Account, ApiKey, Scope, utcnow
from shared.errors import Conflict, Forbidden, NotFound, Unauthenticated
from shared.store import ANY_ACCOUNT, Store, Txn


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


# --- the last admin key -------------------------------------------------------------------


def _admin_key(store: Store, account: str, **kwargs) -> ApiKey:
    key, _ = apikeys.new_key(account=account, name="second-admin", scopes=[Scope.admin], **kwargs)
    store.put(key)
    return key


def test_the_last_usable_admin_key_cannot_be_revoked(store: Store):
    account, plaintext = create_account(store, "acme")
    key_id, _ = apikeys.parse_key(plaintext)
    reader, _ = apikeys.new_key(account=account.id, name="reader", scopes=[Scope.read, Scope.write])
    store.put(reader)
    _admin_key(store, account.id, expires_at=utcnow() + dt.timedelta(seconds=1))  # soon unusable: does not count
    _admin_key(store, "acc_someone_else")  # another account's admin key does not count either
    time.sleep(1.1)
    with pytest.raises(Conflict) as info:
        apikeys.revoke(store, key_id, account=account.id)
    assert info.value.code == "last_admin_key" and "last usable admin key" in info.value.message
    assert store.get(ApiKey, key_id, account=account.id).status == "active"
    assert apikeys.revoke(store, reader.id, account=account.id).status == "revoked"  # not an admin key: fine

    second = _admin_key(store, account.id)
    assert apikeys.revoke(store, key_id, account=account.id).status == "revoked"
    assert apikeys.revoke(store, key_id, account=account.id).status == "revoked"  # idempotent
    with pytest.raises(Conflict, match="last usable admin key"):
        apikeys.revoke(store, second.id, account=account.id)
    with pytest.raises(NotFound):
        apikeys.revoke(store, second.id, account="acc_someone_else")


def test_two_revocations_racing_for_the_last_two_admin_keys_cannot_both_succeed(store: Store, monkeypatch):
    """Both transactions count two admin keys before either commits (the barrier makes that
    interleaving certain); the emulator's locks then abort one, whose retry counts again."""
    account, plaintext = create_account(store, "acme")
    first, _ = apikeys.parse_key(plaintext)
    second = _admin_key(store, account.id).id
    barrier = threading.Barrier(2)
    counted = threading.local()
    original = Txn.list

    def list_then_meet(self, *args, **kwargs):
        page = original(self, *args, **kwargs)
        if not getattr(counted, "once", False):  # only each thread's first attempt waits
            counted.once = True
            barrier.wait(timeout=30)
        return page

    monkeypatch.setattr(Txn, "list", list_then_meet)
    outcomes: dict[str, object] = {}

    def revoke(key_id: str) -> None:
        try:
            outcomes[key_id] = apikeys.revoke(store, key_id, account=account.id).status
        except Conflict as e:
            outcomes[key_id] = e.code

    threads = [threading.Thread(target=revoke, args=(k,)) for k in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(map(str, outcomes.values())) == ["last_admin_key", "revoked"], outcomes
    statuses = sorted(str(store.get(ApiKey, k, account=account.id).status) for k in (first, second))
    assert statuses == ["active", "revoked"]
