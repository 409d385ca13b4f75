"""The OCS/Lync wire shapes read on receipt (`im/ocs.py`), without sockets: KeyboardActivity INFO bodies as SIPE
writes them, the first message in an INVITE's `ms-text-format` header, `Ms-Conversation-ID`; and what each
refuses, with a reason."""

from __future__ import annotations

import base64

import pytest

from notebook_im.im import iscomposing as ic
from notebook_im.im import ocs
from notebook_im.sip import sdp
from notebook_im.sip.actions import StartTimer, StopTimer
from notebook_im.sip.errors import RemoteProtocolError

# byte for byte what SIPE sends (src/core/sipe-user.c, sipe_core_user_feedback_typing)
SIPE_TYPE = b'<?xml version="1.0"?><KeyboardActivity> <status status="type" /></KeyboardActivity>'
SIPE_IDLE = b'<?xml version="1.0"?><KeyboardActivity> <status status="idle" /></KeyboardActivity>'


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


# -- KeyboardActivity ---------------------------------------------------------------------------------------------
def test_sipe_type_is_active_with_the_keyboard_window_and_idle_is_idle():
    active = ocs.parse_keyboard_activity(SIPE_TYPE)
    assert active == ic.Indication(ic.ComposingState.ACTIVE, refresh=ocs.KEYBOARD_ACTIVITY_WINDOW)
    assert ocs.parse_keyboard_activity(SIPE_IDLE) == ic.Indication(ic.ComposingState.IDLE)


def test_keyboard_activity_drives_the_rfc3994_receiver_with_a_6_second_window():
    receiver = ic.ComposingReceiver()
    actions = receiver.indication(ocs.parse_keyboard_activity(SIPE_TYPE), now=0.0)
    assert ic.Changed(True) in actions and StartTimer("expire", 6.0) in actions
    # SIPE repeats "type" every 4 s while typing: each one re-arms the window, no second Changed
    assert receiver.indication(ocs.parse_keyboard_activity(SIPE_TYPE), now=4.0) == [StartTimer("expire", 6.0)]
    # no more keystrokes: the window lapses and the peer is shown idle
    assert receiver.timer("expire", now=10.0) == [ic.Changed(False), StopTimer("expire")]
    # type then idle: idle at once
    receiver.indication(ocs.parse_keyboard_activity(SIPE_TYPE), now=20.0)
    assert ic.Changed(False) in receiver.indication(ocs.parse_keyboard_activity(SIPE_IDLE), now=21.0)


@pytest.mark.parametrize(
    "body",
    [
        b'<KeyboardActivity><status status="TYPE"/></KeyboardActivity>',  # no declaration, upper case
        b'<k:KeyboardActivity xmlns:k="urn:x"><k:status status=" type "/></k:KeyboardActivity>',  # a namespace
        b'\xef\xbb\xbf<?xml version="1.0" encoding="UTF-8"?>\r\n<KeyboardActivity>\r\n <status status="type"/>\r\n'
        b"</KeyboardActivity>\r\n",
    ],
)
def test_keyboard_activity_variants_are_read(body):
    assert ocs.parse_keyboard_activity(body).state is ic.ComposingState.ACTIVE


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><action xmlns="http://schemas.microsoft.com/sip/multiparty/"><RequestRM/></action>',
        b'<KeyboardActivity><status status="paused"/></KeyboardActivity>',  # a status nobody defined
        b"<KeyboardActivity/>",  # no status at all
        b'<KeyboardActivity><state status="type"/></KeyboardActivity>',  # the wrong child
    ],
)
def test_other_xml_documents_mean_nothing(body):
    assert ocs.parse_keyboard_activity(body) is None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE k [<!ENTITY a "type">]><KeyboardActivity><status status="&a;"/>'
            b"</KeyboardActivity>",
            400,
        ),  # fmt: skip
        (b"<KeyboardActivity>" + b" " * 5000 + b"</KeyboardActivity>", 413),
        (b'<?xml version="1.0" encoding="utf-7"?><KeyboardActivity/>', 415),
        (b"<KeyboardActivity><status status='type'>", 400),  # not closed
        (b"\xff\xfe<\x00K\x00", 400),  # UTF-16 that is cut short
        (b"", 400),
    ],
)
def test_hostile_keyboard_activity_is_refused_with_a_status(body, status):
    with pytest.raises(RemoteProtocolError) as err:
        ocs.parse_keyboard_activity(body)
    assert err.value.status_code == status
    assert "KeyboardActivity" in err.value.reason or "XML" in err.value.reason


# -- the first message in the INVITE ---------------------------------------------------------------------------------
def test_sipe_first_message_is_decoded():
    # the value SIPE writes (src/core/sipe-im.c, sipe_invite), msgr (an encoded font) included
    value = (
        f"text/plain; charset=UTF-8;msgr=WAAtAE0ATQBTAC0ASQBNAC0ARgBvAHIAbQBhAHQAOgAgAEYATgA9AA;ms-body={b64('Hi ✓')}"
    )
    assert ocs.first_message(value) == ocs.FirstMessage("text/plain", "Hi ✓")
    assert ocs.first_message("text/html;ms-body=" + b64("<b>hi</b>")) == ocs.FirstMessage("text/html", "<b>hi</b>")
    assert ocs.first_message('TEXT/PLAIN; CHARSET="us-ascii"; MS-BODY=' + b64("hi")).text == "hi"


