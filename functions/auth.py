"""Authentication with a short per-instance memory of verified keys.

Verifying a key reads the key and its account from Datastore: two round trips before any
work. An instance remembers a verified header for ``api_auth_cache_s`` seconds, keyed by a
hash of the whole header (a wrong secret never matches). Expiry is still checked on every
request; a revocation made through this instance applies at once, one made elsewhere (or
an account disabled) within the cache time.
"""

from __future__ import annotations

import hashlib
import threading
import time

from shared.apikeys import authenticate
from shared.entities import ApiKey, utcnow
from shared.errors import Unauthenticated
from shared.store import Store

MAX_ENTRIES = 10_000


class KeyCache:
    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, ApiKey]] = {}
        self._lock = threading.Lock()

    def authenticate(self, store: Store, authorization: str | None) -> ApiKey:
        """As ``shared.apikeys.authenticate``; raises Unauthenticated."""
        if self.ttl_s <= 0 or not authorization:
            return authenticate(store, authorization)
        digest = hashlib.sha256(authorization.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            key = hit[1]
            if key.expires_at is not None and key.expires_at <= utcnow():
                self.forget(key.id)
                raise Unauthenticated("API key expired")
            return key
        key = authenticate(store, authorization)
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = (now + self.ttl_s, key)
        return key

    def forget(self, key_id: str) -> None:
        with self._lock:
            for digest in [d for d, (_, k) in self._entries.items() if k.id == key_id]:
                del self._entries[digest]
