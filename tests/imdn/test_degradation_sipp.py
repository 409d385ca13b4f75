"""Graceful degradation against SIPp peers that misbehave (or simply lack the feature), and the receiving side
of RFC 5438 as linphone speaks it:

  uas_refuses_composing_imdn.xml  415 to is-composing and to receipts, 200 to text: text keeps flowing, the
                                  refused kinds stop for that peer and session
  uas_im_session.xml / uas_pager.xml (tests/interop/sipp)  200 to everything, never a receipt: "sent" stays
  uac_cpim_text.xml + uas_receipts.xml  text in message/cpim asking for receipts (linphone's way): both
                                  receipts come back, as new MESSAGEs to the sender's address
SIPp runs bounded (-m, -timeout), -nostdin, on explicit 127.0.0.1 ports; its exit status is checked."""

from __future__ import annotations

import time

import pytest

import notebook_im as nim
from support.programs import HOST, Sipp, SippServer, free_port

from .conftest import scenario
from .test_receipts import receipts_sent

pytestmark = [pytest.mark.timeout(90), pytest.mark.interop]


def listening(platform: nim.Platform, user: str) -> nim.Endpoint:
    """An endpoint without a server: SIPp reaches it (and it reaches SIPp) directly on loopback."""
    return platform.endpoint(f"sip:{user}@{HOST}", server=None).result(10)


def sent_with(platform: nim.Platform, owner: str, content_type: str) -> int:
    """How many MESSAGE requests with this Content-Type `owner` put on the wire (retransmissions included)."""
    sip = platform.trace.sip(owner=owner)
    out = sip[(sip["direction"] == "out") & (sip["method"] == "MESSAGE") & sip["status"].isna()]
    return sum(f"Content-Type: {content_type}" in r for r in out["raw"])


def test_peer_refusing_composing_and_receipts_keeps_text_flowing(
    platform: nim.Platform, sipp: Sipp, sipp_servers: list[SippServer]
) -> None:
    peer = sipp.start(scenario("uas_refuses_composing_imdn.xml"), local_port=free_port(), calls=1, timeout_s=30)
    sipp_servers.append(peer)
    dave = listening(platform, "dave")
    received = dave.events(nim.MessageReceived)
    session = dave.sessions.create(f"sip:sipp@{HOST}:{peer.port}").result(10)
    first = received.get(10)  # SIPp's text, asking for receipts
    assert first.text == "please confirm\n" and session.messages[0].requested == {"positive-delivery", "display"}

    session.start_composing().result(5)  # after our delivery receipt: both get 415
    assert session.unsupported_by_peer == {"message/imdn+xml", "application/im-iscomposing+xml"}
    for text in ("reply one", "reply two"):  # text keeps flowing
        assert session.send(text).result(10).status == 200
    session.stop_composing().result(5)
    session.start_composing().result(5)  # no more composing to this peer ...
    assert session.mark_read().result(5) == 1  # ... and no display receipt: marked locally only
    assert session.messages[0].state == "displayed"
    assert session.state is nim.SessionState.CONNECTED
    session.terminate().result(10)

    assert peer.wait() == 0, f"SIPp failed:\n{peer.describe()}"
    assert sent_with(platform, dave.uri, "application/im-iscomposing+xml") == 1
    assert sent_with(platform, dave.uri, "message/cpim") == 1  # the one delivery receipt it refused
    assert [m.state for m in session.messages if m.direction == "out"] == ["sent", "sent"]
    log = peer.messages()
    assert log.count("SIP/2.0 415 Unsupported Media Type") == 2 and "reply two" in log


def test_peer_without_receipts_stays_sent(platform: nim.Platform, sipp: Sipp, sipp_servers: list[SippServer]) -> None:
    session_peer = sipp.start("uas_im_session.xml", local_port=free_port(), calls=1)
    pager_peer = sipp.start("uas_pager.xml", local_port=free_port(), calls=2)
    sipp_servers.extend([session_peer, pager_peer])
    dave = listening(platform, "dave")
    trouble = dave.events(nim.MessageFailed, nim.MessageDeliveryNotified, nim.MessageDisplayed, nim.SessionTerminated)
    session = dave.sessions.create(f"sip:sipp@{HOST}:{session_peer.port}").result(10)
    results = [session.send(t).result(10) for t in ("one", "two", "three")]
    pager = [dave.send_message(f"sip:sipp@{HOST}:{pager_peer.port}", t).result(10) for t in ("p1", "p2")]
    time.sleep(1.0)  # receipts would have come by now
    assert [r.state for r in results + pager] == ["sent"] * 5
    assert [m.state for m in session.messages] == ["sent"] * 3 and session.state is nim.SessionState.CONNECTED
    assert trouble.drain() == []  # nothing failed, nothing was notified
    session.terminate().result(10)
    assert session_peer.wait() == 0 and pager_peer.wait() == 0, session_peer.describe() + pager_peer.describe()
    assert session_peer.messages().count("Disposition-Notification: positive-delivery, display") == 3


def test_cpim_text_asking_for_receipts_gets_both(
    platform: nim.Platform, sipp: Sipp, sipp_servers: list[SippServer]
) -> None:
    notified = sipp.start(scenario("uas_receipts.xml"), local_port=free_port(), calls=2, timeout_s=20)
    sipp_servers.append(notified)
    bob = listening(platform, "bob")
    received = bob.events(nim.MessageReceived)
    host, port = bob.local_address
    sent = sipp.run(
        scenario("uac_cpim_text.xml"),
        remote=f"{host}:{port}",
        service="bob",
        local_port=free_port(),
        calls=1,
        timeout_s=20,
        extra=["-set", "notify_port", str(notified.port)],
    )
    assert sent.returncode == 0, f"SIPp's CPIM MESSAGE was not accepted:\n{sent}"
    msg = received.get(10)
    assert (msg.text, msg.mode, msg.content_type) == ("hello in CPIM\n", "pager", "text/plain")
    assert msg.message_id == "sipp-cpim-1"  # the CPIM imdn.Message-ID names it
    assert bob.mark_read([msg.message_id]).result(5) == 1  # the display receipt
    assert notified.wait() == 0, f"SIPp did not get both receipts:\n{notified.describe()}"
    log = notified.messages()
    assert "<delivered/>" in log and "<displayed/>" in log
    assert len(receipts_sent(platform, bob.uri)) == 2
