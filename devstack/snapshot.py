"""Save every entity of a Datastore to a file, and put them back: the local stack's
Datastore emulator keeps its data across ``make down`` / ``make up`` this way.

The Firestore emulator has flags for this (``--export-on-exit``, ``--import-data``), but in
Datastore mode (google-cloud-cli 528) its export fails: ``"(default)" is an invalid
database id``, and nothing is written. So the stack snapshots through the Datastore API
itself: a kindless query, page by page, each entity written as a length-prefixed
``Entity`` protobuf; restoring upserts them in batches. The file is replaced atomically,
so a crash while saving leaves the previous snapshot whole.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

from shared.datastore_rpc import DatastoreRpc, Entity, Mutation, Query, QueryResultBatch

log = logging.getLogger(__name__)

_PAGE = 500  # entities a query page asks for, and mutations a commit sends (Datastore's cap)
_LENGTH = struct.Struct(">I")


def save(rpc: DatastoreRpc, path: Path, *, page_size: int = _PAGE) -> int:
    """Write every entity of ``rpc``'s namespace to ``path``, ``page_size`` a query;
    returns how many."""
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "wb") as out:
        for entity in _every_entity(rpc, page_size):
            data = entity.SerializeToString()
            out.write(_LENGTH.pack(len(data)) + data)
            count += 1
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return count


def restore(rpc: DatastoreRpc, path: Path, *, batch_size: int = _PAGE) -> int:
    """Upsert every entity saved in ``path`` (rewritten to ``rpc``'s project and
    namespace); returns how many."""
    batch: list[object] = []
    count = 0
    for entity in _read(path):
        entity.key.partition_id.project_id = rpc.project
        entity.key.partition_id.namespace_id = rpc.namespace
        batch.append(Mutation(upsert=entity))
        if len(batch) == batch_size:
            rpc.commit(batch)
            count += len(batch)
            batch = []
    if batch:
        rpc.commit(batch)
        count += len(batch)
    return count


def _every_entity(rpc: DatastoreRpc, page_size: int):
    cursor = b""
    while True:
        query = Query()  # no kind: every entity
        query.limit.value = page_size
        if cursor:
            query.start_cursor = cursor
        batch = rpc.run_query(query)
        for result in batch.entity_results:
            if not result.entity.key.path[-1].kind.startswith("__"):  # Datastore's own statistics
                yield result.entity
        if batch.more_results == QueryResultBatch.NO_MORE_RESULTS or not batch.entity_results:
            return
        cursor = batch.end_cursor


def _read(path: Path):
    with open(path, "rb") as f:
        while header := f.read(_LENGTH.size):
            if len(header) < _LENGTH.size:
                raise ValueError(f"{path}: truncated")
            (length,) = _LENGTH.unpack(header)
            data = f.read(length)
            if len(data) < length:
                raise ValueError(f"{path}: truncated")
            entity = Entity()
            entity.ParseFromString(data)
            yield entity
