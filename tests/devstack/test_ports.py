"""Ports for servers the tests and the local stack start: never ones an outgoing
connection can take between choosing a port and binding it."""

from __future__ import annotations

import socket

from devstack.emulators import ephemeral_ports, free_port


def test_free_ports_are_bindable_and_outside_the_ephemeral_range():
    ephemeral = ephemeral_ports()
    ports = {free_port() for _ in range(50)}
    assert not any(port in ephemeral for port in ports)
    for port in list(ports)[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_skipped(monkeypatch):
    from devstack import emulators

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        draws = iter([taken, taken, taken + 1 if taken + 1 not in ephemeral_ports() else taken - 1])
        monkeypatch.setattr(emulators.random, "choice", lambda candidates: next(draws))
        assert free_port() != taken
