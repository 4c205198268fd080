"""How entities are stored: native Datastore values for scalars (so they can be indexed),
JSON text for everything else, and labels twice — as JSON for reading and as an indexed
``key=value`` list for equality filters. Only ``indexed`` properties enter indexes.

Entities become Datastore's own protobuf messages directly (``shared.datastore_rpc``);
the values are the ones google-cloud-datastore writes for the same Python types, so
entities written by either read back the same.
"""

from __future__ import annotations

import datetime as dt
import json
import types
import typing
from enum import Enum
from typing import Any, TypeVar

from pydantic import BaseModel

from shared.datastore_rpc import Entity as EntityPb
from shared.entities import Entity

E = TypeVar("E", bound=Entity)

_SCALARS = (str, int, float, bool, dt.datetime)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


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
        setattr(cls, "_assay_json_fields", cached)  # noqa: B010 — a cache on the class, unknown to its type
    return cached


def label_pairs(labels: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(labels.items())]


def encode(entity: Entity, key: Any) -> Any:
    """The entity as a Datastore ``Entity`` message under ``key``."""
    cls = type(entity)
    json_fields = _json_fields(cls)
    pb = EntityPb()
    pb.key.CopyFrom(key)
    properties = pb.properties
    for name in cls.model_fields:
        value = getattr(entity, name)
        if name in json_fields:
            value = json.dumps(_jsonable(value), sort_keys=True)
        set_value(properties[name], value, indexed=name in cls.indexed)
    set_value(properties["label_pairs"], label_pairs(entity.labels), indexed="label_pairs" in cls.indexed)
    return pb


# The Value field for each scalar type, looked up by exact type (subclasses such as str
# enums take the slower path below).
_FIELD_OF_TYPE = {str: "string_value", int: "integer_value", float: "double_value", bool: "boolean_value"}


def set_value(pb: Any, value: Any, *, indexed: bool = True) -> None:
    """Write a Python scalar (or a list of them) into a Datastore ``Value`` message."""
    if not indexed and not isinstance(value, list):
        pb.exclude_from_indexes = True  # an array carries no index flag of its own; its items do
    field = _FIELD_OF_TYPE.get(type(value))
    if field is not None:
        setattr(pb, field, value)
    elif value is None:
        pb.null_value = 0
    elif isinstance(value, Enum):
        set_value(pb, value.value)
    elif isinstance(value, dt.datetime):
        # Naive datetimes are UTC, as google-cloud-datastore takes them.
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        seconds, micros = divmod((aware - _EPOCH) // _MICROSECOND, 1_000_000)
        pb.timestamp_value.seconds = seconds
        pb.timestamp_value.nanos = micros * 1000
    elif isinstance(value, list):
        array = pb.array_value
        array.SetInParent()  # an empty list is an empty array, not a missing value
        for item in value:
            set_value(array.values.add(), item, indexed=indexed)
    else:
        raise TypeError(f"no Datastore value for {type(value).__name__}")


_PLAIN_FIELDS = frozenset({"string_value", "integer_value", "boolean_value", "double_value"})


def get_value(pb: Any) -> Any:
    kind = pb.WhichOneof("value_type")
    if kind in _PLAIN_FIELDS:
        return getattr(pb, kind)
    if kind == "timestamp_value":
        ts = pb.timestamp_value
        return _EPOCH + dt.timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)
    if kind == "null_value" or kind is None:
        return None
    if kind == "array_value":
        return [get_value(item) for item in pb.array_value.values]
    raise TypeError(f"Assay never stores a Datastore {kind}")


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


def decode(cls: type[E], pb: Any) -> E:
    """The entity a Datastore ``Entity`` message holds."""
    json_fields = _json_fields(cls)
    fields = cls.model_fields
    data = {}
    for name, value_pb in pb.properties.items():
        if name not in fields:
            continue  # label_pairs, or a property a newer version wrote
        value = get_value(value_pb)
        if name in json_fields and isinstance(value, str):
            value = json.loads(value)
        data[name] = value
    return cls.model_validate(data)
