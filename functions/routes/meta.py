"""Health, the OpenAPI document, and who the caller is."""

from __future__ import annotations

from typing import Any

import flask

from functions.routing import Router
from functions.services import Call
from shared.api import Health, Whoami
from shared.entities import Account, Scope
from shared.store import ANY_ACCOUNT

router = Router("meta", "Service health, the API description and the caller's identity.")


@router.get("/v1/health", scope=None, response=Health)
def health(call: Call) -> Health:
    """Liveness: the function is up. It touches no dependency, so it answers during an outage."""
    return Health()


# An id no entity has (ids are random over [0-9a-z]; this one is reserved for the probe).
READINESS_PROBE_ID = "acc_00000000000000000000"


@router.get("/v1/ready", scope=None, response=Health)
def ready(call: Call) -> Health:
    """Readiness: Datastore answers a lookup within the request's budget (503 otherwise)."""
    call.store.find(Account, READINESS_PROBE_ID, account=ANY_ACCOUNT)
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
