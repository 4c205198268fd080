"""The Datastore v1 RPCs the store makes, over gRPC with raw protobuf messages.

google-cloud-datastore wraps every call in proto-plus messages, its own entity and key
classes and api_core's retry and timeout decorators; at the API's request rates that
marshalling cost more CPU than the rest of a request (bench/README.md). The store needs
six RPCs, so it sends the wire messages itself: the message classes are the library's own
generated ones (``.pb()``), the production channel is made by the library's transport
(credentials, scopes), and failures become ``google.api_core`` exceptions exactly as the
library raises them, so ``shared.errors.translated_google_errors`` stays the one place
that turns them into Assay's errors.

Retries: a call that finds the backend unavailable is retried with capped, jittered
backoff until ``deadline_s`` — every call but ``Commit``, which may have landed before the
error. ``Aborted`` (contention) is never retried here: the store's transaction loop does.

Budgets: inside ``with budget(seconds)`` every call shares one deadline, so a caller that
makes several calls (an API request: authenticate, then a transaction) gives up on all of
them together; past it a call fails at once with ``DeadlineExceeded``. A connection that
cannot be made (refused, no route) fails in microseconds, so waiting out the whole budget
for it only holds the caller: once refused, a call retries for ``refused_s`` at most.

Channels: a few, each thread keeping one. A grpc Python channel serialises its calls'
bookkeeping on one Python lock, which it holds while it releases the GIL to call into gRPC
core; in a busy threaded process the holder then waits for the GIL, and every other call on
that channel waits for the holder. With one channel for the API's 20 request threads, most
of a request thread's time went to that wait (bench/README.md: api_latency).
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import grpc
from google.api_core import exceptions as gexc
from google.cloud.datastore_v1.types import datastore as datastore_types, entity as entity_types, query as query_types

from shared.settings import Settings

Entity = entity_types.Entity.pb()
Key = entity_types.Key.pb()
Query = query_types.Query.pb()
QueryResultBatch = query_types.QueryResultBatch.pb()
PropertyFilter = query_types.PropertyFilter.pb()
CompositeFilter = query_types.CompositeFilter.pb()
PropertyOrder = query_types.PropertyOrder.pb()
Mutation = datastore_types.Mutation.pb()
_BeginTransactionRequest = datastore_types.BeginTransactionRequest.pb()
_LookupRequest = datastore_types.LookupRequest.pb()
_RunQueryRequest = datastore_types.RunQueryRequest.pb()
_CommitRequest = datastore_types.CommitRequest.pb()
_RollbackRequest = datastore_types.RollbackRequest.pb()

_SERVICE = "/google.datastore.v1.Datastore/"
PRODUCTION_HOST = "datastore.googleapis.com:443"
# As the library's transport: entities and query pages are not capped by gRPC's 4 MiB.
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
_TRANSIENT = (gexc.ServiceUnavailable, gexc.DeadlineExceeded)
# Lookups answer at most 1000 keys at a time and defer the rest; the library gives up after 100 rounds too.
_MAX_LOOKUP_ROUNDS = 100
# Channels per process (see the module's docstring). Under the API benchmark's 16 clients, 4
# channels took the create's p50 down ~8%; 20 (one per request thread) did no better.
CHANNELS = 4
# When the current budget ends (time.monotonic()), if a ``budget`` block is open.
_budget_ends: contextvars.ContextVar[float | None] = contextvars.ContextVar("datastore_budget_ends", default=None)


@contextlib.contextmanager
def budget(seconds: float) -> Iterator[None]:
    """Every Datastore call made inside the block (in this thread or context) shares one
    deadline ``seconds`` from now; a nested block cannot extend an outer one's."""
    ends = time.monotonic() + seconds
    outer = _budget_ends.get()
    token = _budget_ends.set(ends if outer is None else min(outer, ends))
    try:
        yield
    finally:
        _budget_ends.reset(token)


def _refused(error: grpc.RpcError) -> bool:
    """Whether gRPC could not make a connection at all (nothing listens, no route)."""
    details = (error.details() or "") if isinstance(error, grpc.Call) else ""
    return error.code() == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in details.lower() or "connection refused" in details.lower()
    )


class _Stubs:
    """The RPCs on one channel."""

    def __init__(self, channel: grpc.Channel):
        def stub(name: str, response: Any) -> grpc.UnaryUnaryMultiCallable:
            return channel.unary_unary(_SERVICE + name, request_serializer=_serialize, response_deserializer=response.FromString)

        self.begin = stub("BeginTransaction", datastore_types.BeginTransactionResponse.pb())
        self.lookup = stub("Lookup", datastore_types.LookupResponse.pb())
        self.run_query = stub("RunQuery", datastore_types.RunQueryResponse.pb())
        self.commit = stub("Commit", datastore_types.CommitResponse.pb())
        self.rollback = stub("Rollback", datastore_types.RollbackResponse.pb())


