"""LOW. StatelessRelay.plan is meant to decline what it cannot relay, but an in-dialog request whose Route names
a registered Contact with an unresolved host name makes target_of() raise UnresolvedHost out of plan(): the
stack drops the datagram with a logged traceback and the sender gets no answer (and retransmits, a traceback
each time). The stateful path answers 500."""

from __future__ import annotations

import pytest

import notebook_im as nim
from tests.security.raw import RawPeer

pytestmark = pytest.mark.timeout(60)
FAST = nim.Timers(t1=0.05, t2=0.4, t4=0.5)


def test_an_in_dialog_request_to_an_unresolved_contact_is_answered():
    with nim.Server(timers=FAST) as server, RawPeer() as eve, RawPeer() as alice:
        addr = (server.host, server.port)
        assert eve.register(addr, "eve", contact="sip:eve@eve-host.invalid:5070").startswith(b"SIP/2.0 200")
        data, _ = alice.request(
            "MESSAGE",
            "sip:eve@eve-host.invalid:5070",
            from_="sip:alice@example.test",
            to="sip:eve@example.test",
            to_tag="dlg",
            extra=["Route: <sip:eve-host.invalid:5070;lr>"],
            body=b"x",
            content_type="text/plain",
        )
        assert alice.exchange(data, addr, 1.0) is not None, "no answer at all (stateless=False answers 500)"
