"""The size limits of notebook_im.sip.parser, each at its boundary and one past it, in the parser and on the wire.

Defaults: MAX_MESSAGE 65,535 bytes (513 or drop; on a stream, a Content-Length beyond it is answered 413, then the
connection closes), MAX_BODY 65,335 bytes announced by Content-Length (413), MAX_HEADERS 1,000 fields (400 saying so),
MAX_LINE 8,192 characters in a start or header line (414 for a request line, 400 for a header line). Over UDP a
datagram cannot exceed 65,507 bytes, so MAX_MESSAGE is reached on streams.
"""

from __future__ import annotations

import time

import pytest

from notebook_im.sip import RemoteProtocolError, Request, StreamFramer, parse_message
from notebook_im.sip.parser import MAX_BODY, MAX_HEADERS, MAX_LINE, MAX_MESSAGE
from tests.helpers import wait_for
from tests.hostile.corpus import Client, assert_alive

HEAD = (
    "MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/{t} 127.0.0.1:{port};branch=z9hG4bK{b};rport\r\n"
    "From: <sip:a@example.test>;tag=1\r\nTo: <sip:bob@example.test>\r\nCall-ID: {b}\r\nCSeq: 1 MESSAGE\r\n"
)


def msg(
    extra: str = "", body: bytes = b"", length: int | None = None, port: int = 5060, branch: str = "lim", t: str = "UDP"
) -> bytes:
    cl = len(body) if length is None else length
    return (HEAD.format(port=port, b=branch, t=t) + extra + f"Content-Length: {cl}\r\n\r\n").encode() + body


def test_defaults_are_documented_values():
    assert (MAX_MESSAGE, MAX_BODY, MAX_HEADERS, MAX_LINE) == (65535, 65335, 1000, 8192)


def test_message_size_limit():
    base = msg()
    pad = MAX_MESSAGE - len(base) - len("X: \r\n") * 10
    lines = "".join(f"X: {'p' * (pad // 10 + (1 if i < pad % 10 else 0))}\r\n" for i in range(10))
    exact = msg(lines)
    assert len(exact) == MAX_MESSAGE
    assert isinstance(parse_message(exact), Request)
    with pytest.raises(RemoteProtocolError) as info:
        parse_message(exact + b"x")
    assert info.value.status_code == 513 and info.value.message is None


def test_body_size_limit():
    small = (
        "MESSAGE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\n"
        "Call-ID: c\r\nCSeq: 1 MESSAGE\r\nContent-Length: {}\r\n\r\n"
    )
    exact = small.format(MAX_BODY).encode() + b"b" * MAX_BODY
    assert len(exact) <= MAX_MESSAGE
    assert len(parse_message(exact).body) == MAX_BODY
    with pytest.raises(RemoteProtocolError) as info:
        parse_message(small.format(MAX_BODY + 1).encode() + b"b" * MAX_BODY)
    assert info.value.status_code == 413 and isinstance(info.value.message, Request), "413 is answered"


def test_header_count_limit():
    extra = "".join(f"X-{i}: v\r\n" for i in range(MAX_HEADERS - 5))  # HEAD has 5 fields; Content-Length not counted
    parsed = parse_message(msg(extra))
    assert len(parsed.headers) == MAX_HEADERS + 1
    assert parse_message(bytes(parsed)).headers.get("X-0") == "v", "what we relay, the next hop accepts"
    assert parse_message(msg(extra).replace(b"Content-Length: 0\r\n", b"")).body == b""
    with pytest.raises(RemoteProtocolError, match=f"more than {MAX_HEADERS} header fields") as info:
        parse_message(msg(extra + "X-last: v\r\n"))
    assert info.value.status_code == 400 and isinstance(info.value.message, Request), "answered, saying which limit"
    # past the limit only what the answer must echo is kept: the work and memory stay bounded
    answered = info.value.message
    assert answered.headers.get("X-last") is None and answered.headers.get("CSeq") == "1 MESSAGE"
    many = "".join(f"X-{i}: v\r\n" for i in range(5000)) + "Call-ID: late\r\n"
    with pytest.raises(RemoteProtocolError, match="header fields") as info:
        parse_message(msg(many).replace(b"Call-ID: lim\r\n", b""))
    assert info.value.message.headers.get("Call-ID") == "late" and len(info.value.message.headers) <= MAX_HEADERS + 2


