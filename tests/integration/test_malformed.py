"""Bad bytes never crash or hang the stack: answerable garbage gets 400 with a reason, the rest is dropped
and counted, and the next valid message still works."""

from __future__ import annotations

import socket

import pytest

import notebook_im as nim
from tests.helpers import udp_exchange, wait_for

GOOD = (
    "MESSAGE sip:{user}@{host}:{port} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{branch};rport\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:mallory@example.test>;tag=m1\r\nTo: <sip:{user}@example.test>\r\n"
    "Call-ID: {branch}@test\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: {length}\r\n\r\n{body}"
)

GARBAGE = [
    b"\x00" * 64,
    b"hello world\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\xff" * 3000,
    b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\n\r\n",  # no headers at all: nothing to answer
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKnope\r\n\r\n",  # response matching nothing
    b"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\n" + b"X: y\r\n" * 300 + b"\r\n",  # too many headers
]


def good(user: str, addr: tuple[str, int], branch: str, body: str = "still works") -> bytes:
    return GOOD.format(
        user=user, host=addr[0], port=addr[1], lport=40000, branch=branch, length=len(body), body=body
    ).encode()


def target_addr(kind, server, bob):
    return (server.host, server.port) if kind == "server" else bob.local_address


@pytest.mark.parametrize("kind", ["server", "endpoint"])
def test_answerable_malformed_request_gets_400_with_reason(kind, server, platform):
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    addr = target_addr(kind, server, bob)
    bad = good("bob", addr, "bad1").replace(b"CSeq: 1 MESSAGE", b"CSeq: one MESSAGE")
    reply = udp_exchange(bad, addr)
    assert reply is not None and reply.startswith(b"SIP/2.0 400 Bad Request (bad CSeq")
    bad = good("bob", addr, "bad2").replace(b"Content-Length: 11", b"Content-Length: 500")
    reply = udp_exchange(bad, addr)
    assert reply is not None and b"400 Bad Request (body shorter" in reply
    received = bob.events(nim.MessageReceived)
    reply = udp_exchange(good("bob", addr, "ok1"), addr)
    assert reply is not None and reply.startswith(b"SIP/2.0 200")
    assert received.get(timeout=5).text == "still works"


@pytest.mark.parametrize("kind", ["server", "endpoint"])
def test_garbage_is_dropped_and_counted(kind, server, platform):
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    addr = target_addr(kind, server, bob)
    stats = (lambda: server.stats) if kind == "server" else (lambda: bob.stats)
    trace = server.trace if kind == "server" else platform.trace
    before = stats()["dropped"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for g in GARBAGE:
            s.sendto(g, addr)
    wait_for(lambda: stats()["dropped"] - before >= len(GARBAGE) - 1, what="drops counted")
    assert trace.drop_count >= len(GARBAGE) - 1
    received = bob.events(nim.MessageReceived)
    reply = udp_exchange(good("bob", addr, "ok2"), addr)
    assert reply is not None and reply.startswith(b"SIP/2.0 200")
    assert received.get(timeout=5).text == "still works"


def test_tcp_garbage_closes_only_that_connection(server, platform):
    bob = platform.endpoint("sip:bob@example.test", server=server, transport="tcp").result(10)
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(b"no content length here\r\nX: y\r\n\r\n")
        s.settimeout(5)
        assert s.recv(100) == b"", "the server closes a stream it cannot frame"
    received = bob.events(nim.MessageReceived)
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        msg = good("bob", (server.host, server.port), "tcp1").replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
        s.sendall(msg)
        s.settimeout(5)
        assert s.recv(4096).startswith(b"SIP/2.0 200")
    assert received.get(timeout=5).text == "still works"


def test_retransmitted_request_is_delivered_once(server, platform):
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    received = bob.events(nim.MessageReceived)
    data = good("bob", bob.local_address, "dup1", "only once")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        for _ in range(3):
            s.sendto(data, bob.local_address)
            assert s.recvfrom(4096)[0].startswith(b"SIP/2.0 200"), "each retransmission is answered"
    assert received.get(timeout=5).text == "only once"
    with pytest.raises(TimeoutError):
        received.get(timeout=0.3)
    assert bob.stats["retransmissions_absorbed"] == 2


def test_unsupported_method_405_and_options_200(server, platform):
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    addr = bob.local_address
    sub = good("bob", addr, "sub1").replace(b"MESSAGE sip", b"SUBSCRIBE sip").replace(b"1 MESSAGE", b"1 SUBSCRIBE")
    reply = udp_exchange(sub, addr)
    assert reply.startswith(b"SIP/2.0 405") and b"Allow: INVITE" in reply
    opt = good("bob", addr, "opt1").replace(b"MESSAGE sip", b"OPTIONS sip").replace(b"1 MESSAGE", b"1 OPTIONS")
    reply = udp_exchange(opt, addr)
    assert reply.startswith(b"SIP/2.0 200") and b"Accept:" in reply
    reply = udp_exchange(opt.replace(b"sip:bob@", b"sip:").replace(b"opt1", b"opt2"), (server.host, server.port))
    assert reply.startswith(b"SIP/2.0 200")


def test_server_is_not_an_open_relay(server):
    # an in-dialog request towards an address nobody registered must not be forwarded anywhere
    relay = good("victim", ("127.0.0.1", 9), "relay1").replace(
        b"To: <sip:victim@example.test>", b"To: <sip:victim@example.test>;tag=x"
    )
    reply = udp_exchange(relay, (server.host, server.port))
    assert reply is not None and reply.startswith(b"SIP/2.0 404")
    initial = good("victim", ("192.0.2.1", 5060), "relay2")  # unknown user on another host
    reply = udp_exchange(initial, (server.host, server.port))
    assert reply.startswith(b"SIP/2.0 404")
    assert server.stats["sent"] == 2, "nothing but the two 404s left the server"
