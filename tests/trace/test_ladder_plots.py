"""Ladder diagrams (SVG parsed back: columns, arrows, labels, marks; Mermaid; filters) and the ready plots."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import matplotlib

from notebook_im.record.recorder import Trace
from notebook_im.trace.ladder import Ladder, render_svg

matplotlib.use("Agg")
NS = {"s": "http://www.w3.org/2000/svg"}


def arrows(svg: str) -> list[dict]:
    root = ET.fromstring(svg)
    out = []
    for g in root.iter("{http://www.w3.org/2000/svg}g"):
        classes = g.get("class", "").split()
        if "arrow" not in classes:
            continue
        label = g.find("s:text[@class='label']", NS).text
        out.append(
            {
                "classes": classes,
                "label": label,
                "src": g.get("data-src"),
                "dst": g.get("data-dst"),
                "lines": len(g.findall("s:line", NS)) + len(g.findall("s:path", NS)),
            }
        )
    return out


def participants(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return [
        g.find("s:text", NS).text for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "participant"
    ]


def test_session_ladder_svg(chat) -> None:
    ladder = chat.trace.ladder(call_id=chat.call_id)
    svg = ladder._repr_svg_()
    drawn = arrows(svg)
    cols = participants(svg)
    assert cols[0] == chat.alice.uri and chat.bob.uri in cols and len(cols) == 3  # alice | server | bob
    labels = [a["label"] for a in drawn]
    # each message once (both ends recorded it), every arrow has a line and a label
    # the proxy answers 100 Trying before (or while) it forwards the INVITE
    assert labels[0] == "INVITE" and sorted(labels[1:3]) == ["100 Trying", "INVITE"]
    assert labels.count("ACK") == 2 and labels.count("BYE") == 2
    assert 'MESSAGE "hello bob"' in labels and "MESSAGE (composing: active)" in labels
    assert all(a["lines"] == 1 for a in drawn)
    assert {"180 Ringing", "200 OK"} <= set(labels)
    first = drawn[0]
    assert (first["src"], first["dst"]) == (chat.alice.uri, cols[1])
    assert drawn[-1]["src"] == cols[1] and drawn[-1]["dst"] == chat.alice.uri  # the final 200 for the BYE
    assert "provisional" in [c for a in drawn for c in a["classes"]]
    assert ladder._repr_html_().startswith("<div")


def test_whole_trace_ladder_marks_failures_and_filters(chat) -> None:
    whole = chat.trace.ladder()
    drawn = arrows(whole.to_svg())
    failures = [a for a in drawn if "failure" in a["classes"]]
    assert [a["label"] for a in failures] == ["404 Not Found (no such user here)"]
    no_register = arrows(chat.trace.ladder(exclude=["REGISTER"]).to_svg())
    assert not any(a["label"] == "REGISTER" for a in no_register) and len(no_register) < len(drawn)
    only = arrows(chat.trace.ladder(methods=["BYE"]).to_svg())
    assert [a["label"] for a in only] == ["BYE", "BYE", "200 OK", "200 OK"]
    by_session = arrows(chat.trace.ladder(session=chat.session).to_svg())
    assert len(by_session) == len(arrows(chat.trace.ladder(call_id=chat.call_id).to_svg()))
    assert len(whole.filter(methods=["BYE"])) == len(chat.trace.sip(raw=False).query("method == 'BYE'"))
    mermaid = chat.trace.ladder(call_id=chat.call_id).to_mermaid()
    assert mermaid.startswith("sequenceDiagram\n") and "participant P0 as sip:alice@example.test" in mermaid
    assert "P0->>P1: INVITE" in mermaid and "-->>P0: 200 OK" in mermaid
    assert "--xP0: 404" in whole.to_mermaid()


def test_retransmissions_are_marked_and_the_ladder_grows() -> None:
    raw = (
        b"MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\n"
        b"To: <sip:b@x>\r\nCall-ID: r1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 5\r\n\r\nhello"
    )
    t = Trace()
    a, b = ("10.0.0.1", 5060), ("10.0.0.2", 5060)
    for ts in (1.0, 1.5, 2.5):  # sent three times (T1 doubling)
        t.record_sip("out", "udp", a, b, raw, "sip:a@x", ts=ts)
    ladder = Ladder(names={"10.0.0.2:5060": "bob's phone"})
    ladder.extend_records(t.sip_records())  # incremental: add records, re-render
    first = arrows(ladder.to_svg())
    assert [x["label"] for x in first] == ['MESSAGE "hello"'] + ['MESSAGE "hello" (retransmission)'] * 2
    assert ["retransmission" in x["classes"] for x in first] == [False, True, True]
    assert participants(ladder.to_svg()) == ["sip:a@x", "bob's phone"]
    resp = (
        b"SIP/2.0 500 Oops\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\nCall-ID: r1\r\nCSeq: 1 MESSAGE\r\n\r\n"
    )
    t.record_sip("in", "udp", a, b, resp, "sip:a@x", ts=3.0)
    ladder.add_record(t.sip_records()[-1])
    last = arrows(ladder.to_svg())[-1]
    assert last["label"] == "500 Oops" and "failure" in last["classes"] and last["dst"] == "sip:a@x"
    # the shared renderer LadderView picks up: records in, SVG out
    assert len(arrows(render_svg(t.sip_records()))) == 4
    assert "No SIP messages" in render_svg([])


def test_ready_plots(chat) -> None:
    plots = chat.trace.plot
    ax = plots.latency()
    assert ax.get_title() == "Delivery latency" and len(ax.lines) >= 1
    assert len(plots.latency_data()) == 3
    per = plots.messages_per_participant_data()
    assert per.to_dict() == {chat.alice.uri: 4}
    ax = plots.messages_per_participant()
    assert len(ax.patches) == 1
    comp = plots.composing_data()
    assert comp["text"].tolist()[:2] == ["hello bob", "two\nlines ✓"]
    assert comp["composing_s"].iloc[0] > 0 and comp["composing_s"].isna().iloc[1]
    ax = plots.composing_time()
    assert len(ax.patches) == len(comp)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_empty_trace_plots_and_ladder() -> None:
    t = Trace()
    assert len(t.plot.latency_data()) == 0 and len(t.plot.composing_data()) == 0
    t.plot.latency()
    t.plot.messages_per_participant()
    t.plot.composing_time()
    assert "No SIP messages" in t.ladder().to_svg()
    import matplotlib.pyplot as plt

    plt.close("all")
