"""Webhooks: what an account subscribes to, the deliveries owed to it, and how they are signed.

- ``Webhook``: a URL and the event types it wants (``evaluation.complete``…). Its signing
  secret is never stored: it is derived from a server key (``Settings.webhook_signing_key``)
  and the webhook's id and random salt, shown once at creation and derived again by the
  daemon to sign. A copy of the database alone signs nothing.
- ``WebhookSubscriptions``: one record per account (keyed by the account id) mapping its
  webhooks to their event types, so a status change finds the webhooks to notify with a
  lookup by key inside its own transaction — no query, no second source of truth.
- ``WebhookDelivery``: the outbox. Written in the same transaction as the status change it
  reports; the daemon sends it, records every attempt, retries with backoff, and keeps
  the order per entity.

Signatures are Stripe's scheme: ``Assay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<body>">``; ``verify_signature`` is what a receiver calls (``assay.verify_signature``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import re
import time
from enum import StrEnum
from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from shared.entities import ArtifactStatus, Entity, EvaluationStatus
from shared.errors import InvalidSignature
from shared.events import event_type

SIGNATURE_HEADER = "Assay-Signature"
DELIVERY_HEADER = "Assay-Delivery"
EVENT_HEADER = "Assay-Event"
DEFAULT_TOLERANCE_S = 300

# Every status an entity can reach, as a webhook event type (``gone`` is never reached:
# a deleted record is removed while ``deleting``).
EVENT_TYPES: tuple[str, ...] = tuple(
    [event_type(kind, s) for kind in ("Model", "Dataset") for s in ArtifactStatus if s != ArtifactStatus.gone]
    + [event_type("Evaluation", s) for s in EvaluationStatus if s != EvaluationStatus.gone]
)
SUBSCRIBABLE_KINDS = frozenset({"Model", "Dataset", "Evaluation"})


# --- entities ----------------------------------------------------------------------------


class WebhookStatus(StrEnum):
    active = "active"


class Webhook(Entity):
    kind: ClassVar[str] = "Webhook"
    id_prefix: ClassVar[str] = "whk"
    status_enum: ClassVar[type[StrEnum]] = WebhookStatus
    transitions: ClassVar[dict] = {WebhookStatus.active: frozenset()}
    terminal: ClassVar[frozenset] = frozenset()
    history: ClassVar[bool] = False

    status: WebhookStatus = WebhookStatus.active
    url: str
    events: list[str]
    description: str | None = None
    secret_salt: str = Field(repr=False)


class WebhookSubscriptions(Entity):
    """An account's webhooks and their event types; its id is the account id."""

    kind: ClassVar[str] = "WebhookSubscriptions"
    id_prefix: ClassVar[str] = "acc"
    status_enum: ClassVar[type[StrEnum]] = WebhookStatus
    transitions: ClassVar[dict] = {WebhookStatus.active: frozenset()}
    terminal: ClassVar[frozenset] = frozenset()
    indexed: ClassVar[frozenset[str]] = frozenset()
    history: ClassVar[bool] = False

    name: str = "subscriptions"
    status: WebhookStatus = WebhookStatus.active
    routes: dict[str, list[str]] = Field(default_factory=dict)  # webhook id -> event types

    def webhooks_for(self, type_: str) -> list[str]:
        return sorted(webhook_id for webhook_id, types in self.routes.items() if type_ in types)


class DeliveryStatus(StrEnum):
    pending = "pending"  # owed: never sent, or every attempt so far failed
    delivered = "delivered"  # a 2xx came back
    failed = "failed"  # given up (the retry window passed, or the webhook was deleted)


class DeliveryAttempt(BaseModel):
    at: dt.datetime
    status_code: int | None = None  # the receiver's answer; None when there was none
    error: str | None = None
    duration_ms: int


class WebhookDelivery(Entity):
    kind: ClassVar[str] = "WebhookDelivery"
    id_prefix: ClassVar[str] = "dlv"
    status_enum: ClassVar[type[StrEnum]] = DeliveryStatus
    transitions: ClassVar[dict] = {
        DeliveryStatus.pending: frozenset({DeliveryStatus.delivered, DeliveryStatus.failed}),
        DeliveryStatus.delivered: frozenset(),
        DeliveryStatus.failed: frozenset(),
    }
    terminal: ClassVar[frozenset] = frozenset({DeliveryStatus.delivered, DeliveryStatus.failed})
    indexed: ClassVar[frozenset[str]] = frozenset({"account", "status", "webhook_id", "created_at"})
    history: ClassVar[bool] = False

    name: str = "delivery"
    status: DeliveryStatus = DeliveryStatus.pending
    webhook_id: str
    event_type: str
    event_id: str
    entity_kind: str
    entity_id: str
    body: str = Field(repr=False)  # the JSON sent, fixed when the change committed
    attempts: int = 0
    next_attempt_at: dt.datetime
    delivered_at: dt.datetime | None = None
    attempt_log: list[DeliveryAttempt] = Field(default_factory=list)


