"""Fixtures of the receipt tests: two endpoints on the embedded server with a connected session; SIPp's
fixtures come from tests/interop/conftest.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

import notebook_im as nim
from tests.helpers import accept_all, wait_for
from tests.interop.conftest import sipp, sipp_servers  # noqa: F401 - the SIPp fixtures, shared

SIPP_DIR = Path(__file__).resolve().parent / "sipp"


def scenario(name: str) -> str:
    """The absolute path of one of this directory's SIPp scenarios (Sipp joins it onto its own folder)."""
    return str(SIPP_DIR / name)


@dataclass
class Pair:
    alice: nim.Endpoint
    bob: nim.Endpoint
    session: nim.ImSession  # alice's
    bob_session: nim.ImSession


@pytest.fixture
def pair(server: nim.Server, platform: nim.Platform) -> Pair:
    """alice (UDP) in a connected session with bob (TCP), through the embedded server."""
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server, transport="tcp").result(10)
    accepted = accept_all(bob)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    wait_for(lambda: accepted and accepted[0].state is nim.SessionState.CONNECTED, 5, "bob's side connected")
    return Pair(alice, bob, session, accepted[0])
