"""The Datastore layer: the only code that knows how entities are stored.

Every read and write names an account: an entity of another account is indistinguishable
from a missing one (``NotFound``). System processes (the daemon, the workers, storage
events) pass ``ANY_ACCOUNT`` explicitly.

Status changes are compare-and-sets inside a transaction (``transition``). Every write of
an entity whose status differs from the one read in the same transaction (or a new one)
also writes its Event and the webhook deliveries it owes, in that transaction
(``shared.outbox``): no caller can forget, and the history never disagrees with the
entity. The store's ``actor`` (component, and key id via ``acting_for``) signs them. Datastore
leaves retrying ``Aborted`` (contention) to its caller, so ``run_in_transaction`` does,
with a bounded, jittered backoff; a lost race surfaces as ``TransitionConflict``.

The store talks to Datastore through ``shared.datastore_rpc`` (raw protobuf over gRPC)
and encodes entities with ``shared.encoding``; nothing else in Assay does either.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from typing import Any, NamedTuple, TypeVar

from google.api_core import exceptions as gexc

from shared.api import decode_page_token, encode_page_token
from shared.datastore_rpc import (
    CompositeFilter,
    DatastoreRpc,
    Mutation,
    PropertyFilter,
    PropertyOrder,
    Query,
    QueryResultBatch,
    budget as datastore_budget,
)
from shared.encoding import decode, encode, get_value, label_pairs, set_value
from shared.entities import Entity, utcnow
from shared.errors import Conflict, InvalidRequest, NotFound, TransitionConflict, Unavailable, translated_google_errors
from shared.events import Actor
from shared.indexes import Index, QueryShape, covers
from shared.outbox import accounts_to_route, records_of
from shared.settings import Settings
from shared.webhooks import WebhookSubscriptions

log = logging.getLogger(__name__)

ANY_ACCOUNT = "*"
E = TypeVar("E", bound=Entity)
T = TypeVar("T")

# Every query shape this process has sent to Datastore; the deploy checks read it.
QUERY_SHAPES: set[QueryShape] = set()


class MissingIndex(RuntimeError):
    """A query that production Datastore would refuse: no index in index.yaml serves it."""


class Page(NamedTuple):
    items: list[Any]
    next_page_token: str | None


# --- the store ----------------------------------------------------------------------------


def _owned(cls: type[E], raw: Any | None, account: str) -> E | None:
    """The decoded entity, or None when it is missing or another account's."""
    if raw is None:
        return None
    entity = decode(cls, raw)
    return entity if account == ANY_ACCOUNT or entity.account == account else None


def _upsert(rpc: DatastoreRpc, entity: Entity) -> Any:
    return Mutation(upsert=encode(entity, rpc.key(entity.kind, entity.id)))


def _found(cls: type[E], entity_id: str, entity: E | None) -> E:
    if entity is None:
        raise NotFound(f"{cls.kind} {entity_id} not found", details={"kind": cls.kind, "id": entity_id})
    return entity


