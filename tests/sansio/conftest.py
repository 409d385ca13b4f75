"""The sans-IO tests run without sockets and without the library's loop: both are forbidden here, so a machine
test that starts needing either fails instead of quietly becoming an integration test."""

from __future__ import annotations

import socket

import pytest

import notebook_im.runtime


class _NoSocket(socket.socket):
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("a sans-IO test opened a socket: it belongs in tests/integration")


@pytest.fixture(autouse=True)
def no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "socket", _NoSocket)

    def no_loop() -> None:
        raise AssertionError("a sans-IO test started the library's loop thread: it belongs in tests/integration")

    monkeypatch.setattr(notebook_im.runtime, "runtime", no_loop)
