"""Capture real traffic with tshark on lo while SIPp talks to a notebook_im endpoint through Kamailio, then
load the capture with `nim.read_pcap` and check the frames against what was sent and what bob recorded.

SIPp (UDP) --MESSAGE x5, INVITE/ACK/MESSAGE/MESSAGE(composing)/BYE--> Kamailio --TCP--> bob (notebook_im)
The capture filter is "udp port K or tcp port K" (K: Kamailio's port), bounded with -a duration:.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

import notebook_im as nim
from notebook_im.trace import frames
from support.programs import HOST, Background, Sipp, free_port, require, start_kamailio, wait_for

from .test_frames import assert_schema

pytestmark = pytest.mark.interop
DOMAIN = "example.test"
PAGERS = 5


def test_capture_kamailio_sipp_traffic_and_import(tmp_path) -> None:
    tshark = require("tshark")
    sipp = Sipp(tmp_path, require("sipp"))
    kamailio = start_kamailio(tmp_path / "kamailio", free_port())
    platform = nim.Platform("capture")
    capture = tmp_path / "lo.pcapng"
    dumper = None
    try:
        K = kamailio.port
        dumper = Background(
            [tshark, "-i", "lo", "-f", f"udp port {K} or tcp port {K}", "-w", capture, "-a", "duration:45", "-q"],
            tmp_path / "tshark.log",
            name="tshark",
        )
        wait_for(
            lambda: "Capturing on" in dumper.log() or not dumper.alive(),
            15,
            "tshark to start capturing",
            dumper.describe,
        )
        assert dumper.alive(), dumper.describe()
        time.sleep(0.5)

        user = f"bob-{uuid.uuid4().hex[:6]}"
        bob = platform.endpoint(f"sip:{user}@{DOMAIN}", server=kamailio.uri, transport="tcp").result(10)
        bob.sessions.on_incoming(lambda inc: inc.accept())
        got = bob.events(nim.MessageReceived)

        result = sipp.run(
            "uac_pager.xml",
            remote=f"{HOST}:{K}",
            service=user,
            local_port=free_port(),
            transport="udp",
            calls=PAGERS,
            rate=50,
            limit=5,
            timeout_s=20,
        )
        assert result.returncode == 0, str(result)
        result = sipp.run(
            "uac_im_session.xml",
            remote=f"{HOST}:{K}",
            service=user,
            local_port=free_port(),
            transport="udp",
            calls=1,
            limit=1,
            timeout_s=20,
        )
        assert result.returncode == 0, str(result)
        for _ in range(PAGERS + 1):
            got.get(timeout=5)
        time.sleep(0.5)  # let the last answers reach the wire
    finally:
        platform.shutdown()  # the un-REGISTER is captured too
        if dumper is not None:
            time.sleep(0.3)
            dumper.stop()  # SIGTERM: tshark finishes the file
        kamailio.process.stop()

    trace = nim.read_pcap(capture)
    df = trace.sip()
    assert_schema(df, frames.SIP_SCHEMA)
    assert trace.pcap_stats.sip_messages == len(df) and len(df) > 0

    # every SIP message bob sent or received over TCP is in the capture, byte for byte (TCP reassembled)
    bob_rows = platform.trace.sip(owner=bob.uri)
    captured = set(df["raw"])
    missing = [r[:80] for r in bob_rows["raw"] if r not in captured]
    assert not missing, missing
    assert set(df["transport"].astype(str)) == {"udp", "tcp"}

    # the MESSAGEs SIPp sent (to Kamailio over UDP) have the Call-IDs bob saw arrive
    sipp_msgs = df[(df["method"] == "MESSAGE") & df["status"].isna() & (df["transport"] == "udp")]
    bob_in = bob_rows[(bob_rows["direction"] == "in") & (bob_rows["method"] == "MESSAGE") & bob_rows["status"].isna()]
    assert sorted(set(sipp_msgs["call_id"])) == sorted(set(bob_in["call_id"]))
    assert len(set(sipp_msgs["call_id"])) == PAGERS + 1

    # tshark agrees on the Call-IDs
    out = subprocess.run(
        [tshark, "-r", str(capture), "-Y", "sip", "-T", "fields", "-e", "sip.Call-ID"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    tshark_ids = {c for line in out.stdout.splitlines() for c in line.split(",") if c}
    assert tshark_ids == set(df["call_id"].dropna())

    # the IM messages, reconstructed from the capture alone: each once, delivered, what SIPp sent
    m = trace.messages()
    assert_schema(m, frames.MESSAGES_SCHEMA)
    expected = sorted([f"pager message {n}\n" for n in range(1, PAGERS + 1)] + ["hello from SIPp 1\n"])
    assert sorted(m["text"]) == expected
    assert set(m["status"].astype(str)) == {"delivered"} and set(m["sip_status"].astype(int)) == {200}
    assert sorted(m["mode"].astype(str)) == ["pager"] * PAGERS + ["session"]
    assert (m["latency"] > 0).all()
    assert set(m["recipient"].str.split("@").str[0]) == {f"sip:{user}"}
    # ... and they match what bob's own events say he received
    assert sorted(bob.history()["text"]) == expected
    # the ladder of the IM session: SIPp, Kamailio and bob as columns
    session_cid = m[m["mode"] == "session"]["call_id"].iloc[0]
    ladder = trace.ladder(call_id=session_cid)
    assert len(ladder.layout()[0]) == 3
    labels = [a.label for a, _, _ in ladder.layout()[1]]
    assert labels.count("INVITE") == 2 and labels.count("BYE") == 2 and "MESSAGE (composing: active)" in labels
