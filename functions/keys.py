"""API keys an account makes for itself: narrower keys for CI, notebooks, colleagues.

A new key's scopes must be ones the calling key holds; its secret is returned once and
only its hash is stored. Revoking (``shared.apikeys.revoke``) is immediate for every later
request, and refused for the account's last usable admin key.
"""

from __future__ import annotations

import logging

from shared import apikeys
from shared.api import CreateApiKey
from shared.entities import ApiKey
from shared.errors import Forbidden, Invalid
from shared.store import Store

log = logging.getLogger(__name__)


def create(store: Store, request: CreateApiKey, *, caller: ApiKey) -> tuple[ApiKey, str]:
    """Raises Forbidden for a scope the caller lacks, Invalid for an expiry without a time
    zone. An expiry in the past makes a key that is expired from the start: the request is
    well-formed (no schema can say "after now"), the key just never authenticates."""
    missing = sorted(str(s) for s in set(request.scopes) - caller.granted())
    if missing:
        raise Forbidden(f"a key cannot grant scopes it lacks: {', '.join(missing)}", details={"missing": missing})
    if request.expires_at is not None:
        if request.expires_at.tzinfo is None:
            raise Invalid(
                "expires_at needs a time zone",
                details={"fields": [{"path": "expires_at", "message": "use an offset, e.g. Z", "type": "timezone_naive"}]},
            )
    key, plaintext = apikeys.new_key(
        account=caller.account,
        name=request.name,
        scopes=list(dict.fromkeys(request.scopes)),
        expires_at=request.expires_at,
        labels=request.labels,
    )
    store.create(key)
    log.info("API key created", extra={"account": caller.account, "key": key.id, "by": caller.id})
    return key, plaintext
