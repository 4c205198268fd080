"""Entities to response views (each view shows only the fields it names, in shared/api.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel

from shared.api import EventPage, EventView, PageQuery, parse_labels_selector
from shared.entities import Entity
from shared.errors import Invalid
from shared.events import Event

if TYPE_CHECKING:
    from functions.services import Call

V = TypeVar("V", bound=BaseModel)


def view(cls: type[V], entity: Entity) -> V:
    return cls.model_validate(entity.model_dump())


def history(call: Call, cls: type[Entity], entity_id: str, query: PageQuery) -> EventPage:
    """One page of an entity's events, oldest first; NotFound as for the entity itself."""
    call.store.get(cls, entity_id, account=call.account)
    page = call.store.list(
        Event,
        account=call.account,
        filters={"entity_id": entity_id},
        order="created_at",
        limit=query.limit,
        page_token=query.page_token,
    )
    return EventPage(items=[view(EventView, e) for e in page.items], next_page_token=page.next_page_token)


def labels_filter(selector: str | None) -> dict[str, str]:
    try:
        return parse_labels_selector(selector)
    except ValueError as e:
        raise Invalid(str(e), details={"fields": [{"path": "labels", "message": str(e), "type": "selector"}]}) from None