# --- secrets and signatures --------------------------------------------------------------


def signing_secret(key: bytes, webhook: Webhook) -> str:
    """The webhook's secret, derived (never stored): HMAC of its id and salt under ``key``."""
    digest = hmac.new(key, f"{webhook.id}.{webhook.secret_salt}".encode(), hashlib.sha256).digest()
    return "whsec_" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign(secret: str, body: bytes, *, timestamp: int) -> str:
    """The ``Assay-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    body: bytes, header: str | None, secret: str, *, tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None
) -> int:
    """Check an ``Assay-Signature`` header against the raw request body; returns its timestamp.

    Verify the bytes as received (before any JSON parsing). Raises InvalidSignature when the
    header is missing or malformed, no ``v1`` signature matches, or the timestamp is more
    than ``tolerance_s`` from ``now`` (a replayed delivery).
    """
    if not header:
        raise InvalidSignature(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise InvalidSignature(f"malformed {SIGNATURE_HEADER} header: expected t=<seconds>,v1=<hex>")
    expected = sign(secret, body, timestamp=timestamp).partition(",v1=")[2]
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise InvalidSignature("signature does not match: wrong secret, or the body was altered")
    skew = abs((time.time() if now is None else now) - timestamp)
    if skew > tolerance_s:
        raise InvalidSignature(f"timestamp is {skew:.0f}s away (tolerance {tolerance_s:.0f}s): a replay?")
    return timestamp


# --- where deliveries may go -------------------------------------------------------------


def address_allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address, *, loopback: bool) -> bool:
    """Public unicast addresses only (so never private, link-local — the metadata server —,
    shared, reserved or multicast); loopback only when ``loopback`` (local runs)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return loopback
    return address.is_global and not address.is_multicast


# The URLs a webhook may have, as patterns the OpenAPI document carries and ``check_url``
# enforces, so a URL the schema allows is one the server takes: https to a DNS name (its
# last label starts with a letter, so no address literal), a port from 1 to 65535, then
# printable ASCII with no fragment. A local stack also takes http(s) to loopback.
_PORT = r"(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?"
_HOST = r"(?:[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?"
_REST = r'(?:[/?][!"$-~]*)?'
URL_PATTERN = rf"^https://{_HOST}{_PORT}{_REST}$"
LOOPBACK_URL_PATTERN = rf"^(?:https://{_HOST}|https?://(?:localhost|127\.0\.0\.1|\[::1\])){_PORT}{_REST}$"


def url_pattern(*, allow_http_loopback: bool) -> str:
    return LOOPBACK_URL_PATTERN if allow_http_loopback else URL_PATTERN


def check_url(url: str, *, allow_http_loopback: bool) -> None:
    """Refuse a webhook URL that may never be delivered to; raises ValueError saying why.

    ``https`` only; plain ``http`` only to a loopback host when ``allow_http_loopback``
    (the server runs locally). An address literal must be an allowed one; a name is
    checked again after DNS at every delivery (``address_allowed``).
    """
    if re.fullmatch(url_pattern(allow_http_loopback=allow_http_loopback), url) is None:
        raise ValueError(
            "must be an https URL to a DNS host name (lower case; no address literal, credentials or fragment)"
            + (", or http to loopback" if allow_http_loopback else "")
        )
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise ValueError("must be an https URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials")
    if parts.fragment:
        raise ValueError("must not have a fragment")
    host = parts.hostname
    if not host:
        raise ValueError("has no host")
    try:
        _ = parts.port  # urlsplit parses the port only when it is read
    except ValueError:
        raise ValueError("has an invalid port") from None
    try:
        literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    loopback_host = host == "localhost" or (literal is not None and literal.is_loopback)
    if parts.scheme == "http" and not (allow_http_loopback and loopback_host):
        raise ValueError("must be an https URL (plain http is accepted only for loopback while the server runs locally)")
    if literal is not None and not address_allowed(literal, loopback=allow_http_loopback):
        raise ValueError(f"{host} is not a public address")
    if host == "localhost" and not allow_http_loopback:
        raise ValueError("localhost is not a public address")
