import pytest

from notebook_im.sip import Address, RemoteProtocolError, SipUri, Via
from notebook_im.sip.uri import split_header_values


def test_uri_parts_and_str():
    u = SipUri.parse("sips:alice@[2001:db8::1]:5061;transport=tls;maddr=x?subject=hi")
    assert (u.scheme, u.user, u.host, u.port) == ("sips", "alice", "[2001:db8::1]", 5061)
    assert u.transport == "tls" and u.params["maddr"] == "x" and u.headers == "subject=hi"
    assert str(u) == "sips:alice@[2001:db8::1]:5061;transport=tls;maddr=x?subject=hi"
    assert SipUri.parse("sip:example.test").user is None
    assert SipUri.parse("sip:bob@example.test").aor == "sip:bob@example.test"


def test_uri_equality_ignores_case_of_host():
    assert SipUri.parse("sip:bob@EXAMPLE.test") == SipUri.parse("sip:bob@example.test")


@pytest.mark.parametrize(
    "text", ["http://x", "sip:", "sip:@host", "sip:bob@host:99999", "sip:bob@[::1", "sip:bob@host:abc"]
)
def test_bad_uris(text):
    with pytest.raises(RemoteProtocolError):
        SipUri.parse(text)


def test_address_forms():
    a = Address.parse('"Bob \\"B\\" Smith" <sip:bob@example.test;transport=tcp>;tag=99;expires=60')
    assert a.display_name == 'Bob "B" Smith'
    assert a.uri.transport == "tcp" and a.tag == "99" and a.params["expires"] == "60"
    b = Address.parse("sip:bob@example.test;tag=1")  # addr-spec: the tag belongs to the header
    assert b.tag == "1" and "tag" not in b.uri.params
    assert Address.parse("<sip:x@y>").display_name is None
    assert Address.parse("*").wildcard
    assert str(Address.parse('"A" <sip:a@b>').with_tag("t")) == '"A" <sip:a@b>;tag=t'


def test_split_values_respects_quotes_and_brackets():
    assert split_header_values('"a, b" <sip:a@b>, <sip:c@d;x=1,2>') == ['"a, b" <sip:a@b>', "<sip:c@d;x=1,2>"]


def test_via_response_address_uses_received_and_rport():
    v = Via.parse("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1;received=192.0.2.1;rport=40000")
    assert v.response_address() == ("192.0.2.1", 40000)
    v2 = Via.parse("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1")
    assert v2.response_address() == ("10.0.0.1", 5060)
    v3 = Via.parse("SIP / 2.0 / UDP host.example:5062;branch=z9hG4bK1")
    assert v3.transport == "UDP" and v3.port == 5062
