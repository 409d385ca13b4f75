"""RFC 3994 state machines with time passed in."""

import pytest

from notebook_im.im import iscomposing as ic
from notebook_im.sip import RemoteProtocolError


def sent(actions):
    return [a.indication.state.value for a in actions if isinstance(a, ic.SendIndication)]


def armed(actions):
    return {a.name: a.delay for a in actions if isinstance(a, ic.StartTimer)}


def test_document_round_trip():
    doc = ic.build(ic.Indication(ic.ComposingState.ACTIVE, 120, "text/plain"))
    ind = ic.parse(doc)
    assert ind.state is ic.ComposingState.ACTIVE and ind.refresh == 120 and ind.content_type == "text/plain"
    rfc_example = b"""<?xml version="1.0" encoding="UTF-8"?>
<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="urn:ietf:params:xml:ns:im-composing iscomposing.xsd">
  <state>idle</state>
  <lastactive>2003-01-27T10:43:00Z</lastactive>
  <contenttype>audio</contenttype>
</isComposing>"""
    assert ic.parse(rfc_example).state is ic.ComposingState.IDLE


@pytest.mark.parametrize(
    "body",
    [
        b"not xml",
        b"<foo/>",
        b"<isComposing><state>busy</state></isComposing>",
        b'<!DOCTYPE x [<!ENTITY a "b">]><isComposing/>',
        b"<isComposing>" + b"x" * 5000,
    ],
)
def test_bad_documents(body):
    with pytest.raises(RemoteProtocolError):
        ic.parse(body)


def test_sender_rhythm():
    s = ic.ComposingSender()
    first = s.keystroke(0.0)
    assert sent(first) == ["active"] and armed(first) == {"refresh": 120.0, "idle": 15.0}
    assert sent(s.keystroke(1.0)) == [], "no second active while the refresh interval runs"
    assert sent(s.keystroke(121.0)) == ["active"], "active is refreshed after 120 s of typing"
    assert sent(s.timer("idle", 136.0)) == ["idle"], "idle after 15 s without a keystroke"
    assert s.state is ic.ComposingState.IDLE
    assert s.timer("refresh", 200.0) == []


def test_sending_the_message_goes_idle_silently():
    s = ic.ComposingSender()
    s.keystroke(0.0)
    out = s.message_sent(1.0)
    assert sent(out) == [] and s.state is ic.ComposingState.IDLE
    assert {a.name for a in out if isinstance(a, ic.StopTimer)} == {"refresh", "idle"}


def test_explicit_stop_sends_idle_once():
    s = ic.ComposingSender()
    s.keystroke(0.0)
    assert sent(s.stop(2.0)) == ["idle"]
    assert s.stop(3.0) == []


def test_refresh_timer_resends_active_while_typing():
    s = ic.ComposingSender()
    s.keystroke(0.0)
    assert sent(s.timer("refresh", 120.0)) == ["active"]


def test_receiver_lapses_to_idle_after_refresh_window():
    r = ic.ComposingReceiver()
    out = r.indication(ic.Indication(ic.ComposingState.ACTIVE, 60), 0.0)
    assert ic.Changed(True) in out and armed(out) == {"expire": 60.0}
    assert r.indication(ic.Indication(ic.ComposingState.ACTIVE, 60), 30.0) == [ic.StartTimer("expire", 60.0)]
    assert ic.Changed(False) in r.timer("expire", 90.0)
    assert r.timer("expire", 91.0) == []


def test_receiver_default_window_and_message_clears():
    r = ic.ComposingReceiver()
    assert armed(r.indication(ic.Indication(ic.ComposingState.ACTIVE), 0.0)) == {"expire": 120.0}
    assert ic.Changed(False) in r.message_received(5.0)
    assert r.indication(ic.Indication(ic.ComposingState.IDLE), 6.0) == []
