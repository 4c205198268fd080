"""API keys: an account makes, lists and revokes its own keys (the admin scope)."""

from __future__ import annotations

from functions import keys
from functions.routes.views import labels_filter, view
from functions.routing import Router
from functions.services import Call
from shared import apikeys
from shared.api import ApiKeyCreated, ApiKeyListQuery, ApiKeyPage, ApiKeyView, CreateApiKey
from shared.entities import ApiKey, Scope

router = Router("api-keys", "Keys of the caller's account. The secret is shown once, at creation.")


@router.post("/v1/api-keys", scope=Scope.admin, body=CreateApiKey, response=ApiKeyCreated, status=201)
def create_api_key(call: Call, *, body: CreateApiKey) -> ApiKeyCreated:
    """Make a key with the given scopes (at most the caller's own)."""
    assert call.caller is not None
    key, plaintext = keys.create(call.store, body, caller=call.caller.key)
    return ApiKeyCreated(api_key=view(ApiKeyView, key), secret=plaintext)


@router.get("/v1/api-keys", scope=Scope.admin, query=ApiKeyListQuery, response=ApiKeyPage)
def list_api_keys(call: Call, *, query: ApiKeyListQuery) -> ApiKeyPage:
    """The account's keys, newest first."""
    page = call.store.list(
        ApiKey,
        account=call.account,
        filters={"status": query.status, "name": query.name},
        labels=labels_filter(query.labels),
        limit=query.limit,
        page_token=query.page_token,
    )
    return ApiKeyPage(items=[view(ApiKeyView, k) for k in page.items], next_page_token=page.next_page_token)


@router.get("/v1/api-keys/{key_id}", scope=Scope.admin, response=ApiKeyView, params={"key_id": "key"})
def get_api_key(call: Call, *, key_id: str) -> ApiKeyView:
    """One key (never its secret)."""
    return view(ApiKeyView, call.store.get(ApiKey, key_id, account=call.account))


@router.delete("/v1/api-keys/{key_id}", scope=Scope.admin, response=ApiKeyView, params={"key_id": "key"})
def revoke_api_key(call: Call, *, key_id: str) -> ApiKeyView:
    """Revoke a key: every later request with it is refused. The account's last usable admin
    key cannot be revoked (409 ``last_admin_key``): make another admin key first."""
    revoked = apikeys.revoke(call.store, key_id, account=call.account)
    call.services.keys.forget(key_id)
    return view(ApiKeyView, revoked)
