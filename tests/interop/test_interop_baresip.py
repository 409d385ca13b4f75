"""baresip 1.0.0 (Debian baresip-core) against the embedded server, in a loopback-only network namespace.

baresip registers over UDP and TCP and pager MESSAGEs go both ways (text/plain; baresip's MESSAGE carries no
IMDN request, and it answers ours with a plain 200 and no receipt). baresip's own limits, and what notebook_im
makes of them:
- a MESSAGE that is not text/plain is answered 415 by baresip (its core takes text/plain only): the sender gets
  RequestFailed(415), nothing is lost silently;
- our session INVITE (m=message) is answered 488 Not Acceptable Here (baresip has no MSRP or SIP-IM session):
  `sessions.create()` goes on in pager mode and the conversation works both ways;
- after SIGKILL the binding stays at the server (nothing un-REGISTERs): the server finds the device dead and
  keeps the messages for it (202) until it registers again.

Helpers: netns_support.py (the namespace and its agent), baresip_support.py, loopback_capture.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for

from .baresip_support import Baresip, BaresipConfig
from .loopback_capture import LoopbackCapture
from .netns_support import DOMAIN, Netns, nim_user, shown, user

pytestmark = pytest.mark.interop


@pytest.fixture
def baresips(netns: Netns, tmp_path: Path) -> Iterator[Callable[..., Baresip]]:
    """baresips(user, transport="udp", contacts=[...]) starts a registered baresip; all stopped at the end."""
    started: list[Baresip] = []

    def start(name: str, transport: str = "udp", contacts: list[str] | None = None) -> Baresip:
        cfg = BaresipConfig(
            user=name,
            server_port=netns.server_port,
            local_port=netns.port(),
            transport=transport,
            contacts=list(contacts or []),
        )
        b = Baresip(netns, tmp_path / f"baresip-{name}", cfg)
        started.append(b)
        b.start()
        netns.wait_registered(cfg.aor, on_fail=b.describe)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_baresip_registers(
    netns: Netns, baresips: Callable[..., Baresip], capture: LoopbackCapture, transport: str
) -> None:
    name = user("carol")
    b = baresips(name, transport)
    [contact] = netns.wait_registered(f"sip:{name}@{DOMAIN}")
    # baresip's Contact user is "<user>-0x<pointer>"; it listens where sip_listen says
    assert contact.startswith(f"sip:{name}-0x") and f"@127.0.0.1:{b.config.local_port}" in contact, contact
    assert (";transport=tcp" in contact) == (transport == "tcp"), contact
    registers = [m for m in capture.sip("REGISTER") if m.is_request and f"{name}@" in (m.header("From") or "")]
    assert registers and registers[0].transport == transport, shown(capture.sip("REGISTER"))
    assert (registers[0].header("User-Agent") or "").startswith("baresip v1.0"), registers[0].text()
    assert "200 OK (notebook_im" in b.log(None), b.describe()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_pager_messages_both_ways(
    netns: Netns, baresips: Callable[..., Baresip], capture: LoopbackCapture, transport: str
) -> None:
    bob_name, dave_name = user("bob"), user("dave")
    bob, dave = nim_user(netns, bob_name, transport), nim_user(netns, dave_name, transport)
    name = user("carol")
    b = baresips(name, transport, contacts=[bob, dave])

    b.send_message(bob, "hello bob from baresip")
    b.send_message(dave, "hello dave ✓")  # the second contact: /contact_next first
    [to_bob] = netns.messages(bob_name, 1)
    [to_dave] = netns.messages(dave_name, 1)
    for got, text in ((to_bob, "hello bob from baresip"), (to_dave, "hello dave ✓")):
        assert got["sender"] == f"sip:{name}@{DOMAIN}" and got["text"] == text, got
        assert got["mode"] == "pager" and got["content_type"] == "text/plain", got
    assert b.failures() == [], b.describe()
    [wire] = [
        m
        for m in capture.sip("MESSAGE", contains="hello bob from baresip")
        if m.is_request and m.dst.endswith(f":{netns.server_port}")
    ]
    assert wire.transport == transport and wire.header("Content-Type") == "text/plain", wire.text()
    assert wire.header("Imdn-Message-ID") is None and wire.header("Accept") == "text/plain", wire.text()

    sent = netns.send_message(bob_name, f"sip:{name}@{DOMAIN}", "hi baresip ✓")
    assert sent["ok"] and sent["status"] == 200, sent
    [got] = b.wait_received(1, sender=bob)
    assert got.sender == bob and got.text == "hi baresip ✓", got
    # baresip sends no receipt back for our Disposition-Notification request (none within 0.5 s: it would
    # come at once, as notebook_im's and liblinphone's do)
    assert netns.events(bob_name, "MessageDeliveryNotified", count=1, timeout=0.5) == []


def test_non_text_plain_message_is_answered_415_by_baresip(netns: Netns, baresips: Callable[..., Baresip]) -> None:
    """Characterisation: baresip 1.0 takes text/plain only; anything else gets 415 Unsupported Media Type
    (with Accept: text/plain) from its core, before any module sees it."""
    bob_name = user("bob")
    nim_user(netns, bob_name)
    name = user("carol")
    b = baresips(name)
    sent = netns.send_message(bob_name, f"sip:{name}@{DOMAIN}", "<b>bold</b>", content_type="text/html")
    assert sent["ok"] is False and sent["status"] == 415, sent
    assert b.received() == []


def test_a_session_with_baresip_goes_on_in_pager_mode(
    netns: Netns, baresips: Callable[..., Baresip], capture: LoopbackCapture
) -> None:
    """baresip answers an INVITE with only `m=message ... sip null` 488 Not Acceptable Here; the session goes on in
    pager mode at once: our text reaches baresip, and baresip's answer lands in the same session."""
    bob_name = user("bob")
    bob = nim_user(netns, bob_name)
    name = user("carol")
    b = baresips(name, contacts=[bob])
    outcome = netns.call("invite", name=bob_name, to=f"sip:{name}@{DOMAIN}", timeout=15, terminate=False)
    assert outcome["ok"] is True and outcome["mode"] == "pager", outcome
    assert outcome["elapsed"] < 5, outcome
    [changed] = netns.events(bob_name, "SessionModeChanged", count=1, timeout=5)
    assert changed["status"] == 488, changed
    # (the capture reads the loopback on a thread of its own: give it a moment to see the answer too)
    wait_for(lambda: [m for m in capture.sip("INVITE") if m.status == 488], 3, "the 488 in the capture")
    assert netns.call("exec", code="result = sessions[-1].send('pager session to baresip').result(10).status") == 200
    [got] = b.wait_received(1, sender=bob)
    assert got.text == "pager session to baresip", got
    b.send_message(bob, "baresip answers")
    [text] = netns.messages(bob_name, 1)
    assert text["text"] == "baresip answers" and text["session"] is True and text["mode"] == "pager", text


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_crashed_baresip_does_not_swallow_messages(
    netns: Netns, baresips: Callable[..., Baresip], transport: str
) -> None:
    """baresip is SIGKILLed while registered (its binding outlives it): a pager MESSAGE to that user gets a definite
    answer within 5 s (202, kept: over TCP at once, the flow closed; over UDP after a few retransmissions), a
    second one at once (the device is known gone), and both reach baresip, in order, once, when it registers
    again. An INVITE meanwhile gets 480 at once."""
    bob_name = user("bob")
    nim_user(netns, bob_name, transport)
    name = user("carol")
    aor = f"sip:{name}@{DOMAIN}"
    b = baresips(name, transport, contacts=[f"sip:{bob_name}@{DOMAIN}"])
    before = netns.wait_registered(aor)
    assert netns.send_message(bob_name, aor, "are you there?")["status"] == 200
    b.wait_received(1)

    assert b.kill() == -9
    assert netns.call("registrations")[aor] == before  # the binding outlives the device
    first = netns.send_message(bob_name, aor, "kept one", timeout=20)
    assert first["ok"] is True and first["status"] == 202 and first["stored"] is True, first
    assert first["elapsed"] < (1 if transport == "tcp" else 5), first
    second = netns.send_message(bob_name, aor, "kept two", timeout=20)
    assert second["status"] == 202 and second["elapsed"] < 1, second
    invite = netns.call("invite", name=bob_name, to=aor, timeout=15)
    assert invite["ok"] is False and invite["status"] == 480 and invite["elapsed"] < 1, invite

    again = baresips(name, transport, contacts=[f"sip:{bob_name}@{DOMAIN}"])  # the device comes back
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len([r for r in again.received() if r.text.startswith("kept")]) < 2:
        time.sleep(0.05)
    kept = [r.text for r in again.received() if r.text.startswith("kept")]
    assert kept == ["kept one", "kept two"], again.describe()
