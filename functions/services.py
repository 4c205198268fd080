"""What a request handler works with: settings and the clients of Datastore, Cloud Storage
and Pub/Sub, built once per process and shared by every request."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.entities import ApiKey
from shared.indexes import Index
from shared.pubsub import Hint, Hints
from shared.settings import Settings
from shared.storage import Storage
from shared.store import Store

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: Store
    storage: Storage
    hints: Hints

    @classmethod
    def from_settings(cls, settings: Settings, *, indexes: list[Index] | None = None) -> "Services":
        return cls(
            settings=settings,
            store=Store.from_settings(settings, indexes=indexes, deadline_s=settings.api_datastore_deadline_s),
            storage=Storage.from_settings(settings),
            hints=Hints(settings),
        )

    def hint(self, hints: list[Hint]) -> None:
        """Wake the daemon after a commit that created work; a failure is logged, not raised
        (the daemon polls, so a lost hint only delays the work)."""
        if hints and not self.hints.publish(hints, timeout_s=self.settings.api_hint_timeout_s):
            log.warning("wake-up hint lost; the daemon's poll will pick the work up", extra={"ids": [h.id for h in hints]})


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
        return self.services.store

    @property
    def account(self) -> str:
        if self.caller is None:
            raise RuntimeError("a public route asked for the caller's account")
        return self.caller.account
