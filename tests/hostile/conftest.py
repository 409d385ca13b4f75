"""One embedded server and one endpoint (bob, registered over UDP) shared by a test module: throwing ~100
hostile messages at them one after the other is the point, and restarting them for each would hide leaks."""

from __future__ import annotations

import pytest

import notebook_im as nim


@pytest.fixture(scope="module")
def stack():
    server = nim.Server().start().result(10)
    platform = nim.Platform("hostile")
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    bob.sessions.on_incoming(lambda incoming: incoming.reject(486))
    yield server, platform, bob
    platform.shutdown()
    server.stop()
