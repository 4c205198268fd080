"""Upload completion: a Cloud Storage object-finalize event moves its model or dataset from
``awaiting_upload`` to ``uploaded``, exactly once however often the event is delivered.

Events arrive as a CloudEvent whose data is the object resource (Eventarc's storage
trigger), or as a Pub/Sub message carrying that resource (a push subscription on the
bucket's notification topic, as the local stack and fake-gcs-server do it).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.entities import ArtifactStatus, Dataset, Model
from shared.errors import TransitionConflict
from shared.pubsub import Hint
from shared.storage import parse_upload_object
from shared.store import ANY_ACCOUNT, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinalizedObject:
    bucket: str
    name: str
    size: int


class Outcome(StrEnum):
    uploaded = "uploaded"
    too_large = "too_large"
    duplicate = "duplicate"  # already handled, or the entity moved on
    ignored = "ignored"  # not an upload this service knows


def parse_event(data: Any, attributes: dict[str, str] | None = None) -> FinalizedObject | None:
    """The finalized object an event names, or None (logged) if it is not one."""
    try:
        if isinstance(data, (bytes, str)):
            data = json.loads(data)
        if isinstance(data, dict) and isinstance(data.get("message"), dict):
            message = data["message"]
            attributes = message.get("attributes") or {}
            event_type = attributes.get("eventType")
            if event_type not in (None, "OBJECT_FINALIZE"):
                log.info("ignoring storage event", extra={"event_type": event_type})
                return None
            data = json.loads(base64.b64decode(message.get("data") or ""))
        return FinalizedObject(bucket=str(data["bucket"]), name=str(data["name"]), size=int(data["size"]))
    except (ValueError, TypeError, KeyError, binascii.Error) as e:
        log.warning("ignoring a malformed storage event: %s", e)
        return None


def object_finalized(store: Store, obj: FinalizedObject, *, bucket: str) -> tuple[Outcome, list[Hint]]:
    """Record that an upload landed. Idempotent: a redelivery is a ``duplicate``."""
    fields = {"bucket": obj.bucket, "object": obj.name, "size": obj.size}
    parsed = parse_upload_object(obj.name)
    if obj.bucket != bucket or parsed is None:
        log.info("ignoring an object that is not an upload", extra=fields)
        return Outcome.ignored, []
    folder, entity_id = parsed
    cls = Model if folder == "models" else Dataset
    entity = store.find(cls, entity_id, account=ANY_ACCOUNT)
    if entity is None or entity.upload_object != obj.name:
        log.warning("ignoring an upload no entity expects", extra=fields)
        return Outcome.ignored, []
    try:
        if obj.size > entity.declared_size:
            store.transition(
                cls,
                entity_id,
                account=ANY_ACCOUNT,
                expected=ArtifactStatus.awaiting_upload,
                to=ArtifactStatus.failed,
                reason="upload_too_large",
                message=f"the upload is {obj.size} bytes, more than the {entity.declared_size} declared",
                size=obj.size,
            )
            log.warning("upload larger than declared", extra={**fields, "id": entity_id})
            return Outcome.too_large, []
        store.transition(
            cls,
            entity_id,
            account=ANY_ACCOUNT,
            expected=ArtifactStatus.awaiting_upload,
            to=ArtifactStatus.uploaded,
            reason="uploaded",
            size=obj.size,
        )
    except TransitionConflict as e:
        log.info("upload already recorded", extra={**fields, "id": entity_id, "status": e.current})
        return Outcome.duplicate, []
    log.info("upload recorded", extra={**fields, "id": entity_id, "account": entity.account})
    return Outcome.uploaded, [Hint(kind=cls.kind, id=entity_id, account=entity.account)]
