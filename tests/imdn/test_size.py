"""Message size: RFC 3261 §18.1.1 (a request over 1300 bytes goes over TCP, not UDP) and a server's 413.

embedded server (UDP + TCP)       a large MESSAGE from a UDP endpoint goes over TCP and arrives whole
SIPp UAS on UDP only              TCP is refused: MessageTooLarge says so (size, limit, why); the session lives on
SIPp UAS answering 413 (TCP)      MessageFailed says the server refuses messages this large
"""

from __future__ import annotations

import pytest

import notebook_im as nim
from notebook_im.core.agent import UDP_MAX_REQUEST
from notebook_im.runtime import runtime
from notebook_im.sip.uri import SipUri
from support.programs import HOST, Sipp, SippServer, free_port

from .conftest import Pair, scenario

pytestmark = pytest.mark.timeout(90)

BIG = "A long paragraph. " * 100  # 1,800 bytes of text: with the headers well over 1300
SMALL = "short"


def message_rows(platform: nim.Platform, owner: str, text: str):
    sip = platform.trace.sip(owner=owner)
    return sip[(sip["method"] == "MESSAGE") & sip["status"].isna() & sip["raw"].str.contains(text[:40], regex=False)]


def test_large_session_message_goes_over_tcp(pair: Pair, platform: nim.Platform) -> None:
    got = pair.bob.events(nim.MessageReceived)
    assert pair.session.send(SMALL).result(10).status == 200
    assert pair.session.send(BIG).result(10).status == 200
    texts = [got.get(5).text, got.get(5).text]
    assert texts == [SMALL, BIG]  # whole, in order
    small, big = (message_rows(platform, pair.alice.uri, t) for t in (SMALL, BIG))
    assert small["transport"].astype(str).tolist() == ["udp"]  # alice's default transport
    assert big["transport"].astype(str).tolist() == ["tcp"] and big["direction"].astype(str).tolist() == ["out"]
    raw = big["raw"].iloc[0]
    assert len(raw.encode()) > UDP_MAX_REQUEST and "Via: SIP/2.0/TCP " in raw  # the Via names the transport used
    pager = pair.alice.send_message("sip:bob@example.test", "PAGER " + BIG).result(10)
    assert pager.status == 200 and got.get(5).text == "PAGER " + BIG
    assert message_rows(platform, pair.alice.uri, "PAGER " + BIG)["transport"].astype(str).tolist() == ["tcp"]


@pytest.mark.interop
def test_large_message_to_a_udp_only_peer_fails_clearly(
    platform: nim.Platform, sipp: Sipp, sipp_servers: list[SippServer]
) -> None:
    peer = sipp.start("uas_im_session.xml", local_port=free_port(), calls=1)  # SIPp on UDP only
    sipp_servers.append(peer)
    dave = platform.endpoint(f"sip:dave@{HOST}", server=None).result(10)
    failed = dave.events(nim.MessageFailed)
    session = dave.sessions.create(f"sip:sipp@{HOST}:{peer.port}").result(10)
    with pytest.raises(nim.RequestFailed) as info:
        session.send(BIG).result(10)
    text = str(info.value)
    assert "too large for UDP" in text and f"TCP to 127.0.0.1:{peer.port} was unavailable" in text, text
    event = failed.get(5)
    assert event.status == 513 and "too large for UDP" in event.reason and "RFC 3261 §18.1.1" in event.reason
    assert session.messages[-1].state == "failed"
    # not the peer's fault: it is still connected and takes what fits in UDP
    assert session.state is nim.SessionState.CONNECTED and session.remote.state is nim.ParticipantState.CONNECTED
    assert session.send(SMALL).result(10).status == 200
    session.terminate().result(10)
    assert peer.wait() == 0, peer.describe()
    assert BIG[:40] not in peer.messages()

    # the user agent itself raises MessageTooLarge (a NotebookImError and a ValueError, not a transport failure)
    async def direct() -> None:
        await dave.agent.send_message(SipUri.parse(f"sip:sipp@{HOST}:{peer.port}"), BIG.encode(), "text/plain")

    with pytest.raises(nim.MessageTooLarge) as raw:
        runtime().submit(direct(), "direct").result(10)
    assert isinstance(raw.value, nim.NotebookImError) and not isinstance(raw.value, nim.TransportError)
    assert raw.value.status == 513 and "too large for UDP" in str(raw.value)


@pytest.mark.interop
def test_413_says_the_server_refuses_messages_this_large(
    platform: nim.Platform, sipp: Sipp, sipp_servers: list[SippServer]
) -> None:
    server = sipp.start(scenario("uas_413.xml"), local_port=free_port(), calls=1, transport="tcp")
    sipp_servers.append(server)
    dave = platform.endpoint(f"sip:dave@{HOST}", server=None, transport="tcp").result(10)
    failed = dave.events(nim.MessageFailed)
    with pytest.raises(nim.RequestFailed) as info:
        dave.send_message(f"sip:sipp@{HOST}:{server.port};transport=tcp", "x" * 5000).result(10)
    assert info.value.status == 413
    event = failed.get(5)
    assert event.status == 413 and event.state == "failed"
    assert event.reason.startswith("Request Entity Too Large: the server refuses messages this large")
    assert "5,000 bytes" in event.reason and "5,000 bytes" in str(info.value)
    assert server.wait() == 0, server.describe()
