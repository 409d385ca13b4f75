"""Shared fixtures: an embedded server and platforms on 127.0.0.1 (loopback only)."""
from __future__ import annotations

import pytest

import notebook_im as nim


@pytest.fixture
def server():
    srv = nim.Server().start().result(10)
    yield srv
    srv.stop()


@pytest.fixture
def platform():
    p = nim.Platform("test")
    yield p
    p.shutdown()


