"""SIPp against a notebook_im endpoint that has no server (direct, to its contact port), both ways.

SIPp UAC -> notebook_im:  sipp/uac_pager.xml (N pager MESSAGEs), sipp/uac_im_session.xml (full IM session)
notebook_im -> SIPp UAS:  sipp/uas_pager.xml (answers MESSAGE 200), sipp/uas_im_session.xml (INVITE..BYE)
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import notebook_im as nim
from support.programs import HOST, SIPP_DIR, Sipp, SippServer, ToolResult, free_port

pytestmark = pytest.mark.interop

PAGER_COUNT = 200
SESSION_CALLS = 3


def listening_endpoint(platform: nim.Platform, user: str, transport: str = "udp") -> nim.Endpoint:
    ep = platform.endpoint(f"sip:{user}@{HOST}", server=None, transport=transport).result(10)
    assert ep.state is nim.EndpointState.ENABLED
    assert ep.contact.startswith(f"sip:{user}@{HOST}:")
    return ep


def collect(stream: nim.EventStream, count: int, timeout: float, context: Any) -> list[Any]:
    """Exactly `count` events from `stream` (each within `timeout` s of the previous one)."""
    events = []
    for _ in range(count):
        try:
            events.append(stream.get(timeout=timeout))
        except TimeoutError:
            pytest.fail(f"got only {len(events)} of {count} events\n{context}")
    return events


def assert_sipp_ok(result: ToolResult, calls: int) -> None:
    assert result.returncode == 0, f"SIPp failed (0 = every call succeeded):\n{result}"
    assert "Successful call" in result.stdout, result
    # the final statistics screen: "Successful call | 0 | <calls>"
    final = result.stdout[result.stdout.rfind("Successful call") :].split("\n", 1)[0]
    assert final.split("|")[-1].strip() == str(calls), f"{final!r}\n{result}"


# ---------------------------------------------------------------------------------------------------
# SIPp as client
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipp_sends_pager_messages(platform: nim.Platform, sipp: Sipp, transport: str) -> None:
    carol = listening_endpoint(platform, "carol", transport)
    received = carol.events(nim.MessageReceived)
    host, port = carol.local_address

    result = sipp.run(
        "uac_pager.xml",
        remote=f"{host}:{port}",
        service="carol",
        local_port=free_port(),
        transport=transport,
        calls=PAGER_COUNT,
        rate=200,
        limit=50,
    )
    assert_sipp_ok(result, PAGER_COUNT)

    events = collect(received, PAGER_COUNT, 5, result)
    # SIPp ends the last body line with CRLF; notebook_im hands text out with "\n" line breaks
    texts = [e.text for e in events]
    expected = [f"pager message {n}\n" for n in range(1, PAGER_COUNT + 1)]
    assert sorted(texts) == sorted(expected)  # exactly these N, none lost, none doubled
    assert len(set(texts)) == PAGER_COUNT
    assert texts[0] == "pager message 1\n"
    for e in events[:5]:
        assert e.mode == "pager" and e.session is None and e.content_type == "text/plain"
        assert e.participant.uri.startswith(f"sip:sipp@{HOST}")
    assert received.drain() == []  # nothing more arrived
    assert len(carol.pager_messages) == PAGER_COUNT
    stats = carol.stats
    assert stats["bad_request_400"] == 0 and stats["dropped"] == 0, stats


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipp_runs_im_sessions(platform: nim.Platform, sipp: Sipp, transport: str) -> None:
    carol = listening_endpoint(platform, "carol", transport)
    invitations: list[nim.IncomingSession] = []
    lock = threading.Lock()

    def accept(incoming: nim.IncomingSession) -> None:
        with lock:
            invitations.append(incoming)
        incoming.accept()

    carol.sessions.on_incoming(accept)
    events = carol.events(nim.MessageReceived, nim.ComposingChanged, nim.SessionTerminated)
    host, port = carol.local_address

    result = sipp.run(
        "uac_im_session.xml",
        remote=f"{host}:{port}",
        service="carol",
        local_port=free_port(),
        transport=transport,
        calls=SESSION_CALLS,
        limit=1,
    )
    assert_sipp_ok(result, SESSION_CALLS)

    # per session: text, composing on, composing off (the session ended), terminated by the remote BYE
    got = collect(events, 4 * SESSION_CALLS, 5, result)
    assert len(invitations) == SESSION_CALLS
    for n, incoming in enumerate(invitations, start=1):
        session = incoming.session
        mine = [e for e in got if e.session is session]
        kinds = [(type(e).__name__, getattr(e, "composing", None)) for e in mine]
        assert kinds == [
            ("MessageReceived", None),
            ("ComposingChanged", True),
            ("ComposingChanged", False),
            ("SessionTerminated", None),
        ], kinds
        text, _, _, ended = mine
        assert text.text == f"hello from SIPp {n}\n" and text.mode == "session" and text.content_type == "text/plain"
        assert text.participant.uri.startswith(f"sip:sipp@{HOST}")
        assert ended.by_remote is True
        assert session.state is nim.SessionState.DISCONNECTED
        assert [m.text for m in session.messages] == [f"hello from SIPp {n}\n"]
    assert carol.sessions.sessions == []
    assert events.drain() == []


# ---------------------------------------------------------------------------------------------------
# SIPp as server
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_pager_messages_to_sipp(
    platform: nim.Platform, sipp: Sipp, sipp_servers: list[SippServer], transport: str
) -> None:
    count = 20
    server = sipp.start("uas_pager.xml", local_port=free_port(), transport=transport, calls=count)
    sipp_servers.append(server)
    dave = listening_endpoint(platform, "dave", transport)
    target = f"sip:sipp@{HOST}:{server.port}" + (";transport=tcp" if transport == "tcp" else "")

    texts = [f"to sipp #{i}" for i in range(count)]
    results = [dave.send_message(target, t).result(10) for t in texts[: count // 2]]
    ops = [dave.send_message(target, t) for t in texts[count // 2 :]]  # and some concurrently
    results += [op.result(10) for op in ops]
    assert [r.status for r in results] == [200] * count, server.describe()
    assert all(r.mode == "pager" for r in results)

    code = server.wait()
    assert code == 0, f"SIPp UAS exited with {code}:\n{server.describe()}"
    log = server.messages()
    for t in texts:
        assert t in log, f"SIPp did not log a MESSAGE with {t!r}\n{server.describe()}"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_im_session_with_sipp(
    platform: nim.Platform, sipp: Sipp, sipp_servers: list[SippServer], transport: str
) -> None:
    server = sipp.start("uas_im_session.xml", local_port=free_port(), transport=transport, calls=1)
    sipp_servers.append(server)
    dave = listening_endpoint(platform, "dave", transport)
    target = f"sip:sipp@{HOST}:{server.port}" + (";transport=tcp" if transport == "tcp" else "")

    session = dave.sessions.create(target).result(10)
    assert session.state is nim.SessionState.CONNECTED
    session.start_composing().result(5)
    texts = ["hello SIPp", "second message", "third ✓"]
    for t in texts:
        delivered = session.send(t).result(10)
        assert (delivered.status, delivered.mode) == (200, "session")
    session.terminate().result(10)
    assert session.state is nim.SessionState.DISCONNECTED
    assert [m.status for m in session.messages] == ["delivered"] * len(texts)

    code = server.wait()
    assert code == 0, f"SIPp UAS exited with {code}:\n{server.describe()}"
    log = server.messages()
    for needle in ["m=message", "application/im-iscomposing+xml", "<state>active</state>", "BYE sip:sipp@", *texts]:
        assert needle in log, f"{needle!r} not in SIPp's message log\n{server.describe()}"


def test_third_party_registration_routes_to_the_contact(
    server: nim.Server, platform: nim.Platform, sipp: Sipp, sipp_servers: list[SippServer]
) -> None:
    """A SIPp UAS listens on port A; bob is registered by a REGISTER sent from port B naming `Contact: <sip:bob@A>`
    (third-party registration, RFC 3261 §10: load rigs, softphones with separate sockets). A MESSAGE to bob through
    the embedded server goes to the Contact, A, as Kamailio routes it, not to B where the REGISTER came from."""
    from tests.security.raw import RawPeer

    uas = sipp.start("uas_pager.xml", local_port=free_port(), calls=3)
    sipp_servers.append(uas)
    with RawPeer() as registrar_side:  # port B: only ever sends the REGISTER
        reply = registrar_side.register((server.host, server.port), "bob", contact=f"sip:bob@{HOST}:{uas.port}")
        assert reply is not None and reply.startswith(b"SIP/2.0 200"), reply
        alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
        alice.request_receipts = False
        for i in range(3):
            assert alice.send_message("sip:bob@example.test", f"to the contact #{i}").result(10).status == 200
        assert registrar_side.drain(0.3) == [], "nothing went to the REGISTER's source"
    assert uas.wait() == 0, uas.describe()
    log = uas.messages()
    assert all(f"to the contact #{i}" in log for i in range(3))


# ---------------------------------------------------------------------------------------------------
# SIPp as an OCS/Lync-style client (the shapes SIPE writes)
# ---------------------------------------------------------------------------------------------------
OCS_FIRST_MESSAGE = "Hi from an OCS client \u2713"


@pytest.mark.parametrize("media", ["message", "x-ms-message"])  # OCS 2007 and later, OCS 2005
def test_sipp_as_an_ocs_client(platform: nim.Platform, sipp: Sipp, media: str) -> None:
    carol = listening_endpoint(platform, "carol")
    invitations: list[nim.IncomingSession] = []
    carol.sessions.on_incoming(lambda incoming: (invitations.append(incoming), incoming.accept()))
    events = carol.events(nim.MessageReceived, nim.ComposingChanged, nim.SessionTerminated)
    host, port = carol.local_address

    result = sipp.run(
        "uac_ocs_session.xml",
        remote=f"{host}:{port}",
        service="carol",
        local_port=free_port(),
        calls=1,
        extra=["-key", "media", media],
    )
    assert_sipp_ok(result, 1)  # SIPp checked that our 200 says "Supported: ms-text-format"

    got = collect(events, 5, 5, result)
    kinds = [(type(e).__name__, getattr(e, "composing", getattr(e, "text", None))) for e in got]
    assert kinds == [
        ("MessageReceived", OCS_FIRST_MESSAGE),  # out of the INVITE's ms-text-format header
        ("ComposingChanged", True),  # INFO application/xml KeyboardActivity "type"
        ("ComposingChanged", False),  # the MESSAGE ends typing
        ("MessageReceived", "second line from SIPp 1\n"),
        ("SessionTerminated", None),
    ], kinds
    (incoming,) = invitations
    session = incoming.session
    assert incoming.conversation_id == "47111" == session.conversation_id
    assert all(e.session is session for e in got)
    assert got[0].call_id == got[3].call_id and got[0].mode == "session"
    assert [m.text for m in session.messages] == [OCS_FIRST_MESSAGE, "second line from SIPp 1\n"]
    sip = platform.trace.sip(owner=carol.uri)
    invite = sip[(sip.method == "INVITE") & sip.status.isna()].raw.iloc[0]
    assert "Ms-Conversation-ID: 47111" in invite and "ms-text-format: text/plain" in invite
    info = sip[(sip.method == "INFO") & sip.status.isna()].raw.iloc[0]
    assert "Content-Type: application/xml" in info and '<status status="type" />' in info
    ok = sip[(sip.method == "INVITE") & (sip.status == 200)].raw.iloc[0]
    assert "Supported: ms-text-format" in ok and f"m={media} " in ok  # answered in kind
    stats = carol.stats
    assert stats["first_messages_dropped"] == 0 and stats["bad_request_400"] == 0, stats


def test_sipp_as_a_hostile_ocs_client(platform: nim.Platform, sipp: Sipp) -> None:
    carol = listening_endpoint(platform, "carol")
    carol.sessions.on_incoming(lambda incoming: incoming.accept())
    events = carol.events(nim.MessageReceived, nim.ComposingChanged, nim.SessionTerminated)
    host, port = carol.local_address

    result = sipp.run(
        "uac_ocs_hostile.xml",
        remote=f"{host}:{port}",
        service="carol",
        local_port=free_port(),
        calls=2,
        limit=1,
        extra=["-inf", str(SIPP_DIR / "ocs_bad_first_messages.csv")],
    )
    # SIPp checked: each INVITE answered 200 without "Supported: ms-text-format", the DTD INFO 400, the big one 413
    assert_sipp_ok(result, 2)

    got = collect(events, 4, 5, result)
    kinds = [(type(e).__name__, getattr(e, "text", None)) for e in got]
    assert kinds == [
        ("MessageReceived", "first message again 1\n"),  # only the MESSAGE: the unreadable first ones are dropped
        ("SessionTerminated", None),
        ("MessageReceived", "first message again 2\n"),
        ("SessionTerminated", None),
    ], kinds  # and no ComposingChanged: the refused KeyboardActivity documents changed nothing
    assert carol.stats["first_messages_dropped"] == 2
    reasons = [d.reason for d in platform.trace.drops if d.owner == carol.uri]
    assert reasons == [
        "first message dropped (first message is not valid base64)",
        "first message dropped (first message too large: 6,000 base64 characters, at most 5,464 (4,096 bytes of text))",
    ], reasons
    sip = platform.trace.sip(owner=carol.uri)
    answers = sip[(sip.method == "INFO") & sip.status.notna()].status.astype(int).tolist()
    assert answers == [400, 413, 400, 413]
