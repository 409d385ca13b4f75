"""liblinphone 5.1 (Debian linphone-cli) against the embedded server, in a loopback-only network namespace.

- linphone-daemon registers over UDP and over TCP; pager MESSAGEs go both ways (MessageReceived with the
  right sender and text; the daemon's message-received event with our From and the text).
- liblinphone chats in pager mode only ("basic chat rooms") and answers our session INVITE (m=message ... sip
  null) 488 Not acceptable here; `sessions.create()` goes on in pager mode (SessionModeChanged), and the
  session's texts, composing and receipts reach liblinphone and come back from it.
- With CPIM on (cpim_in_basic_chat_rooms_enabled=1), liblinphone wraps text in message/cpim and asks for
  delivery and display notifications in the wrapper; notebook_im unwraps, answers with IMDNs liblinphone takes,
  and from then on wraps its own texts to it the same way (endpoint.cpim "auto").
- liblinphone compresses its IMDNs (and, with CPIM on, its is-composing) with `Content-Encoding: deflate`;
  notebook_im inflates them. With CPIM off its IMDN names our message by the MESSAGE's Call-ID, not by our
  Imdn-Message-ID header; notebook_im matches either.

Helpers: netns_support.py (the namespace and its agent), linphone_support.py, loopback_capture.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .linphone_support import Liblinphone, LinphoneConfig, LinphoneDaemon
from .loopback_capture import LoopbackCapture, WireMessage
from .netns_support import DOMAIN, Netns, nim_user, shown, user

pytestmark = pytest.mark.interop


@pytest.fixture
def daemons(netns: Netns, tmp_path: Path) -> Iterator[Callable[..., LinphoneDaemon]]:
    """daemons(user, transport="udp", **config) starts a registered linphone-daemon; all stopped at the end."""
    started: list[LinphoneDaemon] = []

    def start(name: str, transport: str = "udp", **config: object) -> LinphoneDaemon:
        cfg = LinphoneConfig(user=name, server_port=netns.server_port, transport=transport, **config)  # type: ignore[arg-type]
        daemon = LinphoneDaemon(netns, tmp_path / f"daemon-{name}", cfg)
        started.append(daemon)
        daemon.start()
        daemon.wait_registered()
        netns.wait_registered(cfg.aor, on_fail=daemon.describe)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def liblinphones(netns: Netns, tmp_path: Path) -> Iterator[Callable[..., Liblinphone]]:
    """liblinphones(user, **config) starts a registered ctypes liblinphone client; all stopped at the end."""
    started: list[Liblinphone] = []

    def start(name: str, **config: object) -> Liblinphone:
        cfg = LinphoneConfig(user=name, server_port=netns.server_port, **config)  # type: ignore[arg-type]
        client = Liblinphone(netns, tmp_path / f"liblinphone-{name}", cfg)
        started.append(client)
        client.start()
        client.wait_registered()
        netns.wait_registered(cfg.aor, on_fail=client.describe)
        return client

    yield start
    for client in started:
        client.stop()


# ---------------------------------------------------------------------------------------------------
# linphone-daemon: registration and pager mode
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_linphone_daemon_registers(
    netns: Netns, daemons: Callable[..., LinphoneDaemon], capture: LoopbackCapture, transport: str
) -> None:
    name = user("lin")
    daemon = daemons(name, transport)
    assert daemon.version.startswith("5."), daemon.version
    contacts = netns.wait_registered(f"sip:{name}@{DOMAIN}")
    assert len(contacts) == 1, contacts
    assert contacts[0].startswith(f"sip:{name}@127.0.0.1:") and f";transport={transport}" in contacts[0], contacts
    registers = [m for m in capture.sip("REGISTER") if m.is_request and name in m.raw.decode(errors="replace")]
    assert registers and all(m.transport == transport for m in registers), shown(registers)
    ok = [m for m in capture.sip("REGISTER") if m.status == 200 and name in m.raw.decode(errors="replace")]
    assert ok, shown(capture.sip("REGISTER"))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_pager_message_from_notebook_im_reaches_linphone(
    netns: Netns, daemons: Callable[..., LinphoneDaemon], transport: str
) -> None:
    name = user("lin")
    daemon = daemons(name, transport)
    bob_name = user("bob")
    bob = nim_user(netns, bob_name, transport)
    text = "héllo linphone ✓ 1"
    sent = netns.send_message(bob_name, f"sip:{name}@{DOMAIN}", text)
    assert sent["ok"] and sent["status"] == 200 and sent["mode"] == "pager", sent
    [event] = daemon.wait_received(1, sender=bob)
    assert event["From"] == bob and event["To"] == f"sip:{name}@{DOMAIN}", event
    assert event["Content"] == text, event


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_pager_message_from_linphone_reaches_notebook_im(
    netns: Netns, daemons: Callable[..., LinphoneDaemon], capture: LoopbackCapture, transport: str
) -> None:
    name = user("lin")
    daemon = daemons(name, transport)
    bob_name = user("bob")
    bob = nim_user(netns, bob_name, transport)
    text = "hello from linphone ✓"
    message_id = daemon.send_message(bob, text)
    assert daemon.wait_message_state(message_id, ("Delivered", "NotDelivered")) == "Delivered", daemon.describe()
    [got] = netns.messages(bob_name, 1)
    assert got["sender"] == f"sip:{name}@{DOMAIN}", got
    assert got["text"] == text and got["content_type"] == "text/plain" and got["mode"] == "pager", got
    # without CPIM the daemon sends bare text/plain, no IMDN request, over the transport it registered with
    [wire] = sent_to_server(netns, capture, name, text)
    assert wire.transport == transport and wire.header("Content-Type") == "text/plain", wire.text()
    assert wire.header("Content-Encoding") is None and wire.header("Imdn-Message-ID") is None, wire.text()


def test_a_session_with_linphone_goes_on_in_pager_mode(
    netns: Netns, daemons: Callable[..., LinphoneDaemon], capture: LoopbackCapture
) -> None:
    """liblinphone refuses an INVITE whose only media line is `m=message <port> sip null` with 488 Not acceptable
    here (no Warning header, no SDP). `sessions.create()` goes on in pager mode: the session is connected with
    mode "pager" within a round trip, and its text reaches the daemon as a pager MESSAGE."""
    name = user("lin")
    daemon = daemons(name)
    bob_name = user("bob")
    nim_user(netns, bob_name)
    outcome = netns.call("invite", name=bob_name, to=f"sip:{name}@{DOMAIN}", timeout=15, terminate=False)
    assert outcome["ok"] is True and outcome["mode"] == "pager", outcome
    assert outcome["elapsed"] < 5, outcome
    [changed] = netns.events(bob_name, "SessionModeChanged", count=1, timeout=5)
    assert changed["status"] == 488 and "not acceptable here" in changed["reason"].lower(), changed
    invites = [
        m for m in capture.sip("INVITE") if m.is_request and m.start_line.startswith(f"INVITE sip:{name}@127.0.0.1")
    ]
    assert invites and b"m=message " in invites[0].raw_body, shown(capture.sip("INVITE"))
    from_linphone = [m for m in capture.sip("INVITE") if m.status == 488 and m.src == invites[0].dst]
    assert from_linphone, shown(capture.sip("INVITE"))
    assert from_linphone[0].raw_body == b"" and from_linphone[0].header("Warning") is None, from_linphone[0].text()
    assert daemon.registration_state() == "LinphoneRegistrationOk"
    status = netns.call("exec", code="result = sessions[-1].send('in the session, as pager').result(10).status")
    assert status == 200
    assert daemon.wait_received(1)[0]["Content"] == "in the session, as pager"


# ---------------------------------------------------------------------------------------------------
# liblinphone through ctypes: CPIM, IMDN, is-composing
# ---------------------------------------------------------------------------------------------------
def test_cpim_message_from_liblinphone_is_delivered_and_displayed(
    netns: Netns, liblinphones: Callable[..., Liblinphone], capture: LoopbackCapture
) -> None:
    """With cpim_in_basic_chat_rooms_enabled=1 liblinphone sends message/cpim (not deflated) with
    imdn.Message-ID and imdn.Disposition-Notification: positive-delivery, negative-delivery, display.
    notebook_im unwraps the text, answers "delivered" at once (liblinphone: DeliveredToUser) and "displayed"
    on mark_read (liblinphone: Displayed)."""
    name = user("lin")
    client = liblinphones(name, cpim=True)
    bob_name = user("bob")
    bob = nim_user(netns, bob_name)
    sent = client.send(bob, "cpim from liblinphone ✓")
    states = client.wait_state(sent["id"], "DeliveredToUser")
    assert states[:2] == ["InProgress", "Delivered"], states
    [got] = netns.messages(bob_name, 1)
    assert got["text"] == "cpim from liblinphone ✓" and got["content_type"] == "text/plain", got
    assert got["sender"] == f"sip:{name}@{DOMAIN}" and got["message_id"] == sent["message_id"], got
    [wire] = sent_to_server(netns, capture, name, "cpim from liblinphone")
    assert wire.header("Content-Type") == "message/cpim" and wire.header("Content-Encoding") is None, wire.text()
    body = wire.body().decode()
    assert f"imdn.Message-ID: {sent['message_id']}" in body, wire.text()
    assert "imdn.Disposition-Notification: positive-delivery, negative-delivery, display" in body, wire.text()

    assert netns.call("mark_read", name=bob_name) == 1
    assert client.wait_state(sent["id"], "Displayed")[-1] == "Displayed"
    notifications = sent_to_server(netns, capture, bob_name, "<displayed/>")
    assert notifications and notifications[0].header("Content-Type") == "message/cpim", shown(notifications)


def test_liblinphone_with_cpim_receipts_composing_and_wrapped_replies(
    netns: Netns, liblinphones: Callable[..., Liblinphone], capture: LoopbackCapture
) -> None:
    """liblinphone (CPIM on) sends its delivered/displayed IMDNs and its is-composing as message/cpim bodies
    compressed with `Content-Encoding: deflate` (zlib), `Priority: non-urgent`. notebook_im inflates and answers
    each 200: the sender sees MessageDeliveryNotified, MessageDisplayed and ComposingChanged. Once liblinphone
    has sent a CPIM text, notebook_im's texts to it go CPIM-wrapped with the receipt request inside (where
    liblinphone reads it), and its receipts for those come back too."""
    name = user("lin")
    lin = f"sip:{name}@{DOMAIN}"
    client = liblinphones(name, cpim=True)
    bob_name = user("bob")
    bob = nim_user(netns, bob_name)
    sent = netns.send_message(bob_name, lin, "do you see me?")
    assert sent["status"] == 200, sent
    [got] = client.received(1)
    assert got["text"] == "do you see me?" and got["sender"] == bob, got
    assert got["headers"].get("Imdn-Message-ID") == sent["message_id"], got

    client.compose(bob)
    typing = netns.events(bob_name, "ComposingChanged", count=1, timeout=10)
    assert typing[0]["composing"] is True and typing[0]["sender"] == lin, (typing, shown(capture.sip("MESSAGE")))
    assert client.mark_as_read(bob) == 0
    [delivered] = netns.events(bob_name, "MessageDeliveryNotified", count=1, timeout=10)
    assert delivered["message_id"] == sent["message_id"] and delivered["disposition"] == "delivered", delivered
    [displayed] = netns.events(bob_name, "MessageDisplayed", count=1, timeout=10)
    assert displayed["message_id"] == sent["message_id"], displayed
    for marker in ("<delivered/>", "<state>active</state>", "<displayed/>"):
        wait_until(
            lambda marker=marker: answers(capture, sent_to_server(netns, capture, name, marker)),
            10,
            f"liblinphone's MESSAGE with {marker} and the answer to it",
            lambda: shown(capture.sip("MESSAGE")),
        )
        [req] = sent_to_server(netns, capture, name, marker)[:1]
        assert req.header("Content-Encoding") == "deflate" and req.header("Content-Type") == "message/cpim", req.text()
        assert answers(capture, [req]) == [200], shown([req] + responses_to(capture, req))

    # liblinphone writes in CPIM: notebook_im answers in CPIM, receipts asked for in the wrapper
    theirs = client.send(bob, "cpim from liblinphone")
    netns.messages(bob_name, 1, sender=name)
    reply = netns.send_message(bob_name, lin, "wrapped reply ✓")
    assert reply["status"] == 200, reply
    [wire] = sent_to_server(netns, capture, bob_name, "wrapped reply")[:1]
    assert wire.header("Content-Type") == "message/cpim" and wire.header("Disposition-Notification") is None, (
        wire.text()
    )
    body = wire.body().decode()
    assert f"imdn.Message-ID: {reply['message_id']}" in body, wire.text()
    assert "imdn.Disposition-Notification: positive-delivery, display" in body, wire.text()
    texts = [e["text"] for e in client.received(2)]
    assert texts == ["do you see me?", "wrapped reply ✓"], texts
    notified = netns.events(bob_name, "MessageDeliveryNotified", count=2, timeout=10)
    assert notified[-1]["message_id"] == reply["message_id"], notified
    assert client.wait_state(theirs["id"], "DeliveredToUser")[-1] == "DeliveredToUser"


def sent_to_server(netns: Netns, capture: LoopbackCapture, sender: str, contains: str) -> list[WireMessage]:
    """MESSAGE requests that `sender` (a user name in From) sent to the embedded server and that contain
    `contains` (in the raw bytes or the inflated body), oldest first. The server's relayed copy is left out."""
    return [
        m
        for m in capture.sip("MESSAGE", contains=contains)
        if m.is_request and m.dst.endswith(f":{netns.server_port}") and f"{sender}@" in (m.header("From") or "")
    ]