def test_line_length_limit():
    name = "Subject: "
    ok = msg(name + "s" * (MAX_LINE - len(name)) + "\r\n")
    assert len(parse_message(ok).headers.get("Subject")) == MAX_LINE - len(name)
    with pytest.raises(RemoteProtocolError, match="longer than") as info:
        parse_message(msg(name + "s" * (MAX_LINE - len(name) + 1) + "\r\n"))
    assert info.value.status_code == 400 and isinstance(info.value.message, Request)
    uri = "sip:bob@example.test;x=" + "y" * MAX_LINE
    with pytest.raises(RemoteProtocolError) as info:
        parse_message(msg().replace(b"sip:bob@example.test SIP", uri.encode() + b" SIP"))
    assert info.value.status_code == 414 and isinstance(info.value.message, Request)


def test_stream_framer_cost_is_linear_for_a_slow_sender():
    framer = StreamFramer()
    start = time.perf_counter()
    with pytest.raises(RemoteProtocolError, match="size limit"):
        data = b"MESSAGE sip:b@h SIP/2.0\r\nX: " + b"y" * (MAX_MESSAGE + 10)
        for i in range(0, len(data), 16):  # 4,000 segments, header section never ends
            framer.feed(data[i : i + 16])
    assert time.perf_counter() - start < 1.0


def test_stream_framer_limits():
    # a Content-Length beyond the limit: the header section alone comes out (to be answered 413), then the
    # stream is broken and every later feed raises
    framer = StreamFramer()
    data = msg(length=MAX_MESSAGE)
    out = framer.feed(data + b"x" * 1000)
    assert out == [data] and framer.broken is not None and framer.broken.status_code == 513
    with pytest.raises(RemoteProtocolError) as info:
        parse_message(out[0], stream=True)
    assert info.value.status_code == 413 and isinstance(info.value.message, Request)
    with pytest.raises(RemoteProtocolError):
        framer.feed(b"more")
    # no Content-Length: the message comes out without a body (answered 400 by the parser) and framing goes on
    framer = StreamFramer()
    bare = msg().replace(b"Content-Length: 0\r\n", b"")
    assert framer.feed(bare + msg()) == [bare, msg()]
    with pytest.raises(RemoteProtocolError, match="mandatory on a stream") as info:
        parse_message(bare, stream=True)
    assert isinstance(info.value.message, Request)
    with pytest.raises(RemoteProtocolError, match="conflicting"):
        StreamFramer().feed(msg("l: 5\r\n", b"abc"))
    with pytest.raises(RemoteProtocolError, match="Content-Length"):
        StreamFramer().feed(msg(length=None).replace(b"Content-Length: 0", b"Content-Length: \xc2\xb2"))


# -- on the wire ---------------------------------------------------------------------------------------------
def _targets(stack):
    server, _platform, bob = stack
    return {
        "server": ((server.host, server.port), lambda: server.stats),
        "endpoint": (bob.local_address, lambda: bob.stats),
    }


@pytest.mark.parametrize("target", ["endpoint", "server"])
def test_udp_limits_on_the_wire(target, stack):
    addr, stats = _targets(stack)[target]
    with Client("udp", addr) as c:
        c.send(msg(length=MAX_BODY + 1, port=c.port, branch="over-body"))
        assert c.final_response(5).status == 413
        c.send(msg("".join(f"X-{i}: v\r\n" for i in range(MAX_HEADERS)), port=c.port, branch="over-count"))
        over = c.final_response(5)
        assert over.status == 400 and f"more than {MAX_HEADERS} header fields" in over.reason
        c.send(msg("".join(f"X-Ext-{i}: value-{i}\r\n" for i in range(300)), port=c.port, branch="300-ext"))
        assert c.final_response(5).status == 200, "300 extension headers (~8 KB) are real traffic: accepted"
        c.send(msg("Subject: " + "s" * MAX_LINE + "\r\n", port=c.port, branch="over-line"))
        assert c.final_response(5).status == 400
        c.send(
            msg(
                "X: " + "p" * 8000 + "\r\n" * 1 + "".join(f"X{i}: {'p' * 8100}\r\n" for i in range(7)),
                port=c.port,
                branch="near-max",
            )
        )  # ~65,000 bytes: fine
        assert c.final_response(5).status == 200
    assert_alive(addr, target)


