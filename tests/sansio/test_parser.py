"""Parser and serializer: RFC 3261 syntax, RFC 4475 torture-style cases, framing and limits."""

import pytest

from notebook_im.sip import RemoteProtocolError, Request, Response, StreamFramer, parse_message
from notebook_im.sip.parser import MAX_HEADERS, MAX_MESSAGE

BASIC = (
    b"MESSAGE sip:bob@example.test SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKabc;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice" <sip:alice@example.test>;tag=a1\r\n'
    b"To: <sip:bob@example.test>\r\n"
    b"Call-ID: call-1@127.0.0.1\r\n"
    b"CSeq: 7 MESSAGE\r\n"
    b"Content-Type: text/plain;charset=UTF-8\r\n"
    b"Content-Length: 5\r\n\r\nhello"
)


def test_parse_basic_request():
    m = parse_message(BASIC)
    assert isinstance(m, Request)
    assert m.method == "MESSAGE"
    assert str(m.uri) == "sip:bob@example.test"
    assert m.from_.display_name == "Alice" and m.from_.tag == "a1"
    assert m.to.tag is None
    assert m.call_id == "call-1@127.0.0.1"
    assert (m.cseq.number, m.cseq.method) == (7, "MESSAGE")
    assert m.top_via.branch == "z9hG4bKabc" and "rport" in m.top_via.params
    assert m.content_type == "text/plain" and m.charset == "UTF-8"
    assert m.body == b"hello" and m.text() == "hello"
    assert m.max_forwards == 70


def test_round_trip_preserves_meaning():
    m = parse_message(BASIC)
    again = parse_message(bytes(m))
    assert bytes(again) == bytes(m)
    assert again.body == b"hello" and again.from_ == m.from_


def test_compact_forms_and_folding_and_multi_values():
    data = (
        b"INVITE sip:bob@example.test SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1, SIP/2.0/TCP [2001:db8::9]:5062;branch=z9hG4bK2\r\n"
        b"f: <sip:alice@example.test>;tag=x\r\n"
        b"t: sip:bob@example.test\r\n"
        b"i: cid\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"m: <sip:alice@10.0.0.1:5060>\r\n"
        b"Subject: a long\r\n   folded\r\n\tsubject\r\n"
        b"Route: <sip:p1.example.test;lr>,<sip:p2.example.test;lr>\r\n"
        b"Route: <sip:p3.example.test;lr>\r\n"
        b"l: 0\r\n\r\n"
    )
    m = parse_message(data)
    vias = m.vias
    assert [v.transport for v in vias] == ["UDP", "TCP"]
    assert vias[1].host == "[2001:db8::9]" and vias[1].port == 5062
    assert m.headers.get("Subject") == "a long folded subject"
    assert [r.uri.host for r in m.routes] == ["p1.example.test", "p2.example.test", "p3.example.test"]
    assert m.contacts[0].uri.port == 5060


def test_case_insensitive_names_and_whitespace():
    data = BASIC.replace(b"Call-ID: ", b"call-id   :   ").replace(b"CSeq:", b"cseq:")
    m = parse_message(data)
    assert m.call_id == "call-1@127.0.0.1"
    assert m.cseq.number == 7


def test_response_parse():
    data = (
        b"SIP/2.0 404 Not Found Here\r\nVia: SIP/2.0/UDP h:1;branch=z9hG4bKx\r\nFrom: <sip:a@h>;tag=1\r\n"
        b"To: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
    )
    m = parse_message(data)
    assert isinstance(m, Response)
    assert m.status == 404 and m.reason == "Not Found Here"


def test_leading_crlf_ignored_and_lf_only_tolerated():
    m = parse_message(b"\r\n\r\n" + BASIC.replace(b"\r\n", b"\n"))
    assert m.body == b"hello"


