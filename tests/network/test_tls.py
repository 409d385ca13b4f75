"""TLS between endpoints and the embedded server, with certificates made on the fly by trustme."""

from __future__ import annotations

import pytest
import trustme

import notebook_im as nim
from tests.helpers import accept_all


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("pki")
    ca_file, cert_file, key_file = d / "ca.pem", d / "server.pem", d / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return {"ca": str(ca_file), "cert": str(cert_file), "key": str(key_file)}


@pytest.fixture
def tls_server(pki):
    srv = nim.Server(tls=(pki["cert"], pki["key"])).start().result(10)
    yield srv
    srv.stop()


def test_chat_over_tls_with_verified_certificate(tls_server, platform, pki):
    assert tls_server.tls_uri.startswith("sips:127.0.0.1:")
    alice = platform.endpoint("sip:alice@example.test", server=tls_server.tls_uri, ca_file=pki["ca"]).result(10)
    assert alice.transport == "tls"
    bob = platform.endpoint("sip:bob@example.test", server=tls_server, transport="tls", ca_file=pki["ca"]).result(10)
    sessions = accept_all(bob)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    assert session.send("over TLS").result(5).status == 200
    assert sessions[0].send("back over TLS").result(5).status == 200
    assert alice.send_message("sip:bob@example.test", "pager over TLS").result(5).status == 200
    session.terminate().result(5)
    records = platform.trace.sip_records()
    assert {r.transport for r in records} == {"tls"}
    assert all(b"SIP/2.0/TLS" in r.raw for r in records if r.direction == "out" and not r.raw.startswith(b"SIP/2.0"))


def test_tls_to_udp_user_is_double_record_routed(tls_server, platform, pki):
    alice = platform.endpoint("sip:alice@example.test", server=tls_server.tls_uri, ca_file=pki["ca"]).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=tls_server).result(10)
    sessions = accept_all(bob)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    assert sessions[0].send("udp to tls").result(5).status == 200
    session.terminate().result(5)
    invite = next(r.raw for r in platform.trace.sip_records() if r.owner == bob.uri and r.raw.startswith(b"INVITE"))
    assert b"transport=tls;lr" in invite and b"transport=udp;lr" in invite


def test_unverified_certificate_is_refused_with_a_clear_error(tls_server, platform):
    with pytest.raises(nim.TransportError) as info:
        platform.endpoint("sip:alice@example.test", server=tls_server.tls_uri).result(10)
    message = str(info.value)
    assert info.value.status == 503
    assert "certificate verification failed" in message and "ca_file" in message


def test_verify_false_for_labs(tls_server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=tls_server.tls_uri, verify=False).result(10)
    assert alice.state is nim.EndpointState.ENABLED


def test_tls_arguments_are_checked(platform):
    with pytest.raises(FileNotFoundError, match="ca_file"):
        platform.endpoint("sip:alice@example.test", server="sips:127.0.0.1:5061", ca_file="/nonexistent.pem")
    with nim.Server() as plain:
        with pytest.raises(ValueError, match="TLS listener"):
            platform.endpoint("sip:alice@example.test", server=plain, transport="tls")