class Txn:
    """Reads and writes inside one Datastore transaction, scoped to an account.

    Reads go to Datastore at once; writes are collected and sent with the commit.
    """

    def __init__(self, store: Store, transaction: bytes):
        self._store = store
        self.id = transaction
        self.mutations: list[Any] = []
        # The status each entity had when this transaction read it (None: missing), and
        # the status changes written since: (status before, entity after).
        self._read_status: dict[tuple[str, str], str | None] = {}
        self.changes: list[tuple[str | None, Entity]] = []

    def get(self, cls: type[E], entity_id: str, *, account: str) -> E:
        return _found(cls, entity_id, self.find(cls, entity_id, account=account))

    def find(self, cls: type[E], entity_id: str, *, account: str) -> E | None:
        """The entity, or None when it is missing or belongs to another account."""
        return self.find_many([(cls, entity_id)], account=account)[0]

    def find_many(self, wanted: list[tuple[type[Entity], str]], *, account: str) -> list[Any]:
        """Several entities in one round trip, in the order asked; None for each one that
        is missing or another account's."""
        rpc = self._store.rpc
        found = rpc.lookup([rpc.key(cls.kind, entity_id) for cls, entity_id in wanted], transaction=self.id)
        for cls, entity_id in wanted:
            raw = found.get((cls.kind, entity_id))
            status = raw.properties.get("status") if raw is not None else None
            self._read_status[(cls.kind, entity_id)] = None if status is None else get_value(status)
        return [_owned(cls, found.get((cls.kind, entity_id)), account) for cls, entity_id in wanted]

    def put(self, entity: Entity) -> None:
        """Write ``entity`` at commit; a new status (or a new entity) is recorded as a change."""
        self.mutations.append(_upsert(self._store.rpc, entity))
        if entity.history:
            key = (entity.kind, entity.id)
            before = self._read_status.get(key)
            if before != str(entity.status):
                self.changes.append((before, entity))
                self._read_status[key] = str(entity.status)

    def _record_changes(self) -> None:
        """Write the changes' events and webhook deliveries (called once, before commit)."""
        if not self.changes:
            return
        accounts = accounts_to_route(self.changes)
        found = self.find_many([(WebhookSubscriptions, a) for a in accounts], account=ANY_ACCOUNT) if accounts else []
        subscriptions = {s.id: s for s in found if s is not None}
        for record in records_of(self.changes, self._store.actor, subscriptions):
            self.put(record)

    def delete(self, cls: type[Entity], entity_id: str) -> None:
        self.mutations.append(Mutation(delete=self._store.rpc.key(cls.kind, entity_id)))

    def list(self, cls: type[E], *, account: str, **kwargs: Any) -> Page:
        """As ``Store.list``, read inside this transaction: the entities it returns are held
        like looked-up ones, so a transaction that decides on what it counted cannot race
        another one changing them."""
        return self._store.list(cls, account=account, transaction=self.id, **kwargs)


