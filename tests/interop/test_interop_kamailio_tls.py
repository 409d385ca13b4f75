"""notebook_im endpoints reach Kamailio's tls module on loopback: REGISTER and chat over TLS, the
certificate verified against a CA made on the fly (trustme)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
import trustme

import notebook_im as nim
from support.programs import Kamailio, free_port, start_kamailio, tcp_listening
from tests.helpers import accept_all, wait_for

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def kamailio_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kamailio, int, str]]:
    workdir = tmp_path_factory.mktemp("kamailio-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(workdir / "server.pem"))
    tls_cfg = workdir / "tls.cfg"
    tls_cfg.write_text(
        "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n"
        f"certificate = {workdir / 'server.pem'}\nprivate_key = {workdir / 'server.pem'}\n\n"
        "[client:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n"
    )
    port = free_port()
    tls_port = free_port()
    while tls_port == port:
        tls_port = free_port()
    k = start_kamailio(workdir, port, defines=["WITH_TLS", f"SIP_TLS_PORT={tls_port}", f'TLS_CFG="{tls_cfg}"'])
    try:
        wait_for(lambda: tcp_listening(tls_port), 10, "kamailio TLS listener")
        yield k, tls_port, str(workdir / "ca.pem")
    finally:
        code = k.process.stop(grace=20)  # a loaded 2-core machine can take a while to stop all workers
        assert code in (0, -signal.SIGTERM), k.describe()


def test_chat_over_tls_through_kamailio(kamailio_tls, platform: nim.Platform) -> None:
    k, tls_port, ca_file = kamailio_tls
    server = f"sips:127.0.0.1:{tls_port}"
    alice = platform.endpoint("sip:alice@example.test", server=server, ca_file=ca_file).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server, ca_file=ca_file).result(10)
    sessions = accept_all(bob)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    assert session.send("TLS via Kamailio").result(10).status == 200
    wait_for(lambda: sessions and sessions[0].messages, 5, "bob's message")
    assert sessions[0].messages[0].text == "TLS via Kamailio"
    assert sessions[0].send("and back").result(10).status == 200
    assert alice.send_message("sip:bob@example.test", "pager over TLS").result(10).status == 200
    session.terminate().result(10)
    assert {r.transport for r in platform.trace.sip_records()} == {"tls"}


def test_kamailio_certificate_is_verified(kamailio_tls, platform: nim.Platform) -> None:
    _k, tls_port, _ca = kamailio_tls
    with pytest.raises(nim.TransportError, match="certificate verification failed"):
        platform.endpoint("sip:alice@example.test", server=f"sips:127.0.0.1:{tls_port}").result(10)
