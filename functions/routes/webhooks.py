"""Webhooks: register, list, read, delete, and each one's deliveries."""

from __future__ import annotations

from functions import webhooks
from functions.routes.views import view
from functions.routing import Router
from functions.services import Call
from shared.api import CreateWebhook, DeliveryPage, DeliveryView, PageQuery, WebhookCreated, WebhookPage, WebhookView
from shared.entities import Scope
from shared.webhooks import Webhook

router = Router(
    "webhooks",
    "Webhooks: signed JSON deliveries of status changes (Assay-Signature), retried for a day, in order per entity.",
)
ID = {"webhook_id": "whk"}


@router.post("/v1/webhooks", scope=Scope.admin, body=CreateWebhook, response=WebhookCreated, status=201)
def create_webhook(call: Call, *, body: CreateWebhook) -> WebhookCreated:
    """Register a webhook; the reply holds its signing secret, shown this once."""
    webhook, secret = webhooks.create(call.store, body, account=call.account, settings=call.services.settings)
    return WebhookCreated(webhook=view(WebhookView, webhook), secret=secret)


@router.get("/v1/webhooks", scope=Scope.read, query=PageQuery, response=WebhookPage)
def list_webhooks(call: Call, *, query: PageQuery) -> WebhookPage:
    """The account's webhooks, newest first."""
    page = call.store.list(Webhook, account=call.account, limit=query.limit, page_token=query.page_token)
    return WebhookPage(items=[view(WebhookView, w) for w in page.items], next_page_token=page.next_page_token)


@router.get("/v1/webhooks/{webhook_id}", scope=Scope.read, response=WebhookView, params=ID)
def get_webhook(call: Call, *, webhook_id: str) -> WebhookView:
    """One webhook."""
    return view(WebhookView, call.store.get(Webhook, webhook_id, account=call.account))


@router.delete("/v1/webhooks/{webhook_id}", scope=Scope.admin, response=WebhookView, params=ID)
def delete_webhook(call: Call, *, webhook_id: str) -> WebhookView:
    """Delete a webhook; nothing more is delivered to it."""
    return view(WebhookView, webhooks.delete(call.store, webhook_id, account=call.account))


@router.get("/v1/webhooks/{webhook_id}/deliveries", scope=Scope.read, query=PageQuery, response=DeliveryPage, params=ID)
def webhook_deliveries(call: Call, *, webhook_id: str, query: PageQuery) -> DeliveryPage:
    """The webhook's deliveries, newest first, each with every attempt made."""
    page = webhooks.deliveries(call.store, webhook_id, account=call.account, limit=query.limit, page_token=query.page_token)
    return DeliveryPage(items=[view(DeliveryView, d) for d in page.items], next_page_token=page.next_page_token)
