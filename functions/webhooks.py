"""Webhooks: register (the signing secret shown once), list, delete, and read deliveries.

A webhook and its account's ``WebhookSubscriptions`` record change in one transaction, so
the status changes that follow route through exactly the webhooks that exist.
"""

from __future__ import annotations

import logging
import secrets

from shared.api import CreateWebhook
from shared.entities import utcnow
from shared.errors import Conflict, Invalid
from shared.settings import Settings
from shared.store import Page, Store, Txn
from shared.webhooks import Webhook, WebhookDelivery, WebhookSubscriptions, check_url, signing_secret

log = logging.getLogger(__name__)

MAX_WEBHOOKS = 20  # per account


def create(store: Store, request: CreateWebhook, *, account: str, settings: Settings) -> tuple[Webhook, str]:
    """Register a webhook; returns it and its secret. Raises Invalid (URL), Conflict (limit)."""
    try:
        check_url(request.url, allow_http_loopback=settings.webhook_allow_http_loopback)
    except ValueError as e:
        raise Invalid(
            f"webhook url {e}", details={"fields": [{"path": "url", "message": str(e), "type": "url_refused"}]}
        ) from None
    now = utcnow()
    webhook = Webhook(
        id=Webhook.new_id(),
        account=account,
        name=request.name,
        labels=request.labels,
        url=request.url,
        events=sorted(set(request.events)),
        description=request.description,
        secret_salt=secrets.token_urlsafe(16),
        created_at=now,
        updated_at=now,
        status_changed_at=now,
    )

    def write(txn: Txn) -> None:
        routes = _subscriptions(txn, account)
        if len(routes.routes) >= MAX_WEBHOOKS:
            raise Conflict(f"an account has at most {MAX_WEBHOOKS} webhooks", code="too_many_webhooks")
        routes.routes = {**routes.routes, webhook.id: webhook.events}
        routes.updated_at = now
        txn.put(webhook)
        txn.put(routes)

    store.run_in_transaction(write)
    log.info("webhook created", extra={"account": account, "webhook": webhook.id, "events": webhook.events})
    return webhook, signing_secret(settings.webhook_key(), webhook)


def delete(store: Store, webhook_id: str, *, account: str) -> Webhook:
    """Remove a webhook; deliveries still owed to it are dropped by the daemon. Raises NotFound."""

    def remove(txn: Txn) -> Webhook:
        webhook = txn.get(Webhook, webhook_id, account=account)
        routes = _subscriptions(txn, account)
        routes.routes = {k: v for k, v in routes.routes.items() if k != webhook_id}
        routes.updated_at = utcnow()
        txn.delete(Webhook, webhook_id)
        txn.put(routes)
        return webhook

    webhook = store.run_in_transaction(remove)
    log.info("webhook deleted", extra={"account": account, "webhook": webhook_id})
    return webhook


def deliveries(store: Store, webhook_id: str, *, account: str, limit: int, page_token: str | None) -> Page:
    """A webhook's deliveries, newest first. Raises NotFound for another account's webhook."""
    store.get(Webhook, webhook_id, account=account)
    return store.list(
        WebhookDelivery,
        account=account,
        filters={"webhook_id": webhook_id},
        order="-created_at",
        limit=limit,
        page_token=page_token,
    )


def _subscriptions(txn: Txn, account: str) -> WebhookSubscriptions:
    """The account's subscriptions record (keyed by the account id), or a new empty one."""
    return txn.find(WebhookSubscriptions, account, account=account) or WebhookSubscriptions(id=account, account=account)
