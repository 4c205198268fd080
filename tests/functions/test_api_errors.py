"""Every reply is JSON in one error shape; statuses mean what HTTP says; no stack traces."""

from __future__ import annotations

import pytest
from conftest import MODEL

from functions.app import create_app
from functions.routing import Router
from functions.services import Services
from shared.entities import Model, Scope


def assert_error(r, status: int, code: str):
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.mimetype == "application/json"
    assert set(r.json) == {"error"} and set(r.json["error"]) == {"code", "message", "details"}
    assert r.json["error"]["code"] == code
    assert r.headers["X-Request-Id"]


def test_malformed_json_is_400(client, alice):
    for raw in (b"{", b"", b"\xff\xfe", b"{'single': 'quotes'}"):
        r = client.post("/v1/models", data=raw, headers={**alice.write, "Content-Type": "application/json"})
        assert_error(r, 400, "invalid_request")


def test_unknown_and_mistyped_fields_are_422_with_their_paths(client, alice):
    r = client.post("/v1/models", json={**MODEL, "size": "10", "sise": 10, "labels": {"a": 1}}, headers=alice.write)
    assert_error(r, 422, "invalid")
    paths = {f["path"] for f in r.json["error"]["details"]["fields"]}
    assert {"size", "sise", "labels.a"} <= paths
    r = client.post("/v1/models", json=[MODEL], headers=alice.write)
    assert_error(r, 422, "invalid")


def test_a_body_over_the_cap_is_413(client, alice, settings):
    big = {**MODEL, "labels": {f"k{i}": "v" * 60 for i in range(2000)}}
    assert_error(client.post("/v1/models", json=big, headers=alice.write), 413, "too_large")


def test_unknown_route_404_wrong_method_405(client, alice):
    assert_error(client.get("/v1/nothing", headers=alice.read), 404, "not_found")
    assert_error(client.get("/", headers=alice.read), 404, "not_found")
    r = client.patch("/v1/models", headers=alice.write)
    assert_error(r, 405, "method_not_allowed")
    assert r.json["error"]["details"] == {"allowed": ["GET", "POST"]} and r.headers["Allow"] == "GET, POST"
    assert_error(client.options("/v1/models"), 405, "method_not_allowed")
    assert_error(client.put(f"/v1/models/mdl_{'0' * 20}", headers=alice.write), 405, "method_not_allowed")


def test_datastore_unavailable_is_503_with_retry_after(settings, indexes, alice):
    down = settings.model_copy(update={"datastore_emulator_host": "127.0.0.1:9", "api_datastore_deadline_s": 0.5})
    client = create_app(services=Services.from_settings(down, indexes=indexes)).test_client()
    for r in (
        client.get("/v1/models", headers=alice.read),
        client.post("/v1/models", json=MODEL, headers=alice.write),
    ):
        assert_error(r, 503, "unavailable")
        assert int(r.headers["Retry-After"]) >= 1
    assert client.get("/v1/health").status_code == 200


def test_an_unexpected_error_is_a_500_without_a_stack_trace(services, alice):
    broken = Router("broken")

    @broken.get("/v1/broken", scope=Scope.read, response=None)
    def explode(call):
        raise KeyError("secret internals")

    client = create_app(services=services, routers=[broken]).test_client()
    r = client.get("/v1/broken", headers=alice.read)
    assert_error(r, 500, "internal")
    text = r.get_data(as_text=True)
    assert "Traceback" not in text and "secret internals" not in text
    assert r.json["error"]["details"] == {"request_id": r.headers["X-Request-Id"]}


def test_a_failed_write_leaves_no_half_written_entity(services, settings, alice):
    """Signing happens before the entity is written: if it fails, nothing is stored."""

    class FailingStorage:
        settings = services.storage.settings

        def signed_put(self, *a, **k):
            from shared.errors import Unavailable

            raise Unavailable("storage: backend unavailable")

    degraded = Services(settings=settings, store=services.store, storage=FailingStorage(), hints=services.hints)
    client = create_app(services=degraded).test_client()
    assert_error(client.post("/v1/models", json=MODEL, headers=alice.write), 503, "unavailable")
    assert services.store.list(Model, account=alice.account).items == []


def test_routes_cannot_declare_unchecked_path_parameters():
    router = Router("x")
    with pytest.raises(ValueError):
        router.get("/v1/things/{thing_id}", scope=Scope.read, response=None)(lambda call, thing_id: None)
