from __future__ import annotations

import pytest


@pytest.fixture(params=["udp", "tcp"])
def transport(request):
    return request.param


@pytest.fixture
def pair(server, platform, transport):
    """alice and bob registered with the embedded server over `transport`; bob auto-accepts."""
    alice = platform.endpoint(
        "sip:alice@example.test", server=server, transport=transport, display_name="Alice"
    ).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server, transport=transport, display_name="Bob").result(10)
    return alice, bob
