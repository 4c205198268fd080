"""The console's session: a signed, expiring cookie that names an API key, never holds it.

Signing in verifies the pasted key once; the cookie then carries
``v1.<key id>.<account>.<expires>.<hmac>``, the HMAC keyed by the console secret
(``Settings.console_secret``). Every request re-reads the key and its account, so revoking
the key, its expiry or a disabled account ends the session at once. CSRF tokens and
gallery image URLs are HMACs under the same secret, each with its own purpose prefix, so
none can stand in for another.

No flask here: the pages module moves these strings in and out of requests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from shared.entities import Account, AccountStatus, ApiKey, ApiKeyStatus, utcnow
from shared.errors import Unauthenticated
from shared.settings import Settings
from shared.store import Store

COOKIE = "assay_console"
SIGN_IN_COOKIE = "assay_console_sign_in"  # a nonce: the sign-in form's CSRF token (double submit)
_VERSION = "v1"


def console_secret(settings: Settings) -> bytes:
    """The configured secret, or one drawn for this process (sessions then die with it)."""
    if settings.console_secret is not None:
        return settings.console_secret.get_secret_value().encode()
    return _PROCESS_SECRET


_PROCESS_SECRET = secrets.token_bytes(32)


def _mac(secret: bytes, purpose: str, *parts: str) -> str:
    return hmac.new(secret, "|".join((purpose, *parts)).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Session:
    """A signed-in browser: the key it signed in with (re-read on this request)."""

    key: ApiKey
    token: str
    expires: int  # unix seconds

    @property
    def account(self) -> str:
        return self.key.account


def issue(secret: bytes, key: ApiKey, *, lifetime_s: int, now: float | None = None) -> tuple[str, int]:
    """A session token for ``key`` and its expiry (unix seconds); never past the key's own."""
    expires = int((now if now is not None else time.time()) + lifetime_s)
    if key.expires_at is not None:
        expires = min(expires, int(key.expires_at.timestamp()))
    body = f"{_VERSION}.{key.id}.{key.account}.{expires}"
    return f"{body}.{_mac(secret, 'session', body)}", expires


def check_usable(key: ApiKey, account: Account | None, *, now: dt.datetime | None = None) -> None:
    """Raises Unauthenticated unless the key is active, unexpired and its account active."""
    if key.status != ApiKeyStatus.active or key.revoked_at is not None:
        raise Unauthenticated("API key revoked")
    if key.expires_at is not None and key.expires_at <= (now or utcnow()):
        raise Unauthenticated("API key expired")
    if account is None or account.status != AccountStatus.active:
        raise Unauthenticated("account disabled")


def resume(secret: bytes, store: Store, token: str | None, *, now: float | None = None) -> Session:
    """The session a cookie value names, checked against the key as it is now.

    Raises Unauthenticated for a missing, forged or expired token, or a key that was
    revoked, has expired or whose account is disabled.
    """
    if not token:
        raise Unauthenticated("not signed in")
    body, _, mac = token.rpartition(".")
    if not hmac.compare_digest(mac.encode(), _mac(secret, "session", body).encode()):
        raise Unauthenticated("invalid session")
    version, key_id, account, expires = (body.split(".") + ["", "", "", ""])[:4]
    if version != _VERSION or not expires.isdigit():
        raise Unauthenticated("invalid session")
    if int(expires) <= (now if now is not None else time.time()):
        raise Unauthenticated("session expired")
    key = store.find(ApiKey, key_id, account=account)
    if key is None:
        raise Unauthenticated("invalid session")
    check_usable(key, store.find(Account, account, account=account))
    return Session(key=key, token=token, expires=int(expires))


def csrf_token(secret: bytes, session_token: str) -> str:
    """The token every state-changing form of this session carries."""
    return _mac(secret, "csrf", session_token)


def csrf_valid(secret: bytes, session_token: str, sent: str | None) -> bool:
    if not sent:
        return False
    return hmac.compare_digest(sent.encode(), csrf_token(secret, session_token).encode())


def sign_in_nonce() -> str:
    return secrets.token_urlsafe(24)


def image_signature(secret: bytes, *, account: str, evaluation_id: str, instance_id: str, part: str, expires: int) -> str:
    return _mac(secret, "image", account, evaluation_id, instance_id, part, str(expires))


def image_signature_valid(
    secret: bytes,
    sent: str,
    *,
    account: str,
    evaluation_id: str,
    instance_id: str,
    part: str,
    expires: int,
    now: float | None = None,
) -> bool:
    """True when ``sent`` signs exactly this image for this account and has not expired."""
    if expires <= (now if now is not None else time.time()):
        return False
    expected = image_signature(
        secret, account=account, evaluation_id=evaluation_id, instance_id=instance_id, part=part, expires=expires
    )
    return hmac.compare_digest(sent.encode(), expected.encode())


def hmac_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
