"""How entities are stored: native Datastore values for scalars (so they can be indexed),
JSON text for everything else, and labels twice — as JSON for reading and as an indexed
``key=value`` list for equality filters. Only ``indexed`` properties enter indexes.
"""

from __future__ import annotations

import datetime as dt
import json
import types
import typing
from enum import Enum
from typing import Any, TypeVar

from google.cloud import datastore
from pydantic import BaseModel

from shared.entities import Entity

E = TypeVar("E", bound=Entity)

_SCALARS = (str, int, float, bool, dt.datetime)


def _is_scalar(annotation: Any) -> bool:
    """Scalars are stored natively (and can be indexed); anything else as JSON text."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return len(args) == 1 and _is_scalar(args[0])
    if origin is typing.Literal:
        return True
    return isinstance(annotation, type) and (issubclass(annotation, _SCALARS) or issubclass(annotation, Enum))


def _json_fields(cls: type[Entity]) -> frozenset[str]:
    cached = cls.__dict__.get("_assay_json_fields")
    if cached is None:
        cached = frozenset(n for n, f in cls.model_fields.items() if not _is_scalar(f.annotation))
        setattr(cls, "_assay_json_fields", cached)
    return cached


def label_pairs(labels: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(labels.items())]


def encode(client: datastore.Client, entity: Entity) -> datastore.Entity:
    cls = type(entity)
    json_fields = _json_fields(cls)
    props: dict[str, Any] = {}
    for name in cls.model_fields:
        value = getattr(entity, name)
        if name in json_fields:
            value = json.dumps(_jsonable(value), sort_keys=True)
        elif isinstance(value, Enum):
            value = value.value
        props[name] = value
    props["label_pairs"] = label_pairs(entity.labels)
    excluded = tuple(n for n in props if n not in cls.indexed)
    ds_entity = datastore.Entity(key=client.key(cls.kind, entity.id), exclude_from_indexes=excluded)
    ds_entity.update(props)
    return ds_entity


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def decode(cls: type[E], ds_entity: datastore.Entity) -> E:
    json_fields = _json_fields(cls)
    data = {}
    for name in cls.model_fields:
        if name not in ds_entity:
            continue
        value = ds_entity[name]
        if name in json_fields and isinstance(value, str):
            value = json.loads(value)
        data[name] = value
    return cls.model_validate(data)


