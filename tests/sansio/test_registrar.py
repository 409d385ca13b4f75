from notebook_im.server.registrar import Registrar
from notebook_im.sip.parser import parse_message


def register(contact="<sip:alice@127.0.0.1:5070>", expires="60", cseq=1, call_id="r1", extra=""):
    exp = f"Expires: {expires}\r\n" if expires is not None else ""
    return parse_message(
        f"REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{cseq}\r\n"
        f"From: <sip:alice@example.test>;tag=a\r\nTo: <sip:alice@example.test>\r\nCall-ID: {call_id}\r\n"
        f"CSeq: {cseq} REGISTER\r\nContact: {contact}\r\n{exp}{extra}Content-Length: 0\r\n\r\n".encode()
    )


def test_bind_expire_and_known():
    r = Registrar()
    status, bindings, _ = r.register(register(), "udp", ("127.0.0.1", 5070), now=0.0)
    assert status == 200 and [str(b.contact) for b in bindings] == ["sip:alice@127.0.0.1:5070"]
    assert bindings[0].remaining(0.0) == 60
    assert r.lookup("sip:alice@example.test", 59.0)
    assert r.lookup("sip:alice@example.test", 61.0) == []
    assert "sip:alice@example.test" in r.known, "an expired user is known (480), not unknown (404)"


def test_unregister_and_wildcard():
    r = Registrar()
    r.register(register(), "udp", ("127.0.0.1", 5070), 0.0)
    status, bindings, _ = r.register(register(expires="0", cseq=2), "udp", ("127.0.0.1", 5070), 1.0)
    assert status == 200 and bindings == []
    r.register(register(cseq=3), "udp", ("127.0.0.1", 5070), 2.0)
    status, bindings, _ = r.register(register(contact="*", expires="0", cseq=4), "udp", ("127.0.0.1", 5070), 3.0)
    assert status == 200 and r.lookup("sip:alice@example.test", 3.0) == []
    status, _, _ = r.register(register(contact="*", expires="60", cseq=5), "udp", ("127.0.0.1", 5070), 3.0)
    assert status == 400


def test_interval_too_brief_and_out_of_order():
    r = Registrar(min_expires=30)
    status, _, min_expires = r.register(register(expires="5"), "udp", ("127.0.0.1", 5070), 0.0)
    assert status == 423 and min_expires == "30"
    r.register(register(cseq=5), "udp", ("127.0.0.1", 5070), 0.0)
    r.register(register(expires="0", cseq=4), "udp", ("127.0.0.1", 5070), 1.0)  # older CSeq: ignored
    assert r.lookup("sip:alice@example.test", 1.0)


def test_find_contact_by_contact_or_source():
    r = Registrar()
    r.register(register(contact="<sip:alice@127.0.0.1:5070;transport=tcp>"), "tcp", ("127.0.0.1", 40001), 0.0)
    assert r.find_contact("127.0.0.1", 5070, 1.0) is not None
    assert r.find_contact("127.0.0.1", 40001, 1.0) is not None
    assert r.find_contact("127.0.0.1", 5999, 1.0) is None