def test_datagram_extra_bytes_discarded():
    m = parse_message(BASIC + b"garbage")
    assert m.body == b"hello"


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d.replace(b"Content-Length: 5", b"Content-Length: 50"), "shorter"),
        (lambda d: d.replace(b"CSeq: 7 MESSAGE", b"CSeq: seven MESSAGE"), "CSeq"),
        (lambda d: d.replace(b"CSeq: 7 MESSAGE", b"CSeq: 7 INVITE"), "does not match"),
        (lambda d: d.replace(b"Call-ID: call-1@127.0.0.1\r\n", b""), "Call-ID"),
        (lambda d: d.replace(b"Max-Forwards: 70", b"Max-Forwards: many"), "Max-Forwards"),
        (lambda d: d.replace(b"Content-Length: 5", b"Content-Length: -5"), "Content-Length"),
        (lambda d: d.replace(b"To: <sip:bob@example.test>", b"To: <sip:bob@example.test"), "unterminated"),
        (lambda d: d.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards 70\r\n"), "malformed header"),
    ],
)
def test_answerable_errors_carry_the_request(mutate, fragment):
    with pytest.raises(RemoteProtocolError) as info:
        parse_message(mutate(BASIC))
    assert fragment in info.value.reason
    assert info.value.status_code == 400
    assert isinstance(info.value.message, Request), "a 400 can be sent for this request"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        b"\x00\x01\x02garbage",
        b"NOT A SIP MESSAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"MESSAGE sip:bob@example.test SIP/3.0\r\n\r\n",
        b"SIP/2.0 99 Too Low\r\n\r\n",
        b"SIP/2.0 abc OK\r\n\r\n",
        b"\xff\xfe\xfd MESSAGE\r\n\r\n",
        b"MESSAGE http://example.test/ SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
    ],
)
def test_garbage_raises_remote_protocol_error(data):
    with pytest.raises(RemoteProtocolError):
        parse_message(data)


def test_unsupported_scheme_is_416_and_answerable():
    data = BASIC.replace(b"MESSAGE sip:bob@example.test", b"MESSAGE tel:+15551234")
    with pytest.raises(RemoteProtocolError) as info:
        parse_message(data)
    assert info.value.status_code == 416


def test_size_limits():
    with pytest.raises(RemoteProtocolError) as info:
        parse_message(BASIC + b"x" * MAX_MESSAGE)
    assert info.value.status_code == 513
    many = BASIC.replace(
        b"Content-Type", b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"Content-Type"
    )
    with pytest.raises(RemoteProtocolError, match="header fields"):
        parse_message(many)


def test_escaped_user_and_params_in_uri():
    data = BASIC.replace(b"MESSAGE sip:bob@example.test", b"MESSAGE sip:b%6Fb%20x@EXAMPLE.test:5070;transport=TCP;lr")
    m = parse_message(data)
    assert m.uri.user == "bob x"
    assert m.uri.host == "example.test" and m.uri.port == 5070
    assert m.uri.transport == "tcp" and "lr" in m.uri.params
    assert "b%6F" not in str(m.uri) and "bob%20x@" in str(m.uri)


def test_stream_framer_splits_and_joins():
    framer = StreamFramer()
    two = BASIC + b"\r\n\r\n" + BASIC.replace(b"hello", b"world")
    out = []
    for i in range(0, len(two), 7):  # one message across many segments
        out += framer.feed(two[i : i + 7])
    assert [parse_message(m, stream=True).body for m in out] == [b"hello", b"world"]
    assert framer.buffered == 0
    whole = StreamFramer()
    assert len(whole.feed(two)) == 2 and whole.keepalives == 1


def test_stream_framer_needs_content_length():
    framer = StreamFramer()
    bare = BASIC.replace(b"Content-Length: 5\r\n", b"")
    head = bare.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert framer.feed(bare) == [head], "framed without a body, to be answered"
    with pytest.raises(RemoteProtocolError, match="mandatory"):
        parse_message(head, stream=True)


def test_stream_framer_bounds_header_section():
    framer = StreamFramer()
    with pytest.raises(RemoteProtocolError):
        for _ in range(100):
            framer.feed(b"X" * 1000)


def test_serialize_sets_content_length():
    r = Request("MESSAGE", "sip:bob@example.test")
    r.headers.add("Content-Length", "999")
    r.body = "héllo".encode()
    data = bytes(r)
    assert b"Content-Length: 6\r\n\r\n" in data
    assert data.count(b"Content-Length") == 1