@pytest.mark.parametrize("target", ["endpoint", "server"])
def test_tcp_framing_limits_close_only_that_connection(target, stack):
    addr, stats = _targets(stack)[target]
    hostile = [
        # announces more than a message may hold, and sends 10 MB of it: answered 413, then closed
        (msg(length=10_000_000, t="TCP") + b"z" * 10_000_000, 413),
        (msg(length=MAX_MESSAGE + 1, t="TCP"), 413),
        (
            b"MESSAGE sip:bob@example.test SIP/2.0\r\nX: " + b"y" * (MAX_MESSAGE + 100),
            None,
        ),  # header section never ends
        (msg(t="TCP").replace(b"Content-Length: 0", b"Content-Length: -1"), None),
    ]
    with Client("tcp", addr) as good:  # an innocent connection opened before, used after
        for data, answer in hostile:
            before = stats()["dropped"]
            with Client("tcp", addr) as c:
                data = data.replace(b"127.0.0.1:5060;", f"127.0.0.1:{c.port};".encode())
                try:
                    c.sock.sendall(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # closed on us while we were still sending: that is the point
                if answer is not None:
                    resp = c.final_response(5)
                    assert resp is not None and not isinstance(resp, bytes) and resp.status == answer, resp
                    assert "exceeds" in resp.reason
                assert c.recv(5) == b"", "the target closes a stream it cannot frame"
            wait_for(lambda before=before: stats()["dropped"] > before, what="unframeable stream counted")
        # no Content-Length on a stream: answered 400, and the connection goes on
        with Client("tcp", addr) as c:
            c.send(msg(port=c.port, branch="no-cl", t="TCP").replace(b"Content-Length: 0\r\n", b""))
            resp = c.final_response(5)
            assert resp.status == 400 and "Content-Length is mandatory" in resp.reason
            c.send(msg(port=c.port, branch="no-cl-after", t="TCP"))
            assert c.final_response(5).status == 200
        good.send(msg(port=good.port, branch="tcp-after", t="TCP"))
        assert good.final_response(5).status == 200
    assert_alive(addr, target)


@pytest.mark.parametrize("target", ["endpoint", "server"])
def test_tcp_lying_content_length_waits_without_blocking_others(target, stack):
    addr, _ = _targets(stack)[target]
    with Client("tcp", addr) as liar:
        liar.send(msg(length=5000, port=liar.port, branch="liar", t="TCP") + b"only a little")
        assert liar.recv(0.3) is None, "the target waits for the rest of the body"
        assert_alive(addr, f"{target} while a stream waits for a body that never comes")


@pytest.mark.parametrize(
    "body",
    [
        b"l: 0\r\n" * 10000,  # thousands of (consistent) Content-Length fields
        b"Subject: a\r\n" + b" x\r\n" * 15000,  # a field folded 15,000 times
        b"X: " + b"a, " * 2700 + b"\r\n" + b"Via: " + b"SIP/2.0/UDP h;branch=z9hG4bK1, " * 250 + b"\r\n",
        b"\r\n".join(b"X%d:" % i for i in range(255)) + b"\r\n" + b"bad line\r\n" * 4000,
    ],
)
def test_pathological_messages_parse_in_bounded_time(body):
    data = b"MESSAGE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: 1 MESSAGE\r\n" + body + b"\r\n"
    assert len(data) <= MAX_MESSAGE
    start = time.perf_counter()
    try:
        message = parse_message(data)
        message.vias, message.headers.get_all("X"), bytes(message)
    except RemoteProtocolError:
        pass
    assert time.perf_counter() - start < 0.1
