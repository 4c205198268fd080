"""Entities to response views (the private fields dropped by the view models)."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

from shared.api import parse_labels_selector
from shared.entities import Entity
from shared.errors import Invalid

V = TypeVar("V", bound=BaseModel)


def view(cls: type[V], entity: Entity) -> V:
    return cls.model_validate(entity.model_dump())


def labels_filter(selector: str | None) -> dict[str, str]:
    try:
        return parse_labels_selector(selector)
    except ValueError as e:
        raise Invalid(str(e), details={"fields": [{"path": "labels", "message": str(e), "type": "selector"}]}) from None