class Store:
    def __init__(
        self,
        rpc: DatastoreRpc,
        *,
        transaction_attempts: int = 8,
        indexes: list[Index] | None = None,
        actor: Actor = Actor("system"),
    ):
        self.rpc = rpc
        self.transaction_attempts = transaction_attempts
        # When given (tests always give it), queries no index serves raise MissingIndex.
        self.indexes = indexes
        # Who the status changes made through this store are recorded as made by.
        self.actor = actor

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        indexes: list[Index] | None = None,
        deadline_s: float | None = None,
        refused_s: float | None = None,
        component: str = "system",
    ) -> Store:
        """``deadline_s`` bounds how long one Datastore call retries an unavailable backend
        (60 s when not given), ``refused_s`` how long once the connection is refused (1 s); a
        request handler wants a 503 well before, and bounds its calls together (``budget``).
        ``component`` (api, daemon, worker) is recorded on every event this store writes."""
        rpc = DatastoreRpc.from_settings(settings, deadline_s=deadline_s, refused_s=refused_s)
        return cls(rpc, transaction_attempts=settings.transaction_attempts, indexes=indexes, actor=Actor(component))

    def acting_for(self, key_id: str) -> Store:
        """This store (same connection), recording its changes as made with API key ``key_id``."""
        scoped = copy.copy(self)
        scoped.actor = Actor(self.actor.component, key_id)
        return scoped

    @staticmethod
    def budget(seconds: float) -> contextlib.AbstractContextManager[None]:
        """Every Datastore call inside the block shares one deadline; once it has passed,
        each call fails at once and surfaces as ``Unavailable``."""
        return datastore_budget(seconds)

    # -- transactions --

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Txn]:
        """One attempt at a transaction: committed on a clean exit, rolled back on error."""
        with translated_google_errors("datastore"):
            txn = Txn(self, self.rpc.begin())
            try:
                yield txn
                txn._record_changes()
            except BaseException:
                self._roll_back(txn)
                raise
            self.rpc.commit(txn.mutations, transaction=txn.id)

    def _roll_back(self, txn: Txn) -> None:
        try:
            self.rpc.rollback(txn.id)
        except gexc.GoogleAPICallError as e:
            # The transaction expires on its own; the error that got us here matters more.
            log.warning("transaction rollback failed", extra={"error": type(e).__name__})

    def run_in_transaction(self, fn: Callable[[Txn], T], *, attempts: int | None = None) -> T:
        """Run ``fn`` in a transaction, retrying on contention (``Aborted``).

        Raises ``Unavailable`` when every attempt was aborted; ``fn``'s own errors pass
        through after the transaction is rolled back.
        """
        attempts = attempts or self.transaction_attempts
        for attempt in range(1, attempts + 1):
            try:
                with self.transaction() as txn:
                    return fn(txn)
            except gexc.Aborted as e:
                if attempt == attempts:
                    raise Unavailable("datastore: too much contention, try again", retry_after=1.0) from e
                delay = min(1.0, 0.02 * 2**attempt) * random.uniform(0.5, 1.0)
                log.info("transaction aborted, retrying", extra={"attempt": attempt, "delay_s": round(delay, 3)})
                time.sleep(delay)
        raise AssertionError("unreachable")

    # -- single entities --

    def get(self, cls: type[E], entity_id: str, *, account: str) -> E:
        """Raises NotFound when missing or another account's."""
        return _found(cls, entity_id, self.find(cls, entity_id, account=account))

    def find(self, cls: type[E], entity_id: str, *, account: str) -> E | None:
        with translated_google_errors("datastore"):
            found = self.rpc.lookup([self.rpc.key(cls.kind, entity_id)])
        return _owned(cls, found.get((cls.kind, entity_id)), account)

    def create(self, entity: E) -> E:
        """Insert a new entity; a Conflict if its id exists already."""

        def insert(txn: Txn) -> E:
            if txn.find(type(entity), entity.id, account=ANY_ACCOUNT) is not None:
                raise Conflict(f"{entity.kind} {entity.id} exists already")
            txn.put(entity)
            return entity

        return self.run_in_transaction(insert)

    def put(self, entity: Entity) -> None:
        """Blind write, for fixtures and bootstrap (no event); state changes go through
        ``transition``."""
        with translated_google_errors("datastore"):
            self.rpc.commit([_upsert(self.rpc, entity)])

    def delete(self, cls: type[Entity], entity_id: str, *, account: str) -> None:
        def remove(txn: Txn) -> None:
            if txn.find(cls, entity_id, account=account) is not None:
                txn.delete(cls, entity_id)

        self.run_in_transaction(remove)

    # -- compare-and-set --

    def transition(
        self,
        cls: type[E],
        entity_id: str,
        *,
        account: str,
        expected: str | Iterable[str],
        to: str,
        reason: str | None = None,
        message: str | None = None,
        check: Callable[[E], bool] | None = None,
        guard: Callable[[Txn, E], None] | None = None,
        **changes: Any,
    ) -> E:
        """Move an entity from one of the ``expected`` statuses to ``to``, with ``changes``.

        ``check`` (optional) is a further precondition on the current entity, e.g. that the
        attempt is still the caller's. Raises ``TransitionConflict`` when the lifecycle does
        not allow ``expected -> to``, or when the current status is not expected or ``check``
        fails (a lost race: ``.current`` says what was found). ``guard`` (optional) runs in
        the same transaction once the status matched, may read more there, and refuses the
        change by raising.
        """
        expected_set = {expected} if isinstance(expected, str) else set(expected)
        for source in expected_set:
            if not cls.can_transition(source, to):
                raise TransitionConflict(
                    f"{cls.kind}: {source} -> {to} is not an allowed transition",
                    current=source,
                    details={"from": source, "to": to, "allowed": sorted(cls.transitions.get(cls.status_enum(source), ()))},
                )

        status_change = {"status": cls.status_enum(to), "reason": reason, "message": message, "status_changed_at": utcnow()}
        return self._compare_and_set(cls, entity_id, account, expected_set, check, {**changes, **status_change}, guard=guard)

    def update(
        self,
        cls: type[E],
        entity_id: str,
        *,
        account: str,
        expected: str | Iterable[str] | None = None,
        check: Callable[[E], bool] | None = None,
        **changes: Any,
    ) -> E:
        """Change fields other than the status, if the status is still an expected one."""
        expected_set = None if expected is None else ({expected} if isinstance(expected, str) else set(expected))
        return self._compare_and_set(cls, entity_id, account, expected_set, check, changes)

    def _compare_and_set(
        self,
        cls: type[E],
        entity_id: str,
        account: str,
        expected: set[str] | None,
        check: Callable[[E], bool] | None,
        changes: dict[str, Any],
        *,
        guard: Callable[[Txn, E], None] | None = None,
    ) -> E:
        """Read, check the status (and ``check``, ``guard``), write ``changes``: one transaction."""

        def cas(txn: Txn) -> E:
            current = txn.find(cls, entity_id, account=account)
            if current is None:
                raise TransitionConflict(f"{cls.kind} {entity_id} is gone", current=None)
            if (expected is not None and current.status not in expected) or (check is not None and not check(current)):
                raise TransitionConflict(
                    f"{cls.kind} {entity_id} is {current.status}, expected {sorted(expected or [])}",
                    current=str(current.status),
                )
            if guard is not None:
                guard(txn, current)
            updated = cls.model_validate({**current.model_dump(), **changes, "updated_at": utcnow()})
            txn.put(updated)
            return updated

        return self.run_in_transaction(cas)

    # -- queries --

    def list(
        self,
        cls: type[E],
        *,
        account: str,
        filters: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        order: str | None = "-created_at",
        limit: int = 50,
        page_token: str | None = None,
        transaction: bytes | None = None,
    ) -> Page:
        """One page of entities matching equality ``filters`` and ``labels``.

        ``order`` is a property name, ``-`` for descending, or None. Raises InvalidRequest
        for a page token this store did not hand out. (``Txn.list`` passes ``transaction``.)
        """
        filters = {k: (v.value if isinstance(v, Enum) else v) for k, v in (filters or {}).items() if v is not None}
        for name in filters:
            if name not in cls.indexed:
                raise ValueError(f"{cls.kind}.{name} is not indexed")
        equality = list(filters)
        conditions = list(filters.items())
        if account != ANY_ACCOUNT:
            conditions.append(("account", account))
            equality.append("account")
        conditions += [("label_pairs", pair) for pair in label_pairs(labels or {})]
        if labels:
            equality.append("label_pairs")
        orders = [order] if order else []
        self._check_index(QueryShape.of(cls.kind, equality, orders))
        query = _query(cls.kind, conditions, order, limit, _decode_token(page_token))
        with translated_google_errors("datastore"):
            try:
                batch = self.rpc.run_query(query, transaction=transaction)
            except gexc.InvalidArgument as e:
                if page_token:  # a cursor Datastore cannot read; otherwise the query is our bug
                    raise InvalidRequest("invalid page_token", code="invalid_page_token") from e
                raise
        items = [decode(cls, result.entity) for result in batch.entity_results]
        more = batch.more_results != QueryResultBatch.NO_MORE_RESULTS and len(items) == limit
        return Page(items, _encode_token(batch.end_cursor) if more else None)

    def iterate(self, cls: type[E], *, account: str, page_size: int = 200, **kwargs: Any) -> Iterator[E]:
        """Every matching entity, fetched a page at a time."""
        token = None
        while True:
            page = self.list(cls, account=account, limit=page_size, page_token=token, **kwargs)
            yield from page.items
            token = page.next_page_token
            if token is None:
                return

    def _check_index(self, shape: QueryShape) -> None:
        if self.indexes is not None and not covers(self.indexes, shape):
            raise MissingIndex(f"no index in index.yaml serves {shape}")
        QUERY_SHAPES.add(shape)  # a query refused here never reaches Datastore


def _query(kind: str, conditions: list[tuple[str, Any]], order: str | None, limit: int, cursor: bytes | None) -> Query:
    """A query for ``kind`` where every (property, value) condition holds."""
    query = Query()
    query.kind.add().name = kind
    if conditions:
        composite = query.filter.composite_filter
        composite.op = CompositeFilter.AND
        for name, value in conditions:
            condition = composite.filters.add().property_filter
            condition.property.name = name
            condition.op = PropertyFilter.EQUAL
            set_value(condition.value, value)
    if order:
        sort = query.order.add()
        sort.property.name = order.lstrip("-")
        sort.direction = PropertyOrder.DESCENDING if order.startswith("-") else PropertyOrder.ASCENDING
    query.limit.value = limit
    if cursor:
        query.start_cursor = cursor
    return query


def _encode_token(cursor: bytes) -> str:
    return encode_page_token(cursor)


def _decode_token(token: str | None) -> bytes | None:
    if not token:
        return None
    try:
        return decode_page_token(token)
    except ValueError as e:
        raise InvalidRequest("invalid page_token", code="invalid_page_token") from e
