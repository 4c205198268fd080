"""The history of every entity: one ``Event`` per status change, written by the store in
the same transaction as the change itself, so the history can never disagree with the
entity (``shared.store.Txn.put`` records it; no caller writes events by hand).

An event says what changed (entity, from, to, reason, message, attempt), who changed it
(the component — api, daemon, worker — and, for the API, the key id) and when. Events are
read oldest first and deleted with their entity (the daemon's deletion).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from shared.entities import Entity, utcnow


@dataclass(frozen=True)
class Actor:
    """Who is making changes through a store: the component, and the API key (if any)."""

    component: str
    key_id: str | None = None


class EventStatus(StrEnum):
    recorded = "recorded"


class Event(Entity):
    """One status change of one entity. ``reason``/``message`` are the change's own."""

    kind: ClassVar[str] = "Event"
    id_prefix: ClassVar[str] = "evt"
    status_enum: ClassVar[type[StrEnum]] = EventStatus
    transitions: ClassVar[dict] = {EventStatus.recorded: frozenset()}
    terminal: ClassVar[frozenset] = frozenset({EventStatus.recorded})
    indexed: ClassVar[frozenset[str]] = frozenset({"account", "entity_id", "created_at"})
    history: ClassVar[bool] = False

    name: str = "status-change"
    status: EventStatus = EventStatus.recorded
    entity_kind: str
    entity_id: str
    from_status: str | None = None  # None: the entity was created
    to_status: str
    attempt: int | None = None
    component: str
    key_id: str | None = None

    @property
    def webhook_type(self) -> str:
        """The webhook event type: ``evaluation.complete``, ``model.ready``…"""
        return event_type(self.entity_kind, self.to_status)


def event_type(kind: str, status: str) -> str:
    return f"{kind.lower()}.{status}"


def event_of(before: str | None, entity: Entity, actor: Actor) -> Event:
    """The event recording that ``entity`` moved from ``before`` to its current status."""
    now = utcnow()
    return Event(
        id=Event.new_id(),
        account=entity.account,
        entity_kind=entity.kind,
        entity_id=entity.id,
        from_status=before,
        to_status=str(entity.status),
        reason=entity.reason,
        message=entity.message,
        attempt=getattr(entity, "attempts", None),
        component=actor.component,
        key_id=actor.key_id,
        created_at=now,
        updated_at=now,
        status_changed_at=now,
    )
