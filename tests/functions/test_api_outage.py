"""Datastore outages fail fast: every request that needs Datastore answers 503 with
Retry-After within its budget (sooner when the connection is refused), /v1/health needs
nothing and answers 200, /v1/ready says Datastore is down, and the API recovers by itself.

Two outages, both real: Datastore on a port nothing listens on (connections refused), and
the session's emulator paused with SIGSTOP (connections made, no answer: calls hang). The
budgets here are short and the assertions only bound each reply by its budget plus a
generous slack; the figures under load (16 clients) are bench/outage.py's.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from devstack.emulators import free_port
from functions.app import create_app
from functions.routes import ROUTERS
from functions.services import Services

ROUTES = [route for router in ROUTERS for route in router.routes]
PUBLIC_WITHOUT_DATASTORE = {"/v1/health", "/v1/openapi.json", "/v1/tasks"}
SLACK_S = 5.0  # a shared, loaded machine: bound replies by the budget, never time them tightly


def concrete(route) -> str:
    """The route's path with a well-formed id (of the right kind) for each parameter."""
    path = route.path
    for param in route.params:
        path = path.replace("{" + param.name + "}", f"{param.prefix}_" + "0" * 20)
    return path


def call(client, route, headers):
    started = time.monotonic()
    r = client.open(concrete(route), method=route.method, headers=headers, json={} if route.method == "POST" else None)
    return r, time.monotonic() - started


def assert_unavailable(r, what) -> None:
    where = f"{what}: {r.status_code} {r.get_data(as_text=True)[:200]}"
    assert r.status_code == 503, where
    assert r.json["error"]["code"] == "unavailable", where
    assert int(r.headers["Retry-After"]) >= 1, where


def test_refused_connections_answer_every_route_503_within_the_shorter_budget(settings, indexes, alice):
    budget_s, refused_s = 20.0, 0.3
    down = settings.model_copy(
        update={
            "datastore_emulator_host": f"127.0.0.1:{free_port()}",  # nothing listens there
            "api_datastore_deadline_s": budget_s,
            "api_datastore_refused_s": refused_s,
        }
    )
    client = create_app(services=Services.from_settings(down, indexes=indexes)).test_client()
    for route in ROUTES:
        r, elapsed = call(client, route, alice.admin)
        if route.path in PUBLIC_WITHOUT_DATASTORE:
            assert r.status_code == 200, route.path
        else:
            assert_unavailable(r, f"{route.method} {route.path}")
        # Refused: retried for refused_s, not for the whole budget.
        assert elapsed < refused_s + SLACK_S < budget_s, (route.path, elapsed)


@pytest.fixture
def paused_datastore(emulators):
    """Pause the session's Datastore emulator (SIGSTOP: its connections stay open, calls
    hang) for the duration of the block it yields; always resumed."""
    group = emulators.processes[0].popen.pid  # its own process group (devstack/emulators.py)
    assert emulators.processes[0].name == "datastore"
    paused = []

    def pause():
        os.killpg(group, signal.SIGSTOP)
        paused.append(True)

    try:
        yield pause
    finally:
        if paused:
            os.killpg(group, signal.SIGCONT)


def test_a_hanging_datastore_answers_503_within_the_budget_while_health_answers(settings, indexes, alice, paused_datastore):
    budget_s = 1.5
    slow = settings.model_copy(update={"api_datastore_deadline_s": budget_s})
    client = create_app(services=Services.from_settings(slow, indexes=indexes)).test_client()
    assert client.get("/v1/ready").status_code == 200
    assert client.get("/v1/whoami", headers=alice.admin).status_code == 200  # alice.admin is now cached
    model = "mdl_" + "0" * 20
    # With the admin key cached, these reach their handlers' own Datastore calls; with the
    # read key (not cached) every route waits on authentication.
    handled = [
        ("GET", "/v1/models", None),
        ("GET", f"/v1/models/{model}", None),
        ("DELETE", f"/v1/models/{model}", None),
        ("POST", "/v1/evaluations", {"model_id": model, "dataset_id": "dst_" + "0" * 20, "splits": ["test"]}),
        ("GET", "/v1/whoami", None),
        ("POST", "/v1/api-keys", {"name": "ci", "scopes": ["read"]}),
    ]

    def send(method, path, body, headers):
        started = time.monotonic()
        r = client.open(path, method=method, headers=headers, json=body)
        return r, time.monotonic() - started

    paused_datastore()
    with ThreadPoolExecutor(8) as pool:
        pending = [(f"{m} {p}", pool.submit(send, m, p, body, alice.admin)) for m, p, body in handled]
        for route in ROUTES:
            if route.path not in PUBLIC_WITHOUT_DATASTORE:
                body = {} if route.method == "POST" else None
                pending.append(
                    (f"{route.method} {route.path}", pool.submit(send, route.method, concrete(route), body, alice.read))
                )
        health = [client.get("/v1/health") for _ in range(20)]  # while those wait on Datastore
        replies = [(what, *f.result()) for what, f in pending]
    assert all(h.status_code == 200 and h.json == {"status": "ok"} for h in health)
    assert len(replies) >= len(ROUTES)
    for what, r, elapsed in replies:
        assert_unavailable(r, what)
        assert elapsed < budget_s + SLACK_S, (what, elapsed)


def test_the_api_recovers_when_datastore_comes_back(settings, indexes, alice, emulators):
    group = emulators.processes[0].popen.pid
    client = create_app(
        services=Services.from_settings(settings.model_copy(update={"api_datastore_deadline_s": 1.0}), indexes=indexes)
    ).test_client()
    os.killpg(group, signal.SIGSTOP)
    try:
        r = client.get("/v1/ready")
        assert_unavailable(r, "GET /v1/ready")
    finally:
        os.killpg(group, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while client.get("/v1/ready").status_code != 200:
        assert time.monotonic() < deadline, "the API did not recover"
        time.sleep(0.2)
    assert client.get("/v1/models", headers=alice.read).status_code == 200
