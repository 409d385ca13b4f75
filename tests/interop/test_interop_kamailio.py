"""notebook_im endpoints registered with Kamailio (examples/kamailio/kamailio.cfg) as registrar + proxy.

Session mode (INVITE/200/ACK, is-composing, in-order MESSAGEs, BYE), pager mode both ways, UDP, TCP
and mixed, a rejected and a cancelled invitation, OPTIONS relayed to a user, and 404 for users that are
not registered.
"""

from __future__ import annotations

from typing import Any

import pytest

import notebook_im as nim
from support.programs import HOST, Kamailio, sip_options, wait_for

pytestmark = pytest.mark.interop

DOMAIN = "example.test"  # the SIP_DOMAIN of kamailio.cfg
TIMEOUT = 10

TRANSPORTS = [
    pytest.param(("udp", "udp"), id="udp"),
    pytest.param(("tcp", "tcp"), id="tcp"),
    pytest.param(("udp", "tcp"), id="udp-to-tcp"),
]


def next_of(stream: nim.EventStream, kind: type, kamailio: Kamailio, timeout: float = 5.0, **match: Any) -> Any:
    """The next event of `kind` (matching `match`) from `stream`, skipping others; fails with the proxy log."""
    skipped = []
    while True:
        try:
            event = stream.get(timeout=timeout)
        except TimeoutError:
            pytest.fail(
                f"no {kind.__name__} {match or ''} within {timeout} s; other events: {skipped}\n{kamailio.describe()}"
            )
        if isinstance(event, kind) and all(getattr(event, k) == v for k, v in match.items()):
            return event
        skipped.append(type(event).__name__)


def register_pair(platform: nim.Platform, kamailio: Kamailio, unique, transports: tuple[str, str]):
    """alice and bob, each registered with Kamailio over its own transport."""
    alice = platform.endpoint(f"sip:{unique('alice')}@{DOMAIN}", server=kamailio.uri, transport=transports[0]).result(
        TIMEOUT
    )
    bob = platform.endpoint(f"sip:{unique('bob')}@{DOMAIN}", server=kamailio.uri, transport=transports[1]).result(
        TIMEOUT
    )
    assert alice.state is nim.EndpointState.ENABLED and bob.state is nim.EndpointState.ENABLED
    return alice, bob


def received_requests(platform: nim.Platform, endpoint: nim.Endpoint) -> list[bytes]:
    """The raw SIP requests `endpoint` received (from the platform trace)."""
    owner = endpoint.uri
    return [
        r.raw
        for r in platform.trace.sip_records()
        if r.direction == "in" and r.owner == owner and not r.raw.startswith(b"SIP/2.0 ")
    ]


def top_via(raw: bytes) -> str:
    for line in raw.decode("utf-8", "replace").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() in ("via", "v"):
            return value.split(",")[0].strip()
    return ""


