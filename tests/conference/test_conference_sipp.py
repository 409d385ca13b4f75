"""A SIPp participant in a notebook_im conference: it joins by INVITE to the conference URI, sends a
MESSAGE (relayed to every notebook_im participant with SIPp as the sender) and gets one relayed to it.
SIPp runs bounded (-m 1, -timeout), -nostdin, on explicit 127.0.0.1 ports (support/programs.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import notebook_im as nim
from support.programs import HOST, Sipp, free_port, require
from tests.helpers import wait_for

SCENARIO = str(Path(__file__).resolve().parent / "uac_conference.xml")

pytestmark = pytest.mark.timeout(120)


def test_sipp_joins_a_conference_and_sends_message(people, server, tmp_path: Path) -> None:
    alice, bob = people(2)
    conf = alice.sessions.create_conference([bob.uri]).result(20)
    wait_for(lambda: bob.accepted and bob.accepted[0].state is nim.SessionState.CONNECTED, 5, "bob joined")
    bob_conf = bob.accepted[0]
    added, removed = [], []
    conf.on(nim.ParticipantAdded, lambda e: added.append(e.participant.uri))
    conf.on(nim.ParticipantRemoved, lambda e: removed.append(e.participant.uri))
    sipp = Sipp(tmp_path, require("sipp"))
    local_port = free_port()
    sipp_uri = f"sip:sipp@{HOST}:{local_port}"
    service = conf.conference_uri.split(":", 1)[1].split("@", 1)[0]  # conf-<id>
    results = []
    runner = threading.Thread(
        target=lambda: results.append(
            sipp.run(
                SCENARIO,
                remote=f"{server.host}:{server.port}",
                service=service,
                local_port=local_port,
                calls=1,
                timeout_s=40,
            )
        ),
        daemon=True,
    )
    runner.start()
    for e in (alice, bob):
        wait_for(
            lambda e=e: any(m.text.strip() == "hello from SIPp" for m in e.received), 20, f"{e.uri} got SIPp's hello"
        )
        m = [m for m in e.received if m.text.strip() == "hello from SIPp"][0]
        assert m.participant.uri == sipp_uri and m.participant.name == "SIPp" and m.session.is_conference
    assert sipp_uri in added and sipp_uri in {p.uri for p in bob_conf.participants}
    conf.send("hello SIPp").result(5)
    runner.join(80)
    assert results, "SIPp did not finish"
    result = results[0]
    assert result.returncode == 0, f"SIPp failed:\n{result}"
    wait_for(lambda: removed == [sipp_uri], 10, "SIPp's BYE seen in the roster")
    assert [m.text for m in bob.received if m.participant.uri == alice.uri] == ["hello SIPp"]
    msg_log = (tmp_path / next(p.name for p in tmp_path.iterdir() if p.name.endswith("_messages.log"))).read_text()
    assert (
        "hello SIPp" in msg_log and "Content-Type: message/cpim" not in msg_log
    )  # SIPp did not list message/cpim: bare text
    assert [m.text.strip() for m in alice.received if m.participant.uri == sipp_uri] == ["hello from SIPp"]
