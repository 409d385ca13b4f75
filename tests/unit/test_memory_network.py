"""The in-memory network (net/memory.py): what it carries, what it refuses, and that an Impairment alone decides
the losses (same seed, same decisions; no seed, no loss)."""

from __future__ import annotations

import asyncio

import pytest

import notebook_im as nim
from notebook_im.net.base import Target
from notebook_im.net.memory import MemoryNetwork
from notebook_im.runtime import runtime


class Recorder:
    """TransportEvents that remember what they heard."""

    def __init__(self) -> None:
        self.data: list[tuple[bytes, str, tuple[str, int]]] = []
        self.failed: list[tuple[str, tuple[str, int], str]] = []
        self.lost: list[tuple[str, tuple[str, int]]] = []

    def data_received(self, data, transport, remote, local):
        self.data.append((data, transport, remote))

    def dropped(self, data, transport, remote, reason):
        pass

    def send_failed(self, transport, addr, reason):
        self.failed.append((transport, addr, reason))

    def connection_lost(self, transport, addr):
        self.lost.append((transport, addr))


def run(coro):
    return runtime().submit(coro, "memory network test").result(10)


def test_datagrams_streams_refusals_and_closing():
    async def scenario():
        net = MemoryNetwork()
        a, b = net.transport(), net.transport()
        ra, rb = Recorder(), Recorder()
        a.attach(ra), b.attach(rb)
        await a.start(), await b.start()
        assert a.addr != b.addr and a.port >= 20000
        a.send(b"one", Target("udp", *b.addr))
        a.send(b"two", Target("tcp", *b.addr))
        a.send(b"nobody", Target("udp", "127.0.0.1", 9))  # a datagram to nowhere is gone, and counted
        a.send(b"refused", Target("tcp", "127.0.0.1", 9))  # a stream to nowhere is a refused connection
        await asyncio.sleep(0.01)
        assert rb.data == [(b"one", "udp", a.addr), (b"two", "tcp", a.addr)]
        assert net.unreachable == 1 and [f[:2] for f in ra.failed] == [("tcp", ("127.0.0.1", 9))]
        assert a.has_connection(b.addr) and b.has_connection(a.addr) and not a.has_connection(("127.0.0.1", 9))
        with pytest.raises(ValueError, match="udp and tcp"):
            a.send(b"x", Target("tls", *b.addr))
        taken = net.transport(port=b.port)
        with pytest.raises(OSError, match="already in use"):
            await taken.start()
        await b.close()  # b goes away: a hears its connection end
        assert ra.lost == [("tcp", b.addr)] and not a.has_connection(b.addr)
        a.send(b"late", Target("udp", *b.addr))
        await asyncio.sleep(0.01)
        assert net.unreachable == 2 and len(rb.data) == 2
        await a.close()
        with pytest.raises(RuntimeError, match="closed"):
            a.send(b"x", Target("udp", *b.addr))

    run(scenario())


def test_the_impairment_alone_decides():
    """The same seed draws the same fate for the same datagrams; the fate is what the receiver sees."""

    async def one_run(seed: int) -> tuple[list[bytes], dict[str, int]]:
        net = MemoryNetwork()
        imp = nim.Impairment(loss=0.3, duplicate=0.1, seed=seed)
        a, b = net.transport(impairment=imp), net.transport()
        rb = Recorder()
        a.attach(Recorder()), b.attach(rb)
        await a.start(), await b.start()
        for i in range(500):
            a.send(b"%d" % i, Target("udp", *b.addr))
        await asyncio.sleep(0.01)
        return [d for d, _t, _r in rb.data], imp.stats

    first, stats = run(one_run(7))
    again, _ = run(one_run(7))
    other, _ = run(one_run(8))
    assert first == again and first != other
    assert len(first) == stats["delivered"] and stats["dropped"] > 100 and stats["duplicated"] > 10


def test_public_arguments_are_checked():
    with pytest.raises(TypeError, match="MemoryNetwork"):
        nim.Platform("x", network="memory")
    with pytest.raises(TypeError, match="MemoryNetwork"):
        nim.Server(network=object())
    net = nim.MemoryNetwork()
    with pytest.raises(ValueError, match="not tls"):
        nim.Server(network=net, tls=("cert.pem", "key.pem"))
    p = nim.Platform("x", network=net)
    try:
        with pytest.raises(ValueError, match="not tls"):
            p.endpoint("sip:alice@example.test", transport="tls")
    finally:
        p.shutdown()


def test_a_chat_over_the_memory_network_uses_no_socket():
    net = nim.MemoryNetwork()
    server = nim.Server(network=net).start().result(10)
    platform = nim.Platform("memory", network=net)
    try:
        alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
        bob = platform.endpoint("sip:bob@example.test", server=server, transport="tcp").result(10)
        got = bob.events(nim.MessageReceived)
        assert alice.send_message(bob.uri, "over memory").result(10).status == 200
        assert got.get(5).text == "over memory"
        assert server.uri == f"sip:127.0.0.1:{server.port}" and net.sent >= 6
        assert "MemoryTransport" in repr(alice.agent.stack.transport)
    finally:
        platform.shutdown()
        server.stop()
