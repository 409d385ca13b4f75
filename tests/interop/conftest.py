"""Fixtures of the interop tests (helpers: support/programs.py; `platform` comes from tests/conftest.py).

Each fixture starts a real program on a free 127.0.0.1 port, returns once it is ready and stops it when
the test (or module) is done, also on failure.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import notebook_im as nim
from support.programs import HOST, Kamailio, Sipp, SippServer, free_port, require, start_kamailio

from .loopback_capture import LoopbackCapture
from .netns_support import Netns


@pytest.fixture(scope="module")
def kamailio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    """Kamailio with examples/kamailio/kamailio.cfg as registrar + proxy on a free loopback port
    (UDP and TCP). One per test module; tests use unique user names so their bindings never meet."""
    workdir = tmp_path_factory.mktemp("kamailio")
    k = start_kamailio(workdir, free_port())
    try:
        yield k
    finally:
        code = k.process.stop(grace=20)  # a loaded 2-core machine can take a while to stop all workers
        # a clean stop is exit 0 after SIGTERM (or death by the signal itself)
        assert code in (0, -signal.SIGTERM), f"kamailio did not stop cleanly (status {code}):\n{k.describe()}"


@pytest.fixture
def sipp(tmp_path: Path) -> Sipp:
    """Builds and runs bounded SIPp command lines; logs go to tmp_path."""
    return Sipp(tmp_path, require("sipp"))


@pytest.fixture
def sipp_servers() -> Iterator[list[SippServer]]:
    """Append every SIPp server a test starts: they are stopped even if the test fails."""
    servers: list[SippServer] = []
    yield servers
    for s in servers:
        s.process.stop()


@pytest.fixture
def nim_server() -> Iterator[nim.Server]:
    """The embedded notebook_im registrar + proxy on a free 4-digit loopback port (sipsak mangles
    5-digit ports in the Request-URIs it builds, DESIGN.md §7)."""
    server = nim.Server(host=HOST, port=free_port(5100, 10000)).start().result(10)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """unique('alice') -> 'alice-1a2b3c': user names no other test uses (Kamailio is shared per module)."""
    tag = uuid.uuid4().hex[:6]
    return lambda name: f"{name}-{tag}"


@pytest.fixture(scope="module")
def netns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Netns]:
    """A loopback-only network namespace with the embedded server running in it (netns_support.py): for the
    linphone and baresip tests. One per test module; tests use unique user names. Every program spawned into
    it is stopped at the end, also when a test fails."""
    ns = Netns(tmp_path_factory.mktemp("netns")).start()
    try:
        ns.start_server()
        yield ns
    finally:
        ns.stop()


@pytest.fixture
def capture(netns: Netns) -> Iterator[LoopbackCapture]:
    """Everything on the namespace's loopback while the test runs (loopback_capture.py)."""

    with LoopbackCapture(netns) as cap:
        yield cap