class DatastoreRpc:
    """One project's (and namespace's) Datastore, over a few gRPC channels shared by threads."""

    def __init__(
        self,
        channels: Sequence[grpc.Channel],
        *,
        project: str,
        namespace: str | None = None,
        deadline_s: float = 60.0,
        refused_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.project = project
        self.namespace = namespace or ""
        self.deadline_s = deadline_s
        self.refused_s = refused_s
        self._sleep = sleep
        # Production routes on this header (the library sends it on every call too).
        self._metadata = (("x-goog-request-params", f"project_id={project}"),)

        self._channel_stubs = [_Stubs(channel) for channel in channels]
        self._next_channel = itertools.count()
        self._thread = threading.local()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, deadline_s: float | None = None, refused_s: float | None = None
    ) -> DatastoreRpc:
        """The emulator over plain gRPC when ``datastore_emulator_host`` is set; otherwise
        Datastore with the environment's default credentials."""
        if settings.datastore_emulator_host:
            channels = [
                grpc.insecure_channel(settings.datastore_emulator_host, options=_CHANNEL_OPTIONS) for _ in range(CHANNELS)
            ]
        else:
            import google.auth
            from google.cloud.datastore_v1.services.datastore.transports import DatastoreGrpcTransport

            credentials, _ = google.auth.default(scopes=DatastoreGrpcTransport.AUTH_SCOPES)
            channels = [
                DatastoreGrpcTransport.create_channel(PRODUCTION_HOST, credentials=credentials, options=_CHANNEL_OPTIONS)
                for _ in range(CHANNELS)
            ]
        kwargs: dict[str, Any] = {k: v for k, v in (("deadline_s", deadline_s), ("refused_s", refused_s)) if v is not None}
        return cls(channels, project=settings.project, namespace=settings.namespace, **kwargs)

    # -- messages --

    def key(self, kind: str, name: str) -> Any:
        key = Key()
        key.partition_id.project_id = self.project
        if self.namespace:
            key.partition_id.namespace_id = self.namespace
        element = key.path.add()
        element.kind = kind
        element.name = name
        return key

    # -- calls --

    def begin(self) -> bytes:
        """A new read-write transaction's id."""
        return self._call(self._stubs().begin, _BeginTransactionRequest(project_id=self.project)).transaction

    def lookup(self, keys: list[Any], *, transaction: bytes | None = None) -> dict[tuple[str, str], Any]:
        """The entities found, by (kind, name) of their key; missing ones are absent."""
        request = _LookupRequest(project_id=self.project)
        if transaction is not None:
            request.read_options.transaction = transaction
        request.keys.extend(keys)
        found: dict[tuple[str, str], Any] = {}
        for _ in range(_MAX_LOOKUP_ROUNDS):
            response = self._call(self._stubs().lookup, request)
            for result in response.found:
                element = result.entity.key.path[-1]
                found[(element.kind, element.name)] = result.entity
            if not response.deferred:
                return found
            del request.keys[:]
            request.keys.extend(response.deferred)
        raise gexc.ServiceUnavailable("datastore kept deferring keys of a lookup")

    def run_query(self, query: Any, *, transaction: bytes | None = None) -> Any:
        """One batch of ``query``'s results (``QueryResultBatch``), read with strong consistency
        (inside ``transaction`` when given: what it returns is then locked like a lookup)."""
        request = _RunQueryRequest(project_id=self.project)
        if transaction is not None:
            request.read_options.transaction = transaction
        request.partition_id.project_id = self.project
        if self.namespace:
            request.partition_id.namespace_id = self.namespace
        request.query.CopyFrom(query)
        return self._call(self._stubs().run_query, request).batch

    def commit(self, mutations: Iterable[Any], *, transaction: bytes | None = None) -> None:
        """Apply ``mutations``: inside ``transaction``, or on their own when it is None."""
        request = _CommitRequest(project_id=self.project)
        if transaction is None:
            request.mode = _CommitRequest.NON_TRANSACTIONAL
        else:
            request.mode = _CommitRequest.TRANSACTIONAL
            request.transaction = transaction
        request.mutations.extend(mutations)
        self._call(self._stubs().commit, request, retry=False)

    def rollback(self, transaction: bytes) -> None:
        """Release a transaction's locks now rather than when it expires. One attempt:
        this runs after another failure, which a slow retry would only delay."""
        self._call(self._stubs().rollback, _RollbackRequest(project_id=self.project, transaction=transaction), retry=False)

    def _stubs(self) -> _Stubs:
        """This thread's channel: threads take the channels in turn and keep theirs."""
        stubs = getattr(self._thread, "stubs", None)
        if stubs is None:
            stubs = self._thread.stubs = self._channel_stubs[next(self._next_channel) % len(self._channel_stubs)]
        return stubs

    def _call(self, stub: grpc.UnaryUnaryMultiCallable, request: Any, *, retry: bool = True) -> Any:
        now = time.monotonic()
        give_up_at = now + self.deadline_s
        ends = _budget_ends.get()
        if ends is not None:
            if ends <= now:
                raise gexc.DeadlineExceeded("the Datastore budget of this request is spent")
            give_up_at = min(give_up_at, ends)
        refused_since: float | None = None
        attempt = 0
        while True:
            attempt += 1
            timeout = give_up_at - time.monotonic()
            try:
                return stub(request, timeout=max(timeout, 0.001), metadata=self._metadata)
            except grpc.RpcError as e:
                error = gexc.from_grpc_error(e)
                if not retry or not isinstance(error, _TRANSIENT):
                    raise error from e
                if refused_since is None and _refused(e):
                    refused_since = time.monotonic()
                    give_up_at = min(give_up_at, refused_since + self.refused_s)
                delay = min(1.0, 0.05 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                if time.monotonic() + delay >= give_up_at:
                    raise error from e
            self._sleep(delay)


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()
