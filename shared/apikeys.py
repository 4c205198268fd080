"""API keys: ``assay_<key id>_<secret>``; only a hash of the secret is ever stored.

Secrets are 256 random bits, so a single SHA-256 is enough (no password-style stretching
is needed for a secret nobody chose); comparison is constant-time.

An account always keeps a usable admin key: revoking its last one is refused, since nothing
but an operator (``assay-admin issue-key``) could then make it a new one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets

from shared.entities import Account, AccountStatus, ApiKey, ApiKeyStatus, Scope, utcnow
from shared.errors import Conflict, Forbidden, NotFound, TransitionConflict, Unauthenticated
from shared.store import ANY_ACCOUNT, Store, Txn

log = logging.getLogger(__name__)

KEY_PATTERN = re.compile(r"^assay_(key_[0-9a-z]{20})_([0-9A-Za-z]{43})$")
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def new_secret() -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(43))  # ~256 bits


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def format_key(key_id: str, secret: str) -> str:
    return f"assay_{key_id}_{secret}"


def parse_key(text: str) -> tuple[str, str]:
    """(key id, secret); raises Unauthenticated for anything that is not a key."""
    match = KEY_PATTERN.fullmatch(text or "")
    if match is None:
        raise Unauthenticated("malformed API key: expected assay_<key id>_<secret>")
    return match.group(1), match.group(2)


def new_key(
    *, account: str, name: str, scopes: list[Scope], expires_at: dt.datetime | None = None, labels=None
) -> tuple[ApiKey, str]:
    """A new key entity (not yet stored) and its plaintext, to be shown once."""
    secret = new_secret()
    key = ApiKey(
        id=ApiKey.new_id(),
        account=account,
        name=name,
        labels=labels or {},
        secret_hash=hash_secret(secret),
        scopes=scopes,
        expires_at=expires_at,
    )
    return key, format_key(key.id, secret)


def usable(key: ApiKey, *, now: dt.datetime | None = None) -> bool:
    """Active, not revoked and not expired: a key a request could authenticate with."""
    return (
        key.status == ApiKeyStatus.active
        and key.revoked_at is None
        and (key.expires_at is None or key.expires_at > (now or utcnow()))
    )


def verify(key: ApiKey, secret: str, *, now: dt.datetime | None = None) -> None:
    """Raises Unauthenticated unless ``secret`` matches and the key is usable now."""
    if not hmac.compare_digest(key.secret_hash, hash_secret(secret)):
        raise Unauthenticated("invalid API key")
    if key.status != ApiKeyStatus.active or key.revoked_at is not None:
        raise Unauthenticated("API key revoked")
    if key.expires_at is not None and key.expires_at <= (now or utcnow()):
        raise Unauthenticated("API key expired")


def authenticate(store: Store, authorization: str | None, *, now: dt.datetime | None = None) -> ApiKey:
    """The key an ``Authorization: Bearer assay_…`` header names, verified.

    Raises Unauthenticated when the header is missing or malformed, or the key is unknown,
    wrong, revoked or expired, or its account is disabled.
    """
    if not authorization:
        raise Unauthenticated("missing Authorization header: use 'Bearer assay_…'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Authorization must be 'Bearer assay_…'")
    key_id, secret = parse_key(token.strip())
    key = store.find(ApiKey, key_id, account=ANY_ACCOUNT)
    if key is None:
        # Spend the same hashing time as for a known key: no timing hint of which ids exist.
        hmac.compare_digest(hash_secret(secret), hash_secret(secret))
        raise Unauthenticated("invalid API key")
    verify(key, secret, now=now)
    account = store.find(Account, key.account, account=key.account)
    if account is None or account.status != AccountStatus.active:
        raise Unauthenticated("account disabled")
    return key


def require_scope(key: ApiKey, scope: Scope) -> None:
    if scope not in key.granted():
        raise Forbidden(f"this API key lacks the '{scope}' scope", details={"required": str(scope)})


def revoke(store: Store, key_id: str, *, account: str) -> ApiKey:
    """Revoke a key of ``account``; idempotent (a revoked key is returned as it is).

    Raises NotFound, and Conflict (code ``last_admin_key``) when the key is the account's
    last usable admin key. The count is read inside the revoking transaction, so two
    revocations racing for an account's last two admin keys cannot both succeed: each
    holds what it counted, and the loser retries and finds one key left.
    """

    def keep_an_admin(txn: Txn, key: ApiKey) -> None:
        if Scope.admin not in key.scopes or not usable(key):
            return
        others = [k.id for k in _active_keys(txn, account) if k.id != key.id and Scope.admin in k.scopes and usable(k)]
        if not others:
            raise Conflict(
                "this is the account's last usable admin key: create another admin key before revoking it",
                code="last_admin_key",
                details={"key": key.id},
            )

    try:
        key = store.transition(
            ApiKey,
            key_id,
            account=account,
            expected=ApiKeyStatus.active,
            to=ApiKeyStatus.revoked,
            reason="revoked",
            revoked_at=utcnow(),
            guard=keep_an_admin,
        )
    except TransitionConflict as e:
        if e.current is None:
            raise NotFound(f"ApiKey {key_id} not found", details={"kind": "ApiKey", "id": key_id}) from None
        return store.get(ApiKey, key_id, account=account)
    log.info("API key revoked", extra={"account": account, "key": key_id})
    return key


def _active_keys(txn: Txn, account: str) -> list[ApiKey]:
    keys: list[ApiKey] = []
    token = None
    while True:
        page = txn.list(ApiKey, account=account, filters={"status": ApiKeyStatus.active}, order=None, limit=200, page_token=token)
        keys += page.items
        token = page.next_page_token
        if token is None:
            return keys
