"""Hostile arguments through the public API: header injection (CR/LF/NUL), quotes in quoted strings, wrong types
and absurd sizes raise TypeError/ValueError (or MessageTooLarge) naming the argument, before anything is sent."""

from __future__ import annotations

import time

import pytest

import notebook_im as nim
from notebook_im.sip.errors import LocalProtocolError
from notebook_im.sip.headers import Headers
from notebook_im.sip.message import Response
from tests.helpers import accept_all
from tests.security.raw import RawPeer, header

INJECT = "\r\nX-Evil: 1"


def wire(platform) -> list[bytes]:
    return [r.raw for r in platform.trace.sip_records()]


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"display_name": "Alice" + INJECT}, "display_name"),
        ({"display_name": "Alice\rVia: SIP/2.0/UDP evil"}, "display_name"),
        ({"display_name": "Alice\x00"}, "display_name"),
        ({"display_name": "Alice\x1b[31m"}, "display_name"),
        ({"display_name": "x" * 9000}, "display_name"),
        ({"username": 'a"' + INJECT}, "username"),
        ({"username": 'a"b'}, "username"),
        ({"username": "a\\b"}, "username"),
        ({"server_suffix": ";x=1" + INJECT}, "server"),
        ({"uri_suffix": ";x=1" + INJECT}, "uri"),
    ],
)
def test_endpoint_arguments_that_would_inject_headers_are_refused(server, platform, kwargs, argument):
    kwargs = dict(kwargs)
    uri = "sip:alice@example.test" + kwargs.pop("uri_suffix", "")
    srv = server.uri + kwargs.pop("server_suffix", "")
    started = time.monotonic()
    with pytest.raises(ValueError) as info:
        platform.endpoint(uri, server=srv, password="pw", **kwargs)
    assert time.monotonic() - started < 1.0
    assert argument in str(info.value)
    assert platform.endpoints == [] and wire(platform) == [], "nothing created, nothing sent"
    assert b"X-Evil" not in b"".join(r.raw for r in server.trace.sip_records())


@pytest.mark.parametrize("value", [123, b"Alice", ["Alice"]])
def test_a_display_name_of_the_wrong_type_is_a_type_error_and_leaves_nothing_enabling(server, platform, value):
    with pytest.raises(TypeError, match="display_name must be a str"):
        platform.endpoint("sip:alice@example.test", server=server, display_name=value)
    assert platform.endpoints == []


def test_display_names_with_quotes_are_escaped_not_refused(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server, display_name='Al "the pal" \\ ice').result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    sessions = accept_all(bob)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    assert session.send("hi").result(5).status == 200
    assert sessions and sessions[0].participants[0].name == 'Al "the pal" \\ ice'


def test_targets_reasons_and_subjects_that_would_inject_are_refused(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    before = len(wire(platform))
    for call, argument in [
        (lambda: alice.sessions.create("sip:bob@example.test;x=1" + INJECT), "remote_uri"),
        (lambda: alice.send_message("sip:bob@example.test" + INJECT, "hi"), "to"),
        (lambda: alice.sessions.join("sip:conf-1@example.test\n"), "conference_uri"),
        (lambda: alice.sessions.create_conference(["sip:bob@example.test"], subject="s" + INJECT), "subject"),
        (lambda: alice.sessions.create_conference(["sip:bob@example.test\r"]), "uri"),
    ]:
        with pytest.raises(ValueError) as info:
            call()
        assert argument.lower() in str(info.value).lower()
    assert len(wire(platform)) == before
    incoming = []
    bob.sessions.on_incoming(incoming.append)
    session_op = alice.sessions.create("sip:bob@example.test")
    deadline = time.monotonic() + 5
    while not incoming and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(ValueError, match="reason"):
        incoming[0].reject(486, "Busy" + INJECT)
    incoming[0].reject(486, "Busy, really").result(5)
    with pytest.raises(nim.RequestFailed) as info:
        session_op.result(5)
    assert info.value.status == 486 and info.value.reason == "Busy, really"
    assert b"X-Evil" not in b"".join(wire(platform))


def test_a_text_too_large_for_one_message_raises_message_too_large_before_sending(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    accept_all(bob)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    before = len(wire(platform))
    for send in (lambda: session.send("x" * 70_000), lambda: alice.send_message("sip:bob@example.test", "é" * 35_000)):
        with pytest.raises(nim.MessageTooLarge) as info:
            send()
        text = str(info.value)
        assert "bytes in UTF-8" in text and "at most 60,000" in text, text
    assert len(wire(platform)) == before, "nothing went on the wire"
    assert session.state is nim.SessionState.CONNECTED
    assert session.send("x" * 59_000).result(10).status == 200, "the largest allowed text goes (over TCP)"


def test_the_last_gate_refuses_injection_whatever_path_forgets():
    h = Headers()
    for bad in ("a\r\nX: 1", "a\nb", "a\x00"):
        with pytest.raises(LocalProtocolError, match="CR, LF or NUL"):
            h.add("Subject", bad)
        with pytest.raises(LocalProtocolError):
            h.set("Subject", bad)
        with pytest.raises(LocalProtocolError):
            h.set_all("Route", ["<sip:a>", bad])
    with pytest.raises(LocalProtocolError):
        Response(486, "Busy\r\nX: 1")


def test_a_9000_character_display_name_on_the_wire_gets_a_400_the_client_can_match(server):
    """A client that does send one (not ours): the server's 400 copies Via, From, To, Call-ID and CSeq, so the
    client's transaction ends at once instead of retransmitting for 32 s."""
    with RawPeer() as p:
        aor = "sip:alice@example.test"
        req, call_id = p.request("REGISTER", "sip:example.test", from_=aor, to=aor, contact=f"sip:alice@{p.hostport}")
        req = req.replace(b"From: <", b'From: "' + b"n" * 9000 + b'" <', 1)
        reply = p.exchange(req, (server.host, server.port))
        assert reply is not None and reply.startswith(b"SIP/2.0 400") and b"longer than 8192" in reply
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            assert header(reply, name), name
        assert header(reply, "Call-ID") == call_id and header(reply, "CSeq") == "1 REGISTER"
        assert "n" * 9000 in header(reply, "From")