@pytest.mark.parametrize("transports", TRANSPORTS)
def test_session_mode_through_kamailio(kamailio: Kamailio, platform: nim.Platform, unique, transports) -> None:
    alice, bob = register_pair(platform, kamailio, unique, transports)
    bob.sessions.on_incoming(lambda incoming: incoming.accept())
    bob_events = bob.events(nim.IncomingSession, nim.MessageReceived, nim.ComposingChanged, nim.SessionTerminated)
    alice_events = alice.events(nim.MessageReceived, nim.SessionTerminated)

    # INVITE (m=message) -> 180 -> 200 -> ACK, all through Kamailio
    session = alice.sessions.create(bob.uri).result(TIMEOUT)
    assert session.state is nim.SessionState.CONNECTED
    incoming = next_of(bob_events, nim.IncomingSession, kamailio)
    assert incoming.inviter.uri == alice.uri
    bob_session = incoming.session
    bob_session.wait_connected(5).result(6)

    # is-composing (RFC 3994), seen by bob as ComposingChanged(True)
    session.start_composing().result(5)
    typing = next_of(bob_events, nim.ComposingChanged, kamailio)
    assert typing.composing is True and typing.session is bob_session and typing.participant.uri == alice.uri

    # several MESSAGEs sent back to back: all 200, received in order
    texts = [f"message {i} from {alice.uri} ✓" for i in range(10)]
    sends = [session.send(t) for t in texts]
    delivered = [op.result(TIMEOUT) for op in sends]
    assert [d.status for d in delivered] == [200] * len(texts)
    assert [d.text for d in delivered] == texts

    # the first text message clears "composing" (RFC 3994 §4), then the texts arrive in order
    idle = next_of(bob_events, nim.ComposingChanged, kamailio)
    assert idle.composing is False
    got = [next_of(bob_events, nim.MessageReceived, kamailio) for _ in texts]
    assert [m.text for m in got] == texts
    assert all(m.mode == "session" and m.session is bob_session and m.participant.uri == alice.uri for m in got)
    assert [m.text for m in bob_session.messages if m.direction == "in"] == texts
    assert [m.status for m in session.messages] == ["delivered"] * len(texts)
    # bob's delivery receipts came back through Kamailio too
    wait_for(
        lambda: [m.state for m in session.messages] == ["delivered"] * len(texts),
        5,
        "receipts via Kamailio",
        kamailio.describe,
    )

    # and the other way
    bob_session.send("pong").result(TIMEOUT)
    pong = next_of(alice_events, nim.MessageReceived, kamailio)
    assert (pong.text, pong.mode, pong.session) == ("pong", "session", session)

    # BYE ends bob's side too
    session.terminate().result(TIMEOUT)
    assert session.state is nim.SessionState.DISCONNECTED
    ended = next_of(bob_events, nim.SessionTerminated, kamailio)
    assert ended.session is bob_session and ended.by_remote is True
    assert bob_session.state is nim.SessionState.DISCONNECTED
    assert bob.sessions.sessions == [] and alice.sessions.sessions == []

    # Kamailio was in the path of every request bob got (record-routed dialog, its Via on top)
    requests = received_requests(platform, bob)
    methods = [r.split(b" ", 1)[0].decode() for r in requests]
    assert methods.count("INVITE") == 1 and methods.count("ACK") == 1 and methods.count("BYE") == 1
    # the texts, the "active" indication, and alice's delivery receipt (RFC 5438) for "pong"
    assert methods.count("MESSAGE") == len(texts) + 2
    assert sum(b"Content-Type: message/cpim" in r for r in requests) == 1
    vias = [top_via(r) for r in requests]
    assert all(f"{HOST}:{kamailio.port}" in v for v in vias), vias
    invite = requests[methods.index("INVITE")].decode("utf-8", "replace")
    assert f"Record-Route: <sip:{HOST}:{kamailio.port}" in invite, invite


@pytest.mark.parametrize("transports", TRANSPORTS)
def test_pager_mode_both_directions_through_kamailio(
    kamailio: Kamailio, platform: nim.Platform, unique, transports
) -> None:
    alice, bob = register_pair(platform, kamailio, unique, transports)
    alice_events = alice.events(nim.MessageReceived)
    bob_events = bob.events(nim.MessageReceived)

    to_bob = ["hi bob", "zweite Nachricht: äöü", "line one\nline two"]
    for text in to_bob:
        delivered = alice.send_message(bob.uri, text).result(TIMEOUT)
        assert (delivered.status, delivered.mode, delivered.session) == (200, "pager", None)
    got = [next_of(bob_events, nim.MessageReceived, kamailio) for _ in to_bob]
    assert [m.text for m in got] == to_bob
    assert all(m.mode == "pager" and m.session is None and m.participant.uri == alice.uri for m in got)
    assert all(m.content_type == "text/plain" for m in got)

    reply = bob.send_message(alice.uri, "hi alice").result(TIMEOUT)
    assert reply.status == 200
    back = next_of(alice_events, nim.MessageReceived, kamailio)
    assert (back.text, back.mode, back.participant.uri) == ("hi alice", "pager", bob.uri)

    # they went through Kamailio, over the transport each endpoint registered with
    for ep, transport in ((alice, transports[0]), (bob, transports[1])):
        requests = received_requests(platform, ep)
        assert requests and all(f"{HOST}:{kamailio.port}" in top_via(r) for r in requests)
        assert all(f"SIP/2.0/{transport.upper()} " in top_via(r) for r in requests)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_unknown_user_gets_404(kamailio: Kamailio, platform: nim.Platform, unique, transport: str) -> None:
    alice = platform.endpoint(f"sip:{unique('alice')}@{DOMAIN}", server=kamailio.uri, transport=transport).result(
        TIMEOUT
    )
    nobody = f"sip:{unique('nobody')}@{DOMAIN}"

    with pytest.raises(nim.RequestFailed) as pager:
        alice.send_message(nobody, "anyone there?").result(TIMEOUT)
    assert pager.value.status == 404, pager.value

    with pytest.raises(nim.RequestFailed) as invite:
        alice.sessions.create(nobody).result(TIMEOUT)
    assert invite.value.status == 404, invite.value


