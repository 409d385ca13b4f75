"""Forking with a real, foreign device: SIPp registers as bob's second device (uac_second_device.xml; what the
server forks to it is answered by the out-of-call scenario ooc_second_device.xml), next to a notebook_im bob.
A pager message reaches both; an INVITE rings both, SIPp answers after bob#1 has rung, so bob#1 is CANCELled
and ends "answered elsewhere", and the chat goes to SIPp only. SIPp runs bounded (-m 1, -timeout, -d),
-nostdin, on explicit 127.0.0.1 ports (support/programs.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import notebook_im as nim
from support.programs import HOST, Sipp, free_port, require
from tests.helpers import wait_for

HERE = Path(__file__).resolve().parent / "sipp"
BOB = "sip:bob@example.test"

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]


def test_sipp_as_bobs_second_device_wins_the_call(server, platform, tmp_path: Path) -> None:
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    laptop = nim.Platform("bob-laptop")
    try:
        bob1 = laptop.endpoint(BOB, server=server).result(10)
        calls: list[nim.IncomingSession] = []
        bob1.sessions.on_incoming(calls.append)
        ended = bob1.events(nim.SessionTerminated)
        pager = bob1.events(nim.MessageReceived)

        sipp = Sipp(tmp_path, require("sipp"))
        port = free_port()
        results = []
        runner = threading.Thread(
            target=lambda: results.append(
                sipp.run(
                    str(HERE / "uac_second_device.xml"),
                    remote=f"{server.host}:{server.port}",
                    local_port=port,
                    calls=1,
                    timeout_s=30,
                    extra=["-oocsf", HERE / "ooc_second_device.xml", "-d", "4000"],
                )
            ),
            daemon=True,
        )
        runner.start()
        wait_for(lambda: len(server.registrations.get(BOB, [])) == 2, 10, "SIPp registered as bob's second device")
        assert any(c.startswith(f"sip:bob@{HOST}:{port}") for c in server.registrations[BOB])

        assert alice.send_message(BOB, "pager to both").result(10).status == 200
        assert pager.get(timeout=5).text == "pager to both"

        session = alice.sessions.create(BOB).result(10)  # SIPp answers 500 ms after it rang
        assert session.state is nim.SessionState.CONNECTED
        assert calls, "bob#1 rang before SIPp answered"
        lost = ended.get(timeout=5)
        assert lost.answered_elsewhere and lost.reason == "answered elsewhere" and lost.status == 487
        assert session.send("hello SIPp").result(5).status == 200
        session.terminate().result(5)

        runner.join(60)
        assert results, "SIPp did not finish"
        result = results[0]
        assert result.returncode == 0, f"SIPp failed:\n{result}"
        log = next(p for p in tmp_path.iterdir() if p.name.endswith("_messages.log")).read_text(errors="replace")
        for needle in ("pager to both", "hello SIPp", "BYE sip:bob@", "SIP/2.0 200 OK"):
            assert needle in log, f"{needle!r} not in SIPp's message log:\n{result}"
        assert "CANCEL sip:" not in log, "the winner is not cancelled"
        df = laptop.trace.sip(owner=bob1.uri)
        assert "hello SIPp" not in "".join(df["raw"]), "the chat went to the device that answered only"
        wait_for(lambda: server.registrations.get(BOB) == [bob1.contact], 5, "SIPp unregistered")
    finally:
        laptop.shutdown()
