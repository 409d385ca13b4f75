"""Shared fixtures: an embedded server and platforms on 127.0.0.1 (loopback only)."""

from __future__ import annotations

import os

import pytest

# The suite runs on the plain asyncio loop, what a `pip install notebook_im` user gets; uvloop (installed by the
# test extra) is exercised by tests/integration/test_loops.py in subprocesses, one per loop kind.
os.environ.setdefault("NOTEBOOK_IM_LOOP", "asyncio")

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
