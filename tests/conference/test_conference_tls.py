"""A conference whose participants all reach the server (and its focus) over TLS."""

from __future__ import annotations

import trustme

import notebook_im as nim
from tests.helpers import accept_all, wait_for


def test_three_participants_over_tls(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    server = nim.Server(tls=(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))).start().result(10)
    platform = nim.Platform("conference-tls")
    try:
        eps = [
            platform.endpoint(
                f"sip:{n}@example.test", server=server.tls_uri, ca_file=str(tmp_path / "ca.pem"), display_name=n.title()
            ).result(10)
            for n in ("alice", "bob", "carol")
        ]
        accepted = [accept_all(e) for e in eps[1:]]
        received = {e.uri: e.events(nim.MessageReceived) for e in eps}
        conf = eps[0].sessions.create_conference([e.uri for e in eps[1:]]).result(20)
        assert not conf.failed_invitations
        wait_for(lambda: all(a and a[0].state is nim.SessionState.CONNECTED for a in accepted), 10, "all joined")
        conf.send("over TLS to both").result(10)
        accepted[0][0].send("bob over TLS").result(10)
        got_carol = sorted(
            (received[eps[2].uri].get(timeout=5), received[eps[2].uri].get(timeout=5)), key=lambda e: e.text
        )
        assert [(e.participant.uri, e.text) for e in got_carol] == [
            (eps[1].uri, "bob over TLS"),
            (eps[0].uri, "over TLS to both"),
        ]
        assert {r.transport for r in platform.trace.sip_records()} == {"tls"}
        conf.terminate().result(10)
    finally:
        platform.shutdown()
        server.stop()
