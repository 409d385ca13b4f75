"""Earlier conversations in `ChatPanel(endpoint)`: what `Platform(history=...)` loaded from its store.

A user who restarts the kernel opens a panel on the same endpoint and sees where they left off: the sidebar
lists the endpoint's earlier conversations (peer and date, newest first) under a heading that says they come
from the history, and the main area shows the newest one until a live conversation starts. An earlier
conversation is read-only (its session ended with the earlier kernel): it has no message box, only a
"Chat again" button that invites the same peer. Kept apart from chat.py so the live conversation code stays
as it is; the messages are rendered by the same `render.messages_html` as live ones.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from ..trace.conversations import EarlierConversation, earlier_conversations
from . import render as r

if TYPE_CHECKING:  # pragma: no cover
    from ..api.endpoint import Endpoint

EARLIER_BADGE = "from history, read-only"


def when(ts: datetime) -> str:
    """'12 Mar 2025 14:05' in the viewer's local time."""
    return ts.astimezone().strftime("%d %b %Y %H:%M")


class EarlierView(w.VBox):
    """One earlier conversation, read-only: a header naming the peer, the date and that it is from the history,
    then its messages, and a "Chat again" button that starts a new session with the same peer."""

    def __init__(self, conversation: EarlierConversation, listing: EarlierList) -> None:
        self.conversation = c = conversation
        name, names = listing.name(c), listing.name_of
        span = (
            f"{when(c.started)}–{c.ended.astimezone().strftime('%H:%M')}"
            if c.started.astimezone().date() == c.ended.astimezone().date()
            else f"{when(c.started)} – {when(c.ended)}"
        )
        mode = " (pager mode)" if c.mode == "pager" else ""
        self.header_html = w.HTML(
            '<div class="nim-earlier-head" style="padding:6px 12px;font-size:12.5px;'
            'color:var(--jp-ui-font-color2,#6b7280);border-bottom:1px solid var(--jp-border-color2,#e5e7eb)">'
            f"Earlier conversation{mode} with <b>{r.who_html(name, c.peer)}</b> · {html.escape(span)} · "
            f"<i>{EARLIER_BADGE}</i></div>"
        )
        shown = c.messages[-listing.max_rendered :]  # the newest, as a live conversation renders them
        entries = [
            r.Entry(
                id=m.id,
                direction=m.direction,
                sender=m.sender,
                sender_name=names(m.sender, c),
                text=m.text,
                content_type=m.content_type,
                timestamp=m.timestamp,
                status=m.status,
                sip_status=m.sip_status,
                reason=m.reason or "",
            )
            for m in shown
        ]
        hidden = len(c.messages) - len(shown)
        note = (
            f'<div class="nim-empty" style="padding:4px 0">{hidden} earlier messages are in endpoint.history()</div>'
            if hidden
            else ""
        )
        self.messages_html = w.HTML(note + r.messages_html(entries))
        box = w.VBox([self.messages_html], layout=w.Layout(height=listing.height, overflow="hidden auto"))
        box.add_class("nim-chat-messages")
        self.again_button = w.Button(
            description=f"Chat again with {r.who_text(name, c.peer)}",
            icon="comment",
            tooltip=f"Start a new conversation with {c.peer}",
            layout=w.Layout(width="auto"),
        )
        self.again_button.on_click(lambda _b: listing.start_chat(c.peer))
        super().__init__([self.header_html, box, self.again_button], layout=w.Layout(width="100%"))
        self.add_class("nim-chat")
        self.add_class("nim-earlier-conv")


class EarlierList(w.VBox):
    """The sidebar section of `ChatPanel(endpoint)` listing the endpoint's earlier conversations (the newest
    `limit`); empty and hidden when the platform has no history store or the store had none."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        main: w.Box,
        start_chat: Callable[[str], Any],
        options: dict[str, Any],
        limit: int = 50,
    ) -> None:
        """`main`: the panel's main area (an earlier conversation is shown there); `start_chat(uri)`: what "Chat
        again" does; `options`: the panel's names/height/max_rendered."""
        store = getattr(endpoint.platform, "history_store", None)
        self.main = main
        self.start_chat = start_chat
        self.conversations = earlier_conversations(store.earlier, endpoint.uri) if store is not None else []
        self.views: dict[str, EarlierView] = {}
        self.shown: EarlierConversation | None = None
        self._names = dict(options.get("names") or {})
        if endpoint.display_name:
            self._names.setdefault(endpoint.uri, endpoint.display_name)
        self.height = options.get("height", "380px")
        self.max_rendered = options.get("max_rendered", 200)
        self._buttons: dict[str, w.Button] = {}
        children: list[Any] = []
        if self.conversations:
            more = len(self.conversations) - limit
            children.append(
                w.HTML(
                    '<div class="nim-side-title" style="margin-top:10px">Earlier conversations '
                    '<span style="font-weight:400;font-size:11.5px">(history)</span></div>'
                )
            )
            for c in self.conversations[:limit]:
                pager = " · pager" if c.mode == "pager" else ""
                b = w.Button(
                    description=f"{r.who_text(self.name(c), c.peer)} · {when(c.ended)}{pager}",
                    tooltip=f"{c.peer} ({EARLIER_BADGE})",
                    layout=w.Layout(width="100%"),
                )
                b.add_class("nim-conv-item")
                b.add_class("nim-earlier-item")
                b.on_click(lambda _b, conv=c: self.show(conv))
                self._buttons[c.key] = b
                children.append(b)
            if more > 0:
                children.append(
                    w.HTML(f'<div class="nim-empty" style="padding:4px 0">{more} more in endpoint.history()</div>')
                )
        super().__init__(children, layout=w.Layout(display=None if children else "none"))
        self._observing = False

    def name_of(self, uri: str, c: EarlierConversation) -> str:
        """A participant's name: the panel's `names` address book (and the endpoint's own display name) first,
        then the display name the stored events carried, then the user part of the URI."""
        return self._names.get(uri) or c.names.get(uri) or uri.split(":", 1)[-1].split("@", 1)[0] or uri

    def name(self, c: EarlierConversation) -> str:
        """The peer's name (see `name_of`)."""
        return self.name_of(c.peer, c)

    def show(self, conversation: EarlierConversation) -> EarlierView:
        """Show an earlier conversation (read-only) in the panel's main area."""
        view = self.views.get(conversation.key)
        if view is None:
            view = self.views[conversation.key] = EarlierView(conversation, self)
        if not self._observing:  # the panel's main area exists once the panel is built
            self.main.observe(self._on_main, names="children")
            self._observing = True
        self.main.children = [view]
        return view

    def show_latest(self) -> EarlierView | None:
        """Show the newest earlier conversation (where the user left off), if there is one."""
        return self.show(self.conversations[0]) if self.conversations else None

    def close(self) -> None:
        """Close the earlier views and the list (ChatPanel.close() does this)."""
        for widget in [*self.views.values(), *self._buttons.values()]:
            widget.close()
        super().close()

    def _on_main(self, change: dict) -> None:
        """Highlight the shown earlier conversation; a live one taking the main area clears the highlight."""
        shown = change["new"][0] if change["new"] else None
        self.shown = shown.conversation if isinstance(shown, EarlierView) else None
        for key, b in self._buttons.items():
            b.button_style = "info" if self.shown is not None and self.shown.key == key else ""
