"""Health, the OpenAPI document, and who the caller is."""

from __future__ import annotations

from typing import Any

import flask

from functions.routing import Router
from functions.services import Call
from shared.api import Health, Whoami
from shared.entities import Account, Scope

router = Router("meta", "Service health, the API description and the caller's identity.")


@router.get("/v1/health", scope=None, response=Health)
def health(call: Call) -> Health:
    """Liveness: the function is up (it does not touch its dependencies)."""
    return Health()


@router.get("/v1/openapi.json", scope=None, response=None)
def openapi(call: Call) -> dict[str, Any]:
    """This API's OpenAPI 3.1 document."""
    # The one handler that describes the app itself, so it reads the app's route table.
    return flask.current_app.extensions["assay.openapi"]()


@router.get("/v1/whoami", scope=Scope.read, response=Whoami)
def whoami(call: Call) -> Whoami:
    """The account and key this request authenticates as."""
    assert call.caller is not None
    account = call.store.get(Account, call.account, account=call.account)
    return Whoami(account=account.id, account_name=account.name, api_key=call.caller.key.id, scopes=call.caller.key.scopes)
