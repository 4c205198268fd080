"""Deliver the webhook outbox: signed POSTs, retried with backoff for a day, in order per entity.

Deliveries are written by the store in the same transaction as the status change they
report (``shared.outbox``), so none is lost and none precedes its change. Each turn:

- the pending deliveries are read oldest first; per (webhook, entity) only the oldest is
  attempted, and only once it is due, so a receiver sees one entity's changes in order;
- the URL's host is resolved and every address checked (public only: never private,
  link-local — the metadata server —, or loopback unless the local setting allows it);
  the connection goes to the checked address, so a name that resolves differently a
  moment later (DNS rebinding) cannot redirect it; redirects are not followed;
- a 2xx delivers it; anything else is an attempt recorded on the delivery and retried
  after ``webhook_backoff_s * 2**(attempts-1)`` (capped), until ``webhook_retry_window_s``
  after the change, when it fails for good. A deleted webhook's deliveries fail at once.

At least once: a delivery is marked only after the receiver answered, so a daemon that
dies in between sends it again; the ``Assay-Delivery`` header (the body's ``id``) lets a
receiver drop the duplicate.
"""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from daemon.context import Context, log
from shared.entities import utcnow
from shared.errors import TransitionConflict, Unavailable
from shared.store import ANY_ACCOUNT
from shared.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    DeliveryAttempt,
    DeliveryStatus,
    Webhook,
    WebhookDelivery,
    address_allowed,
    check_url,
    sign,
    signing_secret,
)

USER_AGENT = "Assay-Webhooks/1"


class Refused(Exception):
    """The URL may not be delivered to (its address is not a public one)."""


def deliver_webhooks(ctx: Context) -> None:
    now = utcnow()
    heads: dict[tuple[str, str], WebhookDelivery] = {}
    for delivery in ctx.store.iterate(
        WebhookDelivery, account=ANY_ACCOUNT, filters={"status": DeliveryStatus.pending}, order="created_at"
    ):
        heads.setdefault((delivery.webhook_id, delivery.entity_id), delivery)
    due = [d for d in heads.values() if d.next_attempt_at <= now]
    if not due:
        return
    with ThreadPoolExecutor(max_workers=min(ctx.daemon.webhook_threads, len(due)), thread_name_prefix="webhook") as pool:
        for outcome in pool.map(lambda d: _deliver_safely(ctx, d), due):
            ctx.count(outcome)


def _deliver_safely(ctx: Context, delivery: WebhookDelivery) -> str:
    try:
        return deliver(ctx, delivery)
    except TransitionConflict:
        return "webhook_raced"  # another replica recorded this attempt first
    except Unavailable as e:
        log.warning("webhook delivery not recorded; retried next turn", extra={"delivery": delivery.id, "error": e.message})
        return "webhook_unrecorded"


