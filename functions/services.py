"""What a request handler works with: settings and the clients of Datastore, Cloud Storage
and Pub/Sub, built once per process and shared by every request."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from functions.auth import KeyCache
from shared.entities import ApiKey
from shared.indexes import Index
from shared.pubsub import Hint, Hints
from shared.settings import Settings
from shared.storage import Storage
from shared.store import Store

log = logging.getLogger(__name__)

# Hints in one publish (one message, ~100 bytes a hint: far below Pub/Sub's 10 MB cap).
MAX_HINTS_PER_PUBLISH = 1000


@dataclass
class Services:
    settings: Settings
    store: Store
    storage: Storage
    hints: Hints
    keys: KeyCache = field(default_factory=lambda: KeyCache(0))
    # Hints are published off the request path: a reply never waits on Pub/Sub. At most one
    # publish per settings.api_hint_interval_s: the hints queued meanwhile go together.
    _publisher: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="hints"))
    _queued: list[Hint] = field(default_factory=list)
    _queue_lock: threading.Lock = field(default_factory=threading.Lock)
    _last_publish: float = float("-inf")  # monotonic; only the publisher thread touches it

    @classmethod
    def from_settings(cls, settings: Settings, *, indexes: list[Index] | None = None) -> Services:
        return cls(
            settings=settings,
            store=Store.from_settings(
                settings,
                indexes=indexes,
                deadline_s=settings.api_datastore_deadline_s,
                refused_s=settings.api_datastore_refused_s,
                component="api",
            ),
            storage=Storage.from_settings(settings),
            hints=Hints(settings),
            keys=KeyCache(settings.api_auth_cache_s),
        )

    def hint(self, hints: list[Hint]) -> None:
        """Wake the daemon after a commit that created work. Published in the background;
        a failure is logged, never raised (the daemon polls, so a lost hint only delays)."""
        if not hints:
            return
        with self._queue_lock:
            idle = not self._queued  # otherwise a publish already scheduled takes these too
            self._queued.extend(hints)
        if idle:
            self._publisher.submit(self._publish)

    def _publish(self) -> None:
        wait = self._last_publish + self.settings.api_hint_interval_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_publish = time.monotonic()
        with self._queue_lock:
            hints, self._queued = self._queued[:MAX_HINTS_PER_PUBLISH], self._queued[MAX_HINTS_PER_PUBLISH:]
            if self._queued:
                self._publisher.submit(self._publish)
        if hints and not self.hints.publish(hints, timeout_s=self.settings.api_hint_timeout_s):
            log.warning("wake-up hint lost; the daemon's poll will pick the work up", extra={"ids": [h.id for h in hints]})

    def drain(self) -> None:
        """Wait for hints already handed to the publisher (tests, shutdown)."""
        self._publisher.submit(lambda: None).result()


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of one request."""

    key: ApiKey

    @property
    def account(self) -> str:
        return self.key.account


@dataclass
class Call:
    """One request as a handler sees it: the services, who calls, and the request id."""

    services: Services
    request_id: str
    caller: Caller | None = None

    @property
    def store(self) -> Store:
        """The store, recording status changes as made by the caller's key."""
        if self.caller is None:
            return self.services.store
        return self.services.store.acting_for(self.caller.key.id)

    @property
    def account(self) -> str:
        if self.caller is None:
            raise RuntimeError("a public route asked for the caller's account")
        return self.caller.account