def test_no_header_or_no_body_is_no_message():
    assert ocs.first_message(None) is None
    assert ocs.first_message("text/plain; charset=UTF-8") is None


def test_the_largest_first_message_is_taken_and_one_byte_more_is_not():
    top = "x" * ocs.MAX_FIRST_MESSAGE
    assert ocs.first_message("text/plain;ms-body=" + b64(top)).text == top
    with pytest.raises(RemoteProtocolError, match="too large"):
        ocs.first_message("text/plain;ms-body=" + b64(top + "x"))  # same base64 length, one byte more
    with pytest.raises(RemoteProtocolError, match="too large: 8,000 base64 characters"):
        ocs.first_message("text/plain;ms-body=" + "A" * 8000)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("text/plain; charset=UTF-8;ms-body=SGk", "not valid base64"),  # padding missing
        ("text/plain; charset=UTF-8;ms-body=S$Gk=", "not valid base64"),
        ("text/plain; charset=UTF-8;ms-body=SGk=\u00e9", "not valid base64"),
        ("text/plain; charset=UTF-8;ms-body=", "empty"),
        ("text/plain; charset=ISO-8859-1;ms-body=" + base64.b64encode("é".encode("latin-1")).decode(), "charset"),
        ("text/plain; charset=UTF-8;ms-body=" + base64.b64encode(b"\xff\xfe").decode(), "not valid UTF-8: byte 0"),
        ("text/rtf; charset=UTF-8;ms-body=" + b64("{\\rtf1 hi}"), "only text/plain"),
        ("text/x-msmsgsinvite; charset=UTF-8;ms-body=" + b64("Invitation-Command: INVITE"), "only text/plain"),
    ],
)
def test_an_unreadable_first_message_is_refused_with_a_reason(value, reason):
    with pytest.raises(RemoteProtocolError, match=reason) as err:
        ocs.first_message(value)
    assert err.value.status_code == 400


# -- Ms-Conversation-ID ----------------------------------------------------------------------------------------------
def test_conversation_id_is_read_and_bounded():
    assert ocs.conversation_id(" 718273645 ") == "718273645"
    assert ocs.conversation_id(None) is None
    assert ocs.conversation_id("") is None
    assert ocs.conversation_id("x" * ocs.MAX_CONVERSATION_ID) == "x" * ocs.MAX_CONVERSATION_ID
    assert ocs.conversation_id("x" * (ocs.MAX_CONVERSATION_ID + 1)) is None


# -- OCS 2005's m=x-ms-message ---------------------------------------------------------------------------------------
def test_an_ocs_2005_offer_is_a_message_stream_and_is_answered_in_kind():
    # SIPE's offer for OCS 2005 (src/core/sipe-im.c, sipe_invite)
    offer = (
        b"v=0\r\no=- 0 0 IN IP4 10.0.0.5\r\ns=session\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
        b"m=x-ms-message 5061 sip null\r\na=accept-types:text/plain text/html image/gif\r\n"
    )
    media = sdp.parse_message_media(offer)
    assert (media.media, media.port, media.accept_types) == (
        "x-ms-message",
        5061,
        ("text/plain", "text/html", "image/gif"),
    )
    assert b"\r\nm=x-ms-message 5070 sip null\r\n" in sdp.build("127.0.0.1", 5070, media=media.media)
    assert sdp.parse_message_media(sdp.build("127.0.0.1", 5070)).media == "message"
    with pytest.raises(RemoteProtocolError) as err:
        sdp.parse_message_media(offer.replace(b"x-ms-message", b"x-ms-audio"))
    assert err.value.status_code == 488


# -- what notebook_im does not speak: OCS's NTLM / Kerberos -----------------------------------------------------------
@pytest.mark.parametrize(
    "challenge",
    [
        # as an OCS front end challenges (SIPE's src/core/sip-sec-ntlm-tests.c and sip-transport.c)
        'NTLM realm="SIP Communications Service", targetname="ocs1.ocs.example", version=3',
        'Kerberos realm="SIP Communications Service", targetname="sip/ocs1.ocs.example", version=3',
        'TLS-DSK realm="SIP Communications Service", targetname="ocs1.ocs.example", version=4, sts-uri="https://x"',
    ],
)
def test_an_ocs_servers_ntlm_or_kerberos_challenge_is_not_answered(challenge):
    """notebook_im answers digest only: a REGISTER challenged the OCS way is not retried (it fails with the 401),
    and no password-derived value goes out."""
    from notebook_im.core.auth import ClientAuth
    from notebook_im.sip.parser import parse_message

    raw = (
        "SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKx\r\n"
        "From: <sip:alice@ocs.example>;tag=1\r\nTo: <sip:alice@ocs.example>;tag=2\r\nCall-ID: c\r\n"
        f"CSeq: 1 REGISTER\r\nWWW-Authenticate: {challenge}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    auth = ClientAuth("alice", "secret")
    assert auth.challenge_to_answer(parse_message(raw), attempt=0) is None
    assert auth.challenges == {}