def deliver(ctx: Context, delivery: WebhookDelivery) -> str:
    """One attempt at one delivery, recorded on it. Returns what happened (a count name)."""
    webhook = ctx.store.find(Webhook, delivery.webhook_id, account=delivery.account)
    if webhook is None:
        _finish(ctx, delivery, DeliveryStatus.failed, reason="webhook_deleted", message="the webhook was deleted")
        return "webhook_dropped"
    started = time.monotonic()
    at = utcnow()
    status_code, error = None, None
    try:
        status_code = post(
            webhook.url,
            delivery.body.encode(),
            headers=_headers(ctx, webhook, delivery),
            timeout_s=ctx.daemon.webhook_timeout_s,
            allow_loopback=ctx.settings.webhook_allow_http_loopback,
        )
    except Refused as e:
        error = f"refused: {e}"
    except (OSError, http.client.HTTPException) as e:
        error = f"{type(e).__name__}: {e}"[:300]
    attempt = DeliveryAttempt(at=at, status_code=status_code, error=error, duration_ms=round(1000 * (time.monotonic() - started)))
    log_fields = {"delivery": delivery.id, "webhook": webhook.id, "account": delivery.account, "status_code": status_code}
    if status_code is not None and 200 <= status_code < 300:
        _finish(ctx, delivery, DeliveryStatus.delivered, attempt=attempt, delivered_at=attempt.at)
        log.info("webhook delivered", extra=log_fields)
        return "webhook_delivered"
    why = error or f"the receiver answered {status_code}"
    retry_at = at + dt.timedelta(seconds=backoff_s(ctx, delivery.attempts + 1))
    if retry_at - delivery.created_at > dt.timedelta(seconds=ctx.daemon.webhook_retry_window_s):
        _finish(
            ctx,
            delivery,
            DeliveryStatus.failed,
            attempt=attempt,
            reason="retries_exhausted",
            message=f"not delivered after {delivery.attempts + 1} attempts; the last: {why}",
        )
        log.warning("webhook delivery given up", extra={**log_fields, "error": why})
        return "webhook_failed"
    ctx.store.update(
        WebhookDelivery,
        delivery.id,
        account=ANY_ACCOUNT,
        expected=DeliveryStatus.pending,
        check=lambda current: current.attempts == delivery.attempts,
        attempts=delivery.attempts + 1,
        attempt_log=[*delivery.attempt_log, attempt],
        next_attempt_at=retry_at,
        reason="retrying",
        message=f"attempt {delivery.attempts + 1} failed: {why}",
    )
    log.info("webhook attempt failed; retrying", extra={**log_fields, "error": why, "retry_at": retry_at.isoformat()})
    return "webhook_retried"


def backoff_s(ctx: Context, attempts: int) -> float:
    return min(ctx.daemon.webhook_backoff_max_s, ctx.daemon.webhook_backoff_s * 2 ** (attempts - 1))


def _finish(
    ctx: Context,
    delivery: WebhookDelivery,
    to: DeliveryStatus,
    *,
    attempt: DeliveryAttempt | None = None,
    reason: str | None = None,
    message: str | None = None,
    **changes,
) -> None:
    made = [*delivery.attempt_log, attempt] if attempt is not None else delivery.attempt_log
    ctx.store.transition(
        WebhookDelivery,
        delivery.id,
        account=ANY_ACCOUNT,
        expected=DeliveryStatus.pending,
        to=to,
        reason=reason,
        message=message,
        check=lambda current: current.attempts == delivery.attempts,
        attempts=len(made),
        attempt_log=made,
        **changes,
    )


def _headers(ctx: Context, webhook: Webhook, delivery: WebhookDelivery) -> dict[str, str]:
    secret = signing_secret(ctx.settings.webhook_key(), webhook)
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        DELIVERY_HEADER: delivery.id,
        EVENT_HEADER: delivery.event_type,
        SIGNATURE_HEADER: sign(secret, delivery.body.encode(), timestamp=int(time.time())),
    }


# --- the one way out: a POST to a checked address -----------------------------------------


def resolve_checked(host: str, port: int, *, allow_loopback: bool) -> str:
    """The address to connect to: every address ``host`` resolves to must be allowed (a
    name with one private address among public ones is refused). Raises Refused."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"cannot resolve {host}: {e}") from e
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        if not address_allowed(ipaddress.ip_address(address.split("%")[0]), loopback=allow_loopback):
            raise Refused(f"{host} resolves to {address}, not a public address")
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to the checked address, with the certificate verified for the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def post(url: str, body: bytes, *, headers: dict[str, str], timeout_s: float, allow_loopback: bool) -> int:
    """POST ``body`` to ``url``; returns the status code. Raises Refused for a URL or an
    address that may not be reached, OSError/HTTPException when the receiver is not."""
    try:
        check_url(url, allow_http_loopback=allow_loopback)
    except ValueError as e:
        raise Refused(str(e)) from None
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    address = resolve_checked(host, port, allow_loopback=allow_loopback)
    connection_cls = _PinnedHTTPSConnection if https else _PinnedHTTPConnection
    connection = connection_cls(host, port, address, timeout_s)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(64 * 1024)  # the answer is not used; read a little so the close is clean
        return response.status
    finally:
        connection.close()
