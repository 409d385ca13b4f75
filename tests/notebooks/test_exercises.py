"""The tutorials teach with practice that checks itself: every notebook ends with exercises whose answers
`teaching.check()` compares with the trace. Run as stored, each notebook's hidden solution cells answer them;
every such check must come out right, and the same check with a wrong answer must come out wrong and say where
to look. Each notebook also has hidden solutions, "predict before you run" prompts and a summary. And the
executed outputs show what the notebooks promise: notebook 2 the full INVITE with its SDP, notebook 7 the
retransmission intervals, a 408, a CANCEL and its 487, a 401 and a 407."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from notebook_im import teaching

from .conftest import NOTEBOOKS, executed

pytestmark = pytest.mark.kernel
CHECK = re.compile(r"""check\(\s*["']([\w.-]+)["']""")


def checked_ids(path: Path) -> list[str]:
    nb = executed(path).stored
    return list(dict.fromkeys(i for c in nb.cells if c.cell_type == "code" for i in CHECK.findall(c.source)))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercises_pass_with_the_solutions_and_fail_with_a_wrong_answer(path: Path):
    run = executed(path)
    assert run.error is None, run.error
    ids = checked_ids(path)
    assert len(ids) >= 3, f"{path.name}: too few checked exercises ({ids})"
    assert set(ids) == {e.id for e in teaching.exercises_for(path.name[:2])}, "every exercise of the notebook is used"
    rows = {row["id"]: row for row in run.self_test}
    for exercise_id in ids:
        row = rows.get(exercise_id)
        assert row is not None, f"{path.name}: {exercise_id} was never checked"
        assert row["right"], f"{path.name}: the solution of {exercise_id} did not come out right"
        assert row["wrong_rejected"], f"{path.name}: a wrong answer to {exercise_id} came out right"
        assert row["message"].startswith("✗ Not ") and len(row["message"]) > 40, row["message"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_solutions_are_hidden_and_there_is_a_summary(path: Path):
    nb = executed(path).stored
    solutions = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
    assert solutions and all(c.metadata.get("jupyter", {}).get("source_hidden") is True for c in solutions)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "## Summary" in markdown
    assert "Predict" in markdown or "predict" in markdown


def test_unanswered_exercises_say_so_without_failing():
    run = executed(NOTEBOOKS[1])
    texts = run.text_outputs()
    assert any("No answer yet: replace the ... with your answer." in t for t in texts)


def test_notebook_2_shows_the_full_invite_with_its_sdp_numbered():
    texts = executed(next(p for p in NOTEBOOKS if p.name.startswith("02-"))).text_outputs()
    invites = [
        t for t in texts if re.search(r"^F\d+  alice -> proxy  \(UDP\)\nINVITE sip:bob@example.test SIP/2.0$", t, re.M)
    ]
    assert invites, "the numbered INVITE is printed"
    text = invites[0]
    for line in (
        "Via: SIP/2.0/UDP",
        "Max-Forwards: 70",
        "Content-Type: application/sdp",
        "v=0",
        "o=- ",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        "m=message ",
        " sip null",
        "a=accept-types:text/plain",
    ):
        assert line in text, line
    # the proxy puts its Record-Route first (as Kamailio does), then its Via above Alice's
    assert re.search(
        r"^F\d+  proxy -> bob  \(UDP\)\nINVITE sip:bob@127.0.0.1:\d+ SIP/2.0\nRecord-Route: <sip:.*;lr.*>\n"
        r"Via: .*\nVia: .*\nMax-Forwards: 69",
        text,
        re.M,
    ), "the INVITE at Bob: Record-Route, two Vias, Max-Forwards 69"
    mermaid = next(t for t in texts if t.startswith("sequenceDiagram"))
    assert "MESSAGE (receipt: delivered)" in mermaid and "MESSAGE (composing: active)" in mermaid
    assert "From: <sip" not in mermaid and mermaid.rstrip().endswith("200 OK")


def test_notebook_7_shows_timers_and_failures():
    texts = executed(next(p for p in NOTEBOOKS if p.name.startswith("07-"))).text_outputs()
    table = next(t for t in texts if "gap #   measured ms   Timer E ms" in t)
    gaps = [float(m.group(1)) for m in re.finditer(r"^\s+\d+\s+([\d.]+)\s+\d+$", table, re.M)]
    assert len(gaps) == 10, table
    assert 15 < gaps[0] < 60 and 35 < gaps[1] < 90 and 80 < gaps[2] < 160, "Timer E doubles from T1 = 25 ms"
    assert all(150 < g < 300 for g in gaps[3:]), "... up to T2 = 200 ms"
    everything = "\n".join(texts)
    for seen in (
        "408 Request Timeout",
        "CANCEL sip:carol@example.test SIP/2.0",
        "SIP/2.0 487 Request Terminated",
        "SIP/2.0 401 Unauthorized",
        "WWW-Authenticate: Digest",
        "SIP/2.0 407 Proxy Authentication Required",
        "Proxy-Authenticate: Digest",
        "SIP/2.0 415 Unsupported Media Type",
        "404 Not Found",
        "480 Temporarily",
        "486 Busy Here",
        "603 Decline",
    ):
        assert seen in everything, seen
    cancel = next(t for t in texts if "CSeq: " in t and " CANCEL " in t and "branch" in t)
    branches = re.findall(r"^F\d+\s+(INVITE|CANCEL|ACK)\s+CSeq: .*branch (\S+)$", cancel, re.M)
    assert {m for m, _b in branches} == {"INVITE", "CANCEL", "ACK"} and len({b for _m, b in branches}) == 1


def test_notebook_6_shows_the_sip_of_each_uccapi_call_and_the_ocs_wire():
    run = executed(next(p for p in NOTEBOOKS if p.name.startswith("06-")))
    everything = "\n".join(run.text_outputs())
    for seen in (
        "REGISTER sip:example.test SIP/2.0",  # Enable
        "SIP/2.0 401 Unauthorized",
        "SIP/2.0 407 Proxy Authentication Required",  # CreateSession through the authenticating proxy
        "(composing: active)",  # StartComposing
        "(composing: idle)",  # StopComposing
        "BYE sip:bob@",  # Terminate
        "Alice's CreateSession failed: 603 Decline = UCC_E_SIP_STATUS_GLOBAL_DECLINE (0x80EF025B)",  # Reject
        "SIP/2.0 603 Decline",
        "UCC_E_SIP_STATUS_CLIENT_NOT_FOUND (0x80EF0194)",
        "SIP/2.0 404 Not Found",
        # an OCS client, as SIPE writes it
        "ms-text-format: text/plain; charset=UTF-8;ms-body=",
        "Ms-Conversation-ID: 4711",
        "Content-Type: application/xml",
        '<?xml version="1.0"?><KeyboardActivity> <status status="type" /></KeyboardActivity>',
        "(KeyboardActivity: type)",
        '(first message: "Hi Bob, this rides in th…")',
        "first message taken: True",
        "('OnIncomingSession', '4711')",
        "('OnInstantMessageReceived', 'Hi Bob, this rides in the INVITE')",
        "EndpointState.DISABLED",  # Disable
    ):
        assert seen in everything, seen
    # Bob's own answer to the OCS INVITE says it took the first message
    assert re.search(r"^ms-text-format$", everything, re.M)
    markdown = "\n".join(c.source for c in run.stored.cells if c.cell_type == "markdown")
    for cited in ("sipe-im.c", "sipe-user.c", "sipe-incoming.c", "sipe-conf.c", "sip-transport.c", "m=x-ms-message"):
        assert cited in markdown, cited
