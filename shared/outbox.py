"""What a status change leaves behind besides itself: its event and the webhook deliveries
it owes. ``shared.store`` writes ``records_of`` its changes inside the transaction that
makes them, just before the commit, so all of it commits or none does.
"""

from __future__ import annotations

import json

from shared.api import VIEW_OF_KIND, EventView
from shared.entities import Entity
from shared.events import Actor, Event, event_of
from shared.webhooks import SUBSCRIBABLE_KINDS, WebhookDelivery, WebhookSubscriptions


def accounts_to_route(changes: list[tuple[str | None, Entity]]) -> list[str]:
    """The accounts whose webhook subscriptions the changes must be routed through."""
    return sorted({entity.account for _, entity in changes if entity.kind in SUBSCRIBABLE_KINDS})


def records_of(
    changes: list[tuple[str | None, Entity]], actor: Actor, subscriptions: dict[str, WebhookSubscriptions]
) -> list[Entity]:
    """An Event per change, and a WebhookDelivery per webhook of the same account subscribed
    to its type (``subscriptions`` by account id). Another account's webhook never sees it."""
    out: list[Entity] = []
    for before, entity in changes:
        event = event_of(before, entity, actor)
        out.append(event)
        routes = subscriptions.get(entity.account)
        if routes is not None and routes.account == entity.account:
            out += [_delivery(w, event, entity) for w in routes.webhooks_for(event.webhook_type)]
    return out


def _delivery(webhook_id: str, event: Event, entity: Entity) -> WebhookDelivery:
    delivery_id = WebhookDelivery.new_id()
    body = {
        "id": delivery_id,
        "type": event.webhook_type,
        "created_at": event.created_at.isoformat(),
        "data": {
            "object": VIEW_OF_KIND[entity.kind].model_validate(entity.model_dump()).model_dump(mode="json"),
            "event": EventView.model_validate(event.model_dump()).model_dump(mode="json"),
        },
    }
    return WebhookDelivery(
        id=delivery_id,
        account=event.account,
        webhook_id=webhook_id,
        event_type=event.webhook_type,
        event_id=event.id,
        entity_kind=event.entity_kind,
        entity_id=event.entity_id,
        body=json.dumps(body, separators=(",", ":")),
        next_attempt_at=event.created_at,
        created_at=event.created_at,
        updated_at=event.created_at,
        status_changed_at=event.created_at,
    )
