"""Models and datasets: create one with its upload ticket, issue a new ticket, list, delete.

A model and a dataset follow the same lifecycle, so the code is shared; ``ARTIFACTS``
holds what differs (storage folder, size limit, archive format, file name).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from shared.api import CONTENT_TYPES, DATASET_ARCHIVE, MODEL_ARCHIVE, CreateDataset, CreateModel, UploadTicket
from shared.entities import Artifact, ArtifactStatus, Dataset, Model
from shared.errors import Conflict, Invalid, NotFound, TransitionConflict
from shared.pubsub import Hint
from shared.settings import Settings
from shared.storage import SignedUrl, Storage, upload_object
from shared.store import Page, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArtifactKind:
    cls: type[Artifact]
    folder: str  # uploads/{folder}/{id}/…

    def max_bytes(self, settings: Settings) -> int:
        return settings.max_model_bytes if self.cls is Model else settings.max_dataset_bytes

    def archive(self, spec: CreateModel | CreateDataset) -> str:
        if isinstance(spec, CreateModel):
            return MODEL_ARCHIVE[spec.archive_format]
        assert spec.format is not None  # CreateDataset fills in the task's default
        return DATASET_ARCHIVE[spec.format]


MODELS = ArtifactKind(Model, "models")
DATASETS = ArtifactKind(Dataset, "datasets")


def ticket_of(signed: SignedUrl) -> UploadTicket:
    return UploadTicket(url=signed.url, method="PUT", headers=signed.headers, expires_at=signed.expires_at)


def _content_type(archive: str, requested: str | None) -> str:
    """The requested type (the request model allows only known ones), or the format's usual one."""
    return requested if requested is not None else CONTENT_TYPES[archive][0]


def create(
    kind: ArtifactKind, spec: CreateModel | CreateDataset, *, account: str, store: Store, storage: Storage
) -> tuple[Artifact, UploadTicket]:
    """Create the entity (``awaiting_upload``) and a signed PUT for its bytes.

    Raises Invalid for a size over the limit. The URL is
    signed before the entity is written, so a signing failure leaves nothing behind.
    """
    limit = kind.max_bytes(storage.settings)
    if spec.size > limit:
        raise Invalid(
            f"size {spec.size} exceeds the limit of {limit} bytes",
            details={"fields": [{"path": "size", "message": f"at most {limit}", "type": "too_large"}], "limit": limit},
        )
    archive = kind.archive(spec)
    content_type = _content_type(archive, spec.content_type)
    entity_id = kind.cls.new_id()
    name = upload_object(kind.folder, entity_id, f"{kind.folder[:-1]}.{archive}")
    signed = storage.signed_put(name, content_type=content_type, max_bytes=spec.size)
    fields: dict[str, Any] = spec.model_dump(exclude={"size", "content_type"})
    entity = kind.cls(
        id=entity_id,
        account=account,
        declared_size=spec.size,
        content_type=content_type,
        upload_object=name,
        **fields,
    )
    store.create(entity)
    log.info("%s created, awaiting upload", kind.cls.kind, extra={"id": entity_id, "account": account})
    return entity, ticket_of(signed)


def new_ticket(kind: ArtifactKind, entity_id: str, *, account: str, store: Store, storage: Storage) -> UploadTicket:
    """A fresh upload ticket; Conflict unless the entity still awaits its upload."""
    entity = store.get(kind.cls, entity_id, account=account)
    if entity.status != ArtifactStatus.awaiting_upload:
        raise Conflict(
            f"{kind.cls.kind} {entity_id} is {entity.status}: upload tickets are issued only while awaiting upload",
            details={"status": str(entity.status)},
        )
    signed = storage.signed_put(entity.upload_object, content_type=entity.content_type, max_bytes=entity.declared_size)
    return ticket_of(signed)


def listing(
    kind: ArtifactKind,
    *,
    account: str,
    store: Store,
    status: str | None,
    name: str | None,
    labels: dict[str, str],
    limit: int,
    page_token: str | None,
) -> Page:
    return store.list(
        kind.cls,
        account=account,
        filters={"status": status, "name": name},
        labels=labels,
        limit=limit,
        page_token=page_token,
    )


DELETABLE = [s for s in ArtifactStatus if ArtifactStatus.deleting in Model.transitions[s]]


def request_deletion(kind: ArtifactKind, entity_id: str, *, account: str, store: Store) -> tuple[Artifact, list[Hint]]:
    """Mark the entity ``deleting`` (the daemon removes its data and dependents).

    Idempotent: an entity already deleting or gone is returned as it is. Raises NotFound.
    """
    try:
        entity = store.transition(
            kind.cls,
            entity_id,
            account=account,
            expected=DELETABLE,
            to=ArtifactStatus.deleting,
            reason="deletion_requested",
            message="deletion requested by the owner",
        )
    except TransitionConflict as e:
        if e.current is None:
            raise NotFound(f"{kind.cls.kind} {entity_id} not found", details={"kind": kind.cls.kind, "id": entity_id}) from None
        return store.get(kind.cls, entity_id, account=account), []
    return entity, [Hint(kind=kind.cls.kind, id=entity.id, account=account)]