def responses_to(capture: LoopbackCapture, request: WireMessage) -> list[WireMessage]:
    """The responses the server sent back to `request`'s sender (same Call-ID, to its source address)."""
    return [
        m
        for m in capture.sip()
        if not m.is_request and m.header("Call-ID") == request.header("Call-ID") and m.dst == request.src
    ]


def answers(capture: LoopbackCapture, requests: list[WireMessage]) -> list[int]:
    """The final statuses the first of `requests` got ([] while none came, or if there is no request)."""
    if not requests:
        return []
    return [m.status for m in responses_to(capture, requests[0]) if m.status is not None and m.status >= 200]


def wait_until(
    condition: Callable[[], object], timeout: float, what: str, context: Callable[[], str] = lambda: ""
) -> None:
    """Poll `condition` every 50 ms until it is truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{context()}")
        time.sleep(0.05)


def test_liblinphone_without_cpim_composes_plainly_and_names_our_message_by_call_id(
    netns: Netns, liblinphones: Callable[..., Liblinphone], capture: LoopbackCapture
) -> None:
    """CPIM off (liblinphone's default for basic chat rooms).

    - is-composing goes as a bare application/im-iscomposing+xml (not deflated; `Priority: non-urgent`,
      `Expires: 0`) and notebook_im shows it: ComposingChanged(composing=True).
    - Our text carries `Imdn-Message-ID` and `Disposition-Notification` as SIP headers (no CPIM); liblinphone
      answers with a bare message/imdn+xml, deflated, whose <message-id> is our MESSAGE's Call-ID. notebook_im
      inflates it, finds the message by its Call-ID and reports MessageDeliveryNotified."""
    name = user("lin")
    client = liblinphones(name)
    bob_name = user("bob")
    bob = nim_user(netns, bob_name)
    sent = netns.send_message(bob_name, f"sip:{name}@{DOMAIN}", "receipt please")
    assert sent["status"] == 200, sent
    client.received(1)
    ours = [
        m
        for m in capture.sip("MESSAGE", contains="receipt please")
        if m.is_request and m.dst.endswith(f":{netns.server_port}")
    ]
    assert ours and ours[0].header("Imdn-Message-ID") == sent["message_id"], shown(ours)
    call_id = ours[0].header("Call-ID")

    client.compose(bob)
    composing = netns.events(bob_name, "ComposingChanged", count=1, timeout=10)
    assert composing and composing[0]["composing"] is True and composing[0]["sender"] == f"sip:{name}@{DOMAIN}", (
        composing,
        shown(capture.sip("MESSAGE")),
    )
    [typing] = sent_to_server(netns, capture, name, "<state>active</state>")[:1]
    assert typing.header("Content-Type") == "application/im-iscomposing+xml", typing.text()
    assert typing.header("Content-Encoding") is None and typing.header("Priority") == "non-urgent", typing.text()

    [notified] = netns.events(bob_name, "MessageDeliveryNotified", count=1, timeout=10)
    assert notified["message_id"] == sent["message_id"] and notified["disposition"] == "delivered", notified
    [imdn] = sent_to_server(netns, capture, name, "<delivered/>")[:1]
    assert imdn.header("Content-Type") == "message/imdn+xml" and imdn.header("Content-Encoding") == "deflate", (
        imdn.text()
    )
    assert f"<message-id>{call_id}</message-id>".encode() in imdn.body(), imdn.text()
    assert answers(capture, [imdn]) == [200], shown([imdn] + responses_to(capture, imdn))


def test_a_pager_mode_session_with_liblinphone_both_ways(
    netns: Netns, liblinphones: Callable[..., Liblinphone], capture: LoopbackCapture
) -> None:
    """The session notebook_im opens to liblinphone goes on in pager mode and works as a chat: our typing shows
    in liblinphone's room, our text arrives and its receipts come back into the session (delivered, then
    displayed when liblinphone marks the room read); liblinphone's typing and text land in the same session."""
    name = user("lin")
    lin = f"sip:{name}@{DOMAIN}"
    client = liblinphones(name)
    bob_name = user("bob")
    bob = nim_user(netns, bob_name)
    outcome = netns.call("invite", name=bob_name, to=lin, timeout=15, terminate=False)
    assert outcome["ok"] and outcome["mode"] == "pager", outcome

    netns.call("exec", code="sessions[-1].start_composing().result(10)")
    client.wait_for(lambda e: e["type"] == "is-composing" and e["composing"], 10, "bob's typing in liblinphone")
    mid = netns.call("exec", code="result = sessions[-1].send('hello, pager session').result(10).message_id")
    [got] = client.received(1)
    assert got["text"] == "hello, pager session" and got["sender"] == bob, got
    [delivered] = netns.events(bob_name, "MessageDeliveryNotified", count=1, timeout=10)
    assert delivered["message_id"] == mid and delivered["session"] is True, delivered
    client.mark_as_read(bob)
    [displayed] = netns.events(bob_name, "MessageDisplayed", count=1, timeout=10)
    assert displayed["message_id"] == mid and displayed["session"] is True, displayed

    client.compose(bob)
    [typing] = netns.events(bob_name, "ComposingChanged", count=1, timeout=10)
    assert typing["composing"] is True and typing["session"] is True, typing
    client.send(bob, "and back, into the session")
    [text] = netns.messages(bob_name, 1, sender=name)
    assert text["text"] == "and back, into the session" and text["session"] is True and text["mode"] == "pager", text
    state = netns.call("exec", code="s = sessions[-1]; result = [s.mode, str(s.state), [m.text for m in s.messages]]")
    assert state == ["pager", "SessionState.CONNECTED", ["hello, pager session", "and back, into the session"]], state
    assert not [m for m in capture.sip("BYE") if m.is_request], "a pager-mode session has no dialog to end"
