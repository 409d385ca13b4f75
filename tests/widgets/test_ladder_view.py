"""The live ladder view grows as SIP messages go over the wire (headless)."""

from __future__ import annotations

import ipywidgets  # noqa: F401 - a runtime dependency; `make test` installs it
import pytest

import notebook_im as nim
from notebook_im.widgets.ladder_view import LadderView  # noqa: E402
from tests.helpers import accept_all, wait_for


def test_ladder_view_follows_the_trace(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    accept_all(bob)
    view = LadderView(platform, interval=0.05)
    try:
        assert nim.LadderView is LadderView
        first = view._count
        assert first >= 4 and "REGISTER" in view.svg.value  # two REGISTER/200 exchanges at least
        session = alice.sessions.create("sip:bob@example.test").result(10)
        session.send("hello <ladder>").result(5)
        wait_for(lambda: "MESSAGE" in view.svg.value and "INVITE" in view.svg.value, what="ladder grew")
        wait_for(lambda: view._count == len(platform.trace), what="caught up")
        assert view._count > first and f"{view._count} SIP messages" in view.caption.value
        assert "<ladder>" not in view.svg.value  # message previews are escaped
        assert not view.refresh()  # nothing new: no re-render
    finally:
        view.close()
    assert view._stop.is_set()


def test_ladder_view_static_and_custom_renderer(platform):
    records = []
    view = LadderView(records, live=False, renderer=lambda recs: f"<svg><text>{len(recs)}</text></svg>")
    assert view._thread is None and view.svg.value == "<svg><text>0</text></svg>"
    assert "following" not in view.caption.value
    view.close()
    with pytest.raises(TypeError, match="LadderView takes a Trace"):
        LadderView(42)
