import pytest

from notebook_im.sip import LocalProtocolError, RemoteProtocolError, digest, sdp
from notebook_im.sip.dialog import Dialog
from notebook_im.sip.message import make_response
from notebook_im.sip.parser import parse_message

INVITE = (
    b"INVITE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
    b"Record-Route: <sip:p2.example.test;lr>, <sip:p1.example.test;lr>\r\n"
    b'From: "Alice" <sip:alice@example.test>;tag=a\r\nTo: <sip:bob@example.test>\r\nCall-ID: c1\r\n'
    b"CSeq: 5 INVITE\r\nContact: <sip:alice@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n"
)


def test_uas_and_uac_dialogs_mirror_each_other():
    inv = parse_message(INVITE)
    uas = Dialog.from_uas(inv, "b")
    assert uas.id == ("c1", "b", "a")
    assert [r.uri.host for r in uas.route_set] == ["p2.example.test", "p1.example.test"]
    ok = make_response(inv, 200, to_tag="b")
    ok.headers.set("Contact", "<sip:bob@127.0.0.1:5080>")
    uac = Dialog.from_uac(inv, ok)
    assert uac.id == ("c1", "a", "b")
    assert [r.uri.host for r in uac.route_set] == ["p1.example.test", "p2.example.test"]  # reversed for the UAC
    msg = uac.create_request("MESSAGE", via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK2")
    assert str(msg.uri) == "sip:bob@127.0.0.1:5080"
    assert [r.uri.host for r in msg.routes] == ["p1.example.test", "p2.example.test"]
    assert msg.cseq.number == 6 and msg.from_.tag == "a" and msg.to.tag == "b"
    assert uas.accept_remote_cseq(msg)
    assert not uas.accept_remote_cseq(msg), "a repeated CSeq is out of order (500)"


def test_strict_route_fallback():
    inv = parse_message(
        INVITE.replace(b"<sip:p2.example.test;lr>, ", b"").replace(b"p1.example.test;lr", b"strict.example.test")
    )
    ok = make_response(inv, 200, to_tag="b")
    ok.headers.set("Contact", "<sip:bob@127.0.0.1:5080>")
    d = Dialog.from_uac(inv, ok)
    req = d.create_request("BYE", via="SIP/2.0/UDP h;branch=z9hG4bK3")
    assert req.uri.host == "strict.example.test"
    assert str(req.routes[-1].uri) == "sip:bob@127.0.0.1:5080"


def test_dialog_needs_tag_and_contact():
    inv = parse_message(INVITE)
    with pytest.raises(LocalProtocolError):
        Dialog.from_uac(inv, make_response(inv, 200))


def test_digest_rfc2617_vector_md5():
    # RFC 2617 §3.5 example (HTTP, same algorithm)
    r = digest.compute_response(
        algorithm="MD5",
        username="Mufasa",
        realm="testrealm@host.com",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert r == "6629fae49393a05397450978507c4ef1"


def test_digest_rfc7616_vector_sha256():
    r = digest.compute_response(
        algorithm="SHA-256",
        username="Mufasa",
        realm="http-auth@example.org",
        password="Circle of Life",
        method="GET",
        uri="/dir/index.html",
        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        qop="auth",
        nc="00000001",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    assert r == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def test_digest_round_trip_counts_nonces_and_hides_password():
    ch = digest.Challenge.parse(
        'Digest realm="example.test", nonce="n1", qop="auth,auth-int", algorithm=SHA-256, opaque="o"'
    )
    creds = digest.DigestCredentials("alice", "s3cret")
    a1 = creds.authorize(ch, "REGISTER", "sip:example.test")
    a2 = creds.authorize(ch, "REGISTER", "sip:example.test")
    assert "nc=00000001" in a1 and "nc=00000002" in a2 and 'opaque="o"' in a1
    assert digest.verify(a1, method="REGISTER", password="s3cret")
    assert not digest.verify(a1, method="REGISTER", password="wrong")
    assert "s3cret" not in repr(creds) and "s3cret" not in a1
    with pytest.raises(RemoteProtocolError):
        digest.Challenge.parse('Basic realm="x"')


def test_sdp_message_media():
    body = sdp.build("127.0.0.1", 5070)
    assert b"m=message 5070 sip null" in body
    media = sdp.parse_message_media(body)
    assert media.port == 5070 and "text/plain" in media.accept_types
    lync = b"v=0\r\no=- 0 0 IN IP4 10.0.0.1\r\ns=session\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=message 5060 sip null\r\na=accept-types:text/plain text/html\r\n"
    assert sdp.parse_message_media(lync).accept_types == ("text/plain", "text/html")
    with pytest.raises(RemoteProtocolError) as info:
        sdp.parse_message_media(b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n")
    assert info.value.status_code == 488