def test_unregistered_user_gets_404(kamailio: Kamailio, platform: nim.Platform, unique) -> None:
    """After bob un-REGISTERs (Expires: 0), Kamailio no longer knows where he is."""
    alice, bob = register_pair(platform, kamailio, unique, ("udp", "udp"))
    assert alice.send_message(bob.uri, "still there?").result(TIMEOUT).status == 200
    bob.disable().result(TIMEOUT)
    assert bob.state is nim.EndpointState.DISABLED
    with pytest.raises(nim.RequestFailed) as failed:
        alice.send_message(bob.uri, "gone?").result(TIMEOUT)
    assert failed.value.status == 404, failed.value


def test_rejected_invitation_is_relayed(kamailio: Kamailio, platform: nim.Platform, unique) -> None:
    alice, bob = register_pair(platform, kamailio, unique, ("udp", "tcp"))
    bob.sessions.on_incoming(lambda incoming: incoming.reject(486))
    with pytest.raises(nim.RequestFailed) as failed:
        alice.sessions.create(bob.uri).result(TIMEOUT)
    assert failed.value.status == 486, failed.value
    assert alice.sessions.sessions == [] and bob.sessions.sessions == []


@pytest.mark.parametrize("transports", [pytest.param(("udp", "udp"), id="udp"), pytest.param(("tcp", "tcp"), id="tcp")])
def test_cancelled_invitation(kamailio: Kamailio, platform: nim.Platform, unique, transports) -> None:
    """alice gives up while bob's side still rings: CANCEL through Kamailio, 487 back."""
    alice, bob = register_pair(platform, kamailio, unique, transports)
    bob_events = bob.events(nim.IncomingSession, nim.SessionTerminated)  # bob never answers: it rings
    inviting = alice.sessions.create(bob.uri)
    incoming = next_of(bob_events, nim.IncomingSession, kamailio)
    (session,) = alice.sessions.sessions
    session.terminate().result(TIMEOUT)
    with pytest.raises(nim.RequestFailed) as failed:
        inviting.result(TIMEOUT)
    assert failed.value.status == 487, failed.value
    ended = next_of(bob_events, nim.SessionTerminated, kamailio)
    assert ended.session is incoming.session and ended.by_remote is True and ended.status == 487
    wait_for(lambda: session.state is nim.SessionState.DISCONNECTED, 5, "alice's session to end")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_options_to_a_registered_user(kamailio: Kamailio, platform: nim.Platform, unique, transport: str) -> None:
    """OPTIONS for a user is relayed to the user's endpoint, which answers with what it supports."""
    bob = platform.endpoint(f"sip:{unique('bob')}@{DOMAIN}", server=kamailio.uri, transport=transport).result(TIMEOUT)
    status, response = sip_options(kamailio.port, transport=transport, ruri=bob.uri, timeout=5)
    assert status == 200, f"{response}\n{kamailio.describe()}"
    assert "notebook_im" in response and "MESSAGE" in response, response  # bob's Server and Allow headers
    # and the proxy itself answers an OPTIONS without a user (keepalive)
    status, response = sip_options(kamailio.port, transport=transport, timeout=5)
    assert status == 200 and "Keepalive" in response, response


def test_user_at_the_proxy_address(kamailio: Kamailio, platform: nim.Platform, unique) -> None:
    """sip:bob@<proxy address> reaches bob@example.test (usrloc matches on the user part, use_domain=0)."""
    alice, bob = register_pair(platform, kamailio, unique, ("udp", "udp"))
    bob_events = bob.events(nim.MessageReceived)
    user = bob.uri[len("sip:") :].split("@")[0]
    assert (
        alice.send_message(f"sip:{user}@{HOST}:{kamailio.port}", "via the proxy address").result(TIMEOUT).status == 200
    )
    assert next_of(bob_events, nim.MessageReceived, kamailio).text == "via the proxy address"
