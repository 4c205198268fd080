"""Authentication, scopes, API key management, and the assay-admin bootstrap command."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from conftest import bearer

from shared import admin, apikeys
from shared.entities import ApiKey, Scope, utcnow
from shared.store import ANY_ACCOUNT


def test_health_and_openapi_need_no_key(client):
    assert client.get("/v1/health").json == {"status": "ok"}
    assert client.get("/v1/openapi.json").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Basic dXNlcjpwdw=="},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer assay_garbage"},
        {"Authorization": "Bearer assay_key_00000000000000000000_" + "A" * 43},
    ],
    ids=["missing", "empty", "basic", "empty-bearer", "malformed", "unknown"],
)
def test_missing_malformed_or_unknown_keys_are_401(client, alice, headers):
    for method, path in [("get", "/v1/models"), ("post", "/v1/evaluations"), ("get", "/v1/api-keys")]:
        r = getattr(client, method)(path, headers=headers, json={})
        assert r.status_code == 401, (path, r.json)
        assert r.json["error"]["code"] == "unauthenticated"


def test_expired_and_revoked_keys_are_401(client, services, alice):
    key, plaintext = apikeys.new_key(
        account=alice.account, name="old", scopes=[Scope.read], expires_at=utcnow() - dt.timedelta(seconds=1)
    )
    services.store.put(key)
    assert client.get("/v1/models", headers=bearer(plaintext)).status_code == 401

    r = client.post("/v1/api-keys", json={"name": "ci", "scopes": ["read"]}, headers=alice.admin)
    ci = r.json
    assert client.get("/v1/models", headers=bearer(ci["secret"])).status_code == 200
    r = client.delete(f"/v1/api-keys/{ci['api_key']['id']}", headers=alice.admin)
    assert r.status_code == 200 and r.json["status"] == "revoked"
    r = client.get("/v1/models", headers=bearer(ci["secret"]))
    assert r.status_code == 401 and "revoked" in r.json["error"]["message"]


def test_scopes_are_enforced_with_403(client, alice):
    assert client.get("/v1/models", headers=alice.read).status_code == 200
    r = client.post("/v1/models", json={"name": "m", "size": 10}, headers=alice.read)
    assert r.status_code == 403 and r.json["error"]["details"] == {"required": "write"}
    assert client.post("/v1/models", json={"name": "m", "size": 10}, headers=alice.write).status_code == 201
    for headers in (alice.read, alice.write):
        assert client.get("/v1/api-keys", headers=headers).status_code == 403
        assert client.post("/v1/api-keys", json={"name": "x", "scopes": ["read"]}, headers=headers).status_code == 403
    assert client.get("/v1/api-keys", headers=alice.admin).status_code == 200


def test_api_keys_are_made_listed_and_revoked_and_the_secret_is_shown_once(client, services, alice):
    expires = (utcnow() + dt.timedelta(days=1)).isoformat()
    r = client.post("/v1/api-keys", json={"name": "notebook", "scopes": ["write"], "expires_at": expires}, headers=alice.admin)
    assert r.status_code == 201
    created = r.json
    key_id = created["api_key"]["id"]
    assert created["secret"].startswith(f"assay_{key_id}_")
    assert created["api_key"]["scopes"] == ["write"]
    assert "secret_hash" not in created["api_key"]

    # the new key works, with exactly its scopes
    assert client.post("/v1/models", json={"name": "m", "size": 1}, headers=bearer(created["secret"])).status_code == 201
    assert client.get("/v1/api-keys", headers=bearer(created["secret"])).status_code == 403

    listed = client.get("/v1/api-keys", headers=alice.admin).json
    assert key_id in [k["id"] for k in listed["items"]]
    text = json.dumps(listed) + json.dumps(client.get(f"/v1/api-keys/{key_id}", headers=alice.admin).json)
    assert created["secret"].split("_")[-1] not in text and "secret_hash" not in text

    stored = services.store.get(ApiKey, key_id, account=ANY_ACCOUNT)
    assert stored.secret_hash == apikeys.hash_secret(created["secret"].split("_")[-1])

    assert client.delete(f"/v1/api-keys/{key_id}", headers=alice.admin).json["status"] == "revoked"
    assert client.delete(f"/v1/api-keys/{key_id}", headers=alice.admin).status_code == 200  # idempotent
    revoked = client.get("/v1/api-keys?status=revoked", headers=alice.admin).json["items"]
    assert [k["id"] for k in revoked] == [key_id]


@pytest.mark.parametrize(
    "body,path",
    [
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["root"]}, "scopes.0"),
        ({"name": "Bad Name", "scopes": ["read"]}, "name"),
        ({"name": "x", "scopes": ["read"], "expires_at": "2001-01-01T00:00:00"}, "expires_at"),  # no time zone
        ({"name": "x", "scopes": ["read"], "secret": "mine"}, "secret"),
    ],
)
def test_invalid_key_requests_are_422_with_the_field(client, alice, body, path):
    r = client.post("/v1/api-keys", json=body, headers=alice.admin)
    assert r.status_code == 422, r.json
    assert path in [f["path"] for f in r.json["error"]["details"]["fields"]]


def test_whoami_names_the_account_and_key(client, alice):
    r = client.get("/v1/whoami", headers=alice.read)
    assert r.status_code == 200
    assert r.json["account"] == alice.account and r.json["account_name"] == "alice" and r.json["scopes"] == ["read"]


def test_assay_admin_create_account_prints_a_working_admin_key(client, settings, monkeypatch, capsys):
    monkeypatch.setenv("DATASTORE_EMULATOR_HOST", settings.datastore_emulator_host)
    monkeypatch.setenv("ASSAY_PROJECT", settings.project)
    assert admin.main(["create-account", "acme", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "acme" and printed["account"].startswith("acc_")
    r = client.get("/v1/api-keys", headers=bearer(printed["api_key"]))
    assert r.status_code == 200 and r.json["items"][0]["scopes"] == ["admin"]

    assert admin.main(["create-account", "acme"]) == 0
    assert "shown once" in capsys.readouterr().out
    assert admin.main(["create-account", "Not A Name"]) == 2


def test_a_remembered_key_still_expires_on_time(client, services, alice):
    key, plaintext = apikeys.new_key(
        account=alice.account, name="brief", scopes=[Scope.read], expires_at=utcnow() + dt.timedelta(seconds=1.5)
    )
    services.store.put(key)
    assert client.get("/v1/models", headers=bearer(plaintext)).status_code == 200  # verified, remembered
    import time

    time.sleep(1.6)
    r = client.get("/v1/models", headers=bearer(plaintext))
    assert r.status_code == 401 and "expired" in r.json["error"]["message"]


def test_an_account_cannot_revoke_its_last_admin_key_and_is_told_why(client, alice):
    own = client.get("/v1/whoami", headers=alice.admin).json["api_key"]
    r = client.delete(f"/v1/api-keys/{own}", headers=alice.admin)
    assert r.status_code == 409, r.json
    assert r.json["error"]["code"] == "last_admin_key" and "another admin key" in r.json["error"]["message"]
    assert client.get(f"/v1/api-keys/{own}", headers=alice.admin).json["status"] == "active"

    other = client.post("/v1/api-keys", json={"name": "second-admin", "scopes": ["admin"]}, headers=alice.admin).json
    assert client.delete(f"/v1/api-keys/{own}", headers=alice.admin).json["status"] == "revoked"  # itself, now allowed
    second = bearer(other["secret"])
    r = client.delete(f"/v1/api-keys/{other['api_key']['id']}", headers=second)
    assert r.status_code == 409 and r.json["error"]["code"] == "last_admin_key"


def test_assay_admin_issues_a_key_for_an_existing_account_and_lists_accounts_without_secrets(
    client, settings, monkeypatch, capsys
):
    monkeypatch.setenv("DATASTORE_EMULATOR_HOST", settings.datastore_emulator_host)
    monkeypatch.setenv("ASSAY_PROJECT", settings.project)
    assert admin.main(["create-account", "acme", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)

    assert admin.main(["issue-key", created["account"], "--json"]) == 0  # admin by default
    issued = json.loads(capsys.readouterr().out)
    assert issued["account"] == created["account"] and issued["scopes"] == ["admin"]
    r = client.get("/v1/api-keys", headers=bearer(issued["api_key"]))
    assert r.status_code == 200 and len(r.json["items"]) == 2
    assert admin.main(["issue-key", created["account"], "--name", "ci", "--scope", "read", "--scope", "write"]) == 0
    assert "shown once" in capsys.readouterr().out

    assert admin.main(["issue-key", "acc_" + "0" * 20]) == 1
    assert "not found" in capsys.readouterr().err
    assert admin.main(["issue-key", created["account"], "--name", "Not A Name"]) == 2

    assert admin.main(["list-accounts", "--json"]) == 0
    printed = capsys.readouterr().out
    [account] = json.loads(printed)
    assert account["id"] == created["account"] and account["name"] == "acme"
    assert sorted(k["name"] for k in account["keys"]) == ["bootstrap", "ci", "operator"]
    assert {k["id"] for k in account["keys"]} >= {issued["key"], apikeys.parse_key(created["api_key"])[0]}
    assert sorted(map(tuple, (k["scopes"] for k in account["keys"]))) == [("admin",), ("admin",), ("read", "write")]
    for plaintext in (created["api_key"], issued["api_key"]):
        assert apikeys.parse_key(plaintext)[1] not in printed
    assert "secret" not in printed
    assert admin.main(["list-accounts"]) == 0
    text = capsys.readouterr().out
    assert f"account {created['account']} (acme, active)" in text and issued["key"] in text


def test_a_key_made_with_an_expiry_in_the_past_is_expired_from_the_start(client, alice):
    """No schema can say "after now", so the request is taken; the key never authenticates."""
    r = client.post(
        "/v1/api-keys", json={"name": "late", "scopes": ["read"], "expires_at": "2001-01-01T00:00:00Z"}, headers=alice.admin
    )
    assert r.status_code == 201
    assert client.get("/v1/whoami", headers=bearer(r.json["secret"])).status_code == 401
