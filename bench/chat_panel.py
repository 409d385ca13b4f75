"""How long does appending 10,000 messages to a ChatPanel take?

    python bench/chat_panel.py [N]

Two endpoints on the embedded server, one connected session, a ChatPanel on it (headless: ipywidgets'
DummyComm, as in a kernel minus the websocket). N MessageReceived events are fed through the panel's
handler, the one the library calls on its loop thread, then the panel is flushed and rendered. The anchors,
measured in the same run: N plain `ipywidgets.HTML().value = ...` updates (what naively re-rendering one
escaped message per append costs at least), and N `html.escape` + a string join (the floor for turning
N bodies into HTML at all). The ratios say how far the panel is from those.
"""

from __future__ import annotations

import html
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ipywidgets  # noqa: E402

import notebook_im as nim  # noqa: E402
from notebook_im.widgets.chat import ChatPanel  # noqa: E402


def main(n: int = 10_000) -> None:
    server = nim.Server().start().result(10)
    platform = nim.Platform("bench")
    try:
        alice = platform.endpoint("sip:alice@example.test", server=server, display_name="Alice").result(10)
        bob = platform.endpoint("sip:bob@example.test", server=server, display_name="Bob").result(10)
        bob.sessions.on_incoming(lambda inv: inv.accept())
        session = alice.sessions.create("sip:bob@example.test").result(10)
        panel = ChatPanel(session, max_rendered=200)
        conv = panel.conversation
        t0 = datetime.now(timezone.utc)
        texts = [f"message {i}: the quick brown fox <jumps> over the lazy dog" for i in range(n)]
        events = [
            nim.MessageReceived(
                session, session.remote, texts[i], "text/plain", f"id{i}", timestamp=t0 + timedelta(milliseconds=i)
            )
            for i in range(n)
        ]

        start = time.perf_counter()
        for e in events:
            conv._on_received(e)  # what the library's loop thread calls for each incoming MESSAGE
        conv.flush()
        panel_s = time.perf_counter() - start
        assert conv.rendered_count == 200 and f"message {n - 1}:" in conv.messages_html.value
        assert len(conv.entries) == n

        eager = ChatPanel(session, max_rendered=200, min_interval=0.0)  # re-render on every append
        start = time.perf_counter()
        for e in events:
            eager.conversation._on_received(e)
        eager.conversation.flush()
        eager_s = time.perf_counter() - start
        eager.close()

        target = ipywidgets.HTML()
        start = time.perf_counter()
        for t in texts:
            target.value = f"<div>{html.escape(t)}</div>"
        anchor_widget_s = time.perf_counter() - start

        start = time.perf_counter()
        joined = "".join(f"<div>{html.escape(t)}</div>" for t in texts)
        anchor_join_s = time.perf_counter() - start
        assert joined

        start = time.perf_counter()
        conv.show_earlier()
        earlier_s = time.perf_counter() - start

        print(f"chat panel, {n:,} messages appended (newest 200 rendered), Python {sys.version.split()[0]}")
        print(f"{'figure':<58}{'seconds':>10}{'/ anchor':>10}")
        print(
            f"{f'panel: append {n} MessageReceived events + final render':<58}{panel_s:>10.3f}"
            f"{panel_s / anchor_widget_s:>10.2f}"
        )
        print(
            f"{'panel, no coalescing: a full render after every append':<58}{eager_s:>10.3f}"
            f"{eager_s / anchor_widget_s:>10.2f}"
        )
        print(f"{f'anchor: {n} ipywidgets.HTML value updates':<58}{anchor_widget_s:>10.3f}{1:>10.2f}")
        print(
            f"{f'anchor: {n} html.escape + one join':<58}{anchor_join_s:>10.3f}{anchor_join_s / anchor_widget_s:>10.2f}"
        )
        label = f"panel: 'show earlier' (render 400 of {n})"
        print(f"{label:<58}{earlier_s:>10.3f}")
        print(f"per message: {panel_s / n * 1e6:.1f} µs")
        panel.close()
    finally:
        platform.shutdown()
        server.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
