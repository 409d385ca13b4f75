"""ChatPanel: a chat client in a notebook cell, built from ipywidgets core widgets (+ the Composer anywidget).

    panel = nim.ChatPanel(session)     # one conversation
    panel = nim.ChatPanel(endpoint)    # all of an endpoint's conversations, invitations, and a "new chat" box

Threading. Library events arrive on notebook_im's loop thread; widget callbacks arrive on the kernel's shell
thread (or, with ipykernel 7, a subshell thread). Both only touch the panel's own model under a lock and ask
for a render; rendering sets widget traits (which ipykernel sends thread-safely over IOPub) and is coalesced:
at most one render per `min_interval` seconds, the rest folded into one deferred render on a timer thread.
Handlers never block: Enter hands the text to `session.send()` (an Operation, never `.result()`-ed here) and
the outcome comes back as MessageDelivered/MessageFailed events or the operation's done-callback.

Read receipts: a Conversation marks the received messages it shows as read (`session.mark_read(ids)`, which
sends RFC 5438 display notifications to senders that asked) only while it is *visible*, meaning the front end
(JupyterLab, Notebook, VS Code, Voila) reports at least one live view of its message area. ipywidgets' view
counting (`_view_count`, switched on here) is how the kernel learns that: a panel that was built but never
displayed, whose output was cleared, or that is not the conversation selected in a `ChatPanel(endpoint)`
counts as not visible. What the kernel cannot know: whether the browser tab is in front, or the cell is
scrolled into view; a displayed panel counts as seen. Only the rendered messages (the newest `max_rendered`,
more after "Show earlier") are marked.

Long conversations: every message is kept in the panel's model, only the newest `max_rendered` are turned
into HTML; "Show earlier" widens the window by `max_rendered` each click. Each message's HTML fragment is
cached, so an append costs one fragment plus a join of at most `max_rendered` cached strings.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from ..api.endpoint import Endpoint
from ..api.events import (
    ComposingChanged,
    IncomingSession,
    MessageDelivered,
    MessageDeliveryNotified,
    MessageDisplayed,
    MessageFailed,
    MessageReceived,
    ParticipantAdded,
    ParticipantStateChanged,
    SessionModeChanged,
    SessionState,
    SessionStateChanged,
    SessionTerminated,
)
from ..api.messages import ChatMessage, now_utc
from ..api.participant import Participant
from ..api.session import ImSession
from . import render as r
from .composer import Composer
from .earlier import EarlierList

log = logging.getLogger("notebook_im.widgets")

__all__ = ["ChatPanel", "Conversation"]


class _Throttle:
    """Run `fn` now if it has not run for `interval` s, else once at the end of the interval (any thread)."""

    def __init__(self, fn: Callable[[], None], interval: float) -> None:
        self.fn, self.interval = fn, interval
        self._lock = threading.Lock()
        self._last = 0.0
        self._timer: threading.Timer | None = None
        self.paused = 0

    def __call__(self) -> None:
        with self._lock:
            if self._timer is not None or self.paused:
                return
            delay = self._last + self.interval - time.monotonic()
            if delay > 0:
                self._timer = threading.Timer(delay, self._fire)
                self._timer.daemon = True
                self._timer.start()
                return
            self._last = time.monotonic()
        self.fn()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        self.fn()

    def flush(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._last = time.monotonic()
        self.fn()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


class Conversation(w.VBox):
    """One IM session as a chat window: header, messages, composing line, message box."""

    def __init__(
        self,
        session: ImSession,
        *,
        max_rendered: int = 200,
        height: str = "380px",
        min_interval: float = 0.05,
        content_type: str = "text/plain",
        style: bool = True,
        names: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(session, ImSession):
            raise TypeError(f"Conversation takes an ImSession, not {type(session).__name__}")
        if not isinstance(max_rendered, int) or max_rendered < 1:
            raise ValueError(f"max_rendered must be a positive int, not {max_rendered!r}")
        self.session = session
        self.max_rendered = max_rendered
        self.content_type = content_type
        self.names = dict(names or {})
        self._window = max_rendered
        self._lock = threading.RLock()
        self._render_lock = threading.Lock()
        self._entries: list[r.Entry] = []
        self._by_id: dict[str, r.Entry] = {}
        self._pending: list[r.Entry] = []  # sent from this panel, library id not known yet
        self.incoming: IncomingSession | None = None
        self._subs: list[Any] = []
        self._throttle = _Throttle(self._render, min_interval)
        self._closed = False

        self._style = w.HTML(r.CSS if style else "", layout=w.Layout(height="0px", margin="0"))
        self.header_html = w.HTML()
        self.end_button = w.Button(
            description="End chat",
            tooltip="Leave this conversation (BYE)",
            layout=w.Layout(width="auto", margin="0 0 0 auto"),
        )
        self.end_button.on_click(lambda _b: self._end())
        self.header = w.HBox([self.header_html, self.end_button], layout=w.Layout(width="100%"))
        self.header.add_class("nim-chat-head")
        self.invite_text = w.HTML()
        self.accept_button = w.Button(
            description="Accept", button_style="success", icon="check", layout=w.Layout(width="auto")
        )
        self.decline_button = w.Button(
            description="Decline", button_style="danger", icon="times", layout=w.Layout(width="auto")
        )
        self.accept_button.on_click(lambda _b: self.accept())
        self.decline_button.on_click(lambda _b: self.decline())
        self.invite_bar = w.HBox(
            [self.invite_text, self.accept_button, self.decline_button], layout=w.Layout(display="none")
        )
        self.invite_bar.add_class("nim-invite")
        self.earlier_button = w.Button(
            description="Show earlier messages",
            icon="angle-up",
            layout=w.Layout(display="none", width="auto", margin="6px auto 2px auto"),
        )
        self.earlier_button.add_class("nim-earlier")
        self.earlier_button.on_click(lambda _b: self.show_earlier())
        self.messages_html = w.HTML()
        self.messages_html._view_count = 0  # (an ipywidgets trait, private by name only) ask the front end to count its views: that is "visible" (see above)
        self.messages_html.observe(self._on_views, names="_view_count")
        self.messages_box = w.VBox(
            [self.earlier_button, self.messages_html], layout=w.Layout(height=height, overflow="hidden auto")
        )
        self.messages_box.add_class("nim-chat-messages")
        self.status_html = w.HTML("&nbsp;", layout=w.Layout(height="22px", min_height="22px", margin="0"))
        self.status_html.add_class("nim-chat-status")
        self.composer = Composer()
        self.composer.on_submit(self.send)
        self.composer.observe(self._on_input, names="value")
        super().__init__(
            [self._style, self.header, self.invite_bar, self.messages_box, self.status_html, self.composer],
            layout=w.Layout(width="100%"),
        )
        self.add_class("nim-chat")
        self.add_class("nim-chat-conv")

        s = session
        self._subs = [
            s.on(MessageReceived, self._on_received),
            s.on(MessageDelivered, self._on_settled),
            s.on(MessageFailed, self._on_settled),
            s.on(MessageDeliveryNotified, self._on_receipt),
            s.on(MessageDisplayed, self._on_receipt),
            s.on(ComposingChanged, self._on_change),
            s.on(ParticipantStateChanged, self._on_change),
            s.on(SessionStateChanged, self._on_change),
            s.on(SessionTerminated, self._on_change),
            s.on(SessionModeChanged, self._on_change),
        ]
        with self._lock:
            for m in list(s.messages):
                self._add_entry(self._entry_from_message(m))
        self._render()

    # -- public ------------------------------------------------------------------------------------------
    def send(self, text: str) -> None:
        """Send `text` as the local user (what Enter does); returns at once, the entry shows 'Sending…'."""
        if not text.strip():
            return
        s = self.session
        entry = r.Entry(
            "local-" + secrets.token_hex(6),
            "out",
            s.local_participant.uri,
            self.name_of(s.local_participant),
            text,
            self.content_type,
            now_utc(),
            "sending",
        )
        with self._lock:
            self._add_entry(entry)
            self._pending.append(entry)
        try:
            op = s.send(text, self.content_type)
        except Exception as exc:  # noqa: BLE001 - wrong arguments: show them on the message
            self._fail_local(entry, exc)
        else:
            op.add_done_callback(lambda o, e=entry: self._send_done(e, o))
        self._throttle()

    def show_earlier(self) -> None:
        with self._lock:
            self._window += self.max_rendered
        self._render()

    def accept(self) -> None:
        incoming = self.incoming
        if incoming is not None:
            self.set_invite(None)
            incoming.accept()  # an Operation: the session's state events update the panel

    def decline(self, code: int = 603) -> None:
        incoming = self.incoming
        if incoming is not None:
            self.set_invite(None)
            incoming.reject(code, "Decline")

    def flush(self) -> None:
        """Render pending changes now (tests and benchmarks; the panel does this by itself otherwise)."""
        self._throttle.flush()

    @property
    def entries(self) -> list[r.Entry]:
        with self._lock:
            return list(self._entries)

    @property
    def rendered_count(self) -> int:
        with self._lock:
            return min(len(self._entries), self._window)

    @property
    def visible(self) -> bool:
        """True while a front end shows this conversation's messages (it reports its live views); only then
        are shown messages marked read, which sends the senders their "Seen" receipts."""
        return (self.messages_html._view_count or 0) > 0  # (ipywidgets' view counter, see the module docstring)

    def close(self) -> None:
        """Unsubscribe from the session's events and close the widgets."""
        self._closed = True
        throttle = getattr(self, "_throttle", None)  # close() also runs from __del__ of a half-built panel
        if throttle is not None:
            throttle.cancel()
        for sub in getattr(self, "_subs", ()):
            sub.cancel()
        self._subs = []
        super().close()

    # -- model updates (any thread) -----------------------------------------------------------------------------
    def _entry_from_message(self, m: ChatMessage) -> r.Entry:
        s = self.session
        if m.direction == "out":
            who = s.local_participant
        else:  # in a conference the author is one of several participants
            who = next((p for p in s.participants if p.uri == m.sender), None)
            if who is None:
                who = s.remote if not s.is_conference else Participant(m.sender)
        name = self.name_of(who)
        return r.Entry(
            m.id,
            m.direction,
            m.sender,
            name,
            m.text,
            m.content_type,
            m.timestamp,
            m.status,
            m.sip_status,
            m.reason,
            m.state,
        )

    def _add_entry(self, entry: r.Entry) -> None:
        if entry.id in self._by_id:
            return
        self._entries.append(entry)
        self._by_id[entry.id] = entry

    def append(self, message: ChatMessage) -> None:
        """Add a ChatMessage to the panel (what incoming events do; also handy to replay a history)."""
        with self._lock:
            self._add_entry(self._entry_from_message(message))
        self._throttle()

    def name_of(self, p: Any) -> str:
        """A participant's name: the `names` address book first (the API does not learn the callee's display
        name), then the display name the SIP headers gave, then the user part of the URI. Raw: it is shown only
        through `render.who_html`/`who_text`, which clean it and put the real address next to it."""
        return self.names.get(p.uri) or p.name

    def _on_received(self, e: MessageReceived) -> None:
        entry = r.Entry(
            e.message_id or secrets.token_hex(6),
            "in",
            e.participant.uri,
            self.name_of(e.participant),
            e.text,
            e.content_type,
            e.timestamp,
            "received",
            state="received",
        )
        with self._lock:
            self._add_entry(entry)
        self._throttle()

    def _on_settled(self, e: MessageDelivered | MessageFailed) -> None:
        with self._lock:
            entry = self._by_id.get(e.message_id)
            if entry is None:
                entry = next((p for p in self._pending if p.text == e.text), None)
                if entry is not None:  # ours: sends of one session are queued, so the first match is it
                    self._pending.remove(entry)
                    del self._by_id[entry.id]
                    entry.id = e.message_id
                    self._by_id[entry.id] = entry
                else:  # sent by code outside the panel
                    s = self.session
                    entry = r.Entry(
                        e.message_id,
                        "out",
                        s.local_participant.uri,
                        self.name_of(s.local_participant),
                        e.text,
                        e.content_type,
                        e.sent_at or e.timestamp,
                        "sending",
                    )
                    self._add_entry(entry)
            entry.status = "delivered" if isinstance(e, MessageDelivered) else "failed"
            entry.state = e.state or ("sent" if isinstance(e, MessageDelivered) else "failed")
            entry.sip_status, entry.reason = e.status, e.reason
            entry.invalidate()
        self._throttle()

    def _on_receipt(self, e: MessageDeliveryNotified | MessageDisplayed) -> None:
        """A receipt moved a sent message's state: its tick changes. (One that overtook the 200 finds no entry
        yet; the MessageDelivered that follows carries the state.)"""
        with self._lock:
            entry = self._by_id.get(e.message_id)
            if entry is None or entry.state == e.state:
                return
            entry.state = e.state
            entry.invalidate()
        self._throttle()

    def _on_views(self, _change: dict) -> None:
        if self.visible:
            self._throttle()  # the next render marks what it shows as read

    def _mark_shown_read(self, shown: list[r.Entry]) -> None:
        """Visible: the received messages just rendered have been seen (see the module docstring)."""
        with self._lock:
            unread = [e for e in shown if e.direction == "in" and e.state != "displayed"]
            for e in unread:
                e.state = "displayed"
        if unread:
            self.session.mark_read([e.id for e in unread])  # an Operation: never waited for here

    def _send_done(self, entry: r.Entry, op) -> None:
        exc = op.exception() if op.done() else None
        if exc is not None and entry.status == "sending":
            self._fail_local(entry, exc)

    def _fail_local(self, entry: r.Entry, exc: BaseException) -> None:
        with self._lock:
            if entry in self._pending:
                self._pending.remove(entry)
            entry.status = "failed"
            entry.sip_status = getattr(exc, "status", None)
            entry.reason = getattr(exc, "reason", None) or str(exc)
            entry.invalidate()
        self._throttle()

    def _on_change(self, _e: Any) -> None:
        self._throttle()

    def set_invite(self, incoming: IncomingSession | None) -> None:
        self.incoming = incoming
        self._throttle()

    def _on_input(self, change: dict) -> None:
        """Keystrokes drive RFC 3994 composing: the library sends active/refresh/idle at the right rhythm."""
        if self.session.state is SessionState.CONNECTED:
            self.session.typing(change["new"])  # an Operation; never waited for here

    def _end(self) -> None:
        if self.incoming is not None:
            self.decline()
        else:
            self.session.terminate()

    # -- rendering (any thread, serialised) -------------------------------------------------------------------
    def _render(self) -> None:
        if self._closed:
            return
        with self._render_lock:
            s = self.session
            with self._lock:
                total = len(self._entries)
                shown = self._entries[-self._window :] if total > self._window else list(self._entries)
                hidden = total - len(shown)
                incoming = self.incoming
            body = r.messages_html(shown)
            if self.visible:
                self._mark_shown_read(shown)
            head = "".join(
                r.participant_chip(self.name_of(p), p.uri, p.state.value) for p in s.participants
            ) + r.mode_badge(s.mode)
            typing = [(self.name_of(p), p.uri) for p in s.participants if p.composing]
            status = (
                f'<span class="nim-typing">{r.composing_html(typing)}'
                '<span class="nim-dots"><span>.</span><span>.</span><span>.</span></span></span>'
                if typing
                else "&nbsp;"
            )
            connected = s.state is SessionState.CONNECTED
            ended = s.state in (SessionState.DISCONNECTING, SessionState.DISCONNECTED)
            if self.header_html.value != head:
                self.header_html.value = head
            if self.messages_html.value != body:
                self.messages_html.value = body
            if self.status_html.value != status:
                self.status_html.value = status
            if hidden:
                self.earlier_button.description = f"Show earlier messages ({hidden})"
            self.earlier_button.layout.display = None if hidden else "none"
            self.composer.disabled = not connected
            placeholder = (
                f"Message {r.who_text(self.name_of(s.remote), s.remote.uri)}"
                if connected
                else f"Conversation ended ({r.clean_text(s.terminate_reason or '', 200)})"
                if ended
                else "Connecting…"
            )
            if self.composer.placeholder != placeholder:
                self.composer.placeholder = placeholder
            self.end_button.layout.display = "none" if ended else None
            if incoming is not None and s.state is SessionState.CONNECTING:
                self.invite_text.value = f"<b>{r.who_html(self.name_of(s.remote), s.remote.uri)}</b> wants to chat"
                self.invite_bar.layout.display = None
            else:
                self.invite_bar.layout.display = "none"


class ChatPanel(w.VBox):
    """`ChatPanel(session)`: one conversation. `ChatPanel(endpoint)`: the endpoint's conversations, with
    incoming invitations (Accept / Decline) and a box to start a new one.

    Options: `max_rendered` (newest messages kept rendered, default 200; "Show earlier" adds as many again),
    `height` of the message area, `content_type` of sent messages ("text/plain" or "text/html"), `names`
    (an address book {uri: display name} for participants whose SIP headers carry no display name).
    `ChatPanel(endpoint)` turns on `endpoint.pager_sessions`: a pager-mode text from somebody without a
    conversation (a linphone user, say) opens one, in pager mode.
    On a `Platform(history=...)`, `ChatPanel(endpoint)` also lists the endpoint's earlier conversations from the
    store, read-only (`panel.earlier`), and shows the newest one until a live conversation starts.
    """

    def __init__(
        self,
        target: ImSession | Endpoint,
        *,
        max_rendered: int = 200,
        height: str = "380px",
        content_type: str = "text/plain",
        min_interval: float = 0.05,
        names: dict[str, str] | None = None,
    ) -> None:
        self._options = dict(
            max_rendered=max_rendered, height=height, content_type=content_type, min_interval=min_interval, names=names
        )
        self.endpoint: Endpoint | None = None
        self.conversations: dict[ImSession, Conversation] = {}
        self._lock = threading.RLock()
        self._subs: list[Any] = []
        self.selected: Conversation | None = None
        self.earlier: EarlierList | None = None
        if isinstance(target, ImSession):
            conv = Conversation(target, **self._options)
            self.conversations[target] = conv
            self.selected = conv
            super().__init__([conv], layout=w.Layout(width="100%", max_width="760px"))
            self.add_class("nim-chat")
            return
        if not isinstance(target, Endpoint):
            raise TypeError(
                "ChatPanel takes an ImSession (one conversation) or an Endpoint (all of its "
                f"conversations), not {type(target).__name__}"
            )
        self.endpoint = target
        target.pager_sessions = True  # a pager-mode text from somebody new shows as a conversation of its own
        self.uri_box = w.Text(placeholder="sip:bob@example.test", layout=w.Layout(width="auto"))
        with warnings.catch_warnings():  # Enter in the box; ipywidgets 8 deprecates on_submit but has no other
            warnings.simplefilter("ignore", DeprecationWarning)  # way to tell Enter from leaving the box
            self.uri_box.on_submit(lambda _t: self.start_chat(self.uri_box.value))
        self.new_button = w.Button(
            description="New chat", icon="plus", button_style="primary", layout=w.Layout(width="auto")
        )
        self.new_button.on_click(lambda _b: self.start_chat(self.uri_box.value))
        self.side_error = w.HTML()
        self.side_error.add_class("nim-side-error")
        self.conv_list = w.VBox([])
        title = w.HTML(
            f'<div class="nim-side-title">{r.avatar(target.display_name or target.uri.split(":", 1)[-1].split("@")[0], target.uri, 26)} '
            f"{r.html.escape(target.uri)}</div>"
        )
        self.main = w.Box(
            [w.HTML('<div class="nim-empty">No conversations yet: start one, or wait for an invitation.</div>')],
            layout=w.Layout(flex="1"),
        )
        # earlier runs' conversations (Platform(history=...)), read-only
        self.earlier = EarlierList(target, main=self.main, start_chat=self.start_chat, options=self._options)
        self.sidebar = w.VBox(
            [title, self.uri_box, self.new_button, self.side_error, self.conv_list, self.earlier],
            layout=w.Layout(width="240px", min_width="240px", margin="0 8px 0 0"),
        )
        self.sidebar.add_class("nim-side")
        style = w.HTML(r.CSS, layout=w.Layout(height="0px", margin="0"))
        super().__init__(
            [style, w.HBox([self.sidebar, self.main], layout=w.Layout(width="100%"))],
            layout=w.Layout(width="100%", max_width="1000px"),
        )
        self.add_class("nim-chat")
        self._subs = [
            target.on(ParticipantAdded, self._on_participant_added),
            target.on(IncomingSession, self._on_incoming),
            target.on(SessionStateChanged, lambda _e: self._refresh_list()),
        ]
        for s in target.sessions.sessions:
            conv = self._add_session(s)
            # an invitation that was already ringing when the panel was made
            pending = s.invitation
            if s.is_incoming and s.state is SessionState.CONNECTING and isinstance(pending, IncomingSession):
                conv.set_invite(pending)
                self._refresh_list()
        if self.selected is None:
            self.earlier.show_latest()  # where the user left off, until a live conversation takes the main area

    # -- public ------------------------------------------------------------------------------------------
    @property
    def conversation(self) -> Conversation | None:
        """The conversation shown (for ChatPanel(session), the only one)."""
        return self.selected

    def select(self, session: ImSession) -> None:
        """Show `session`'s conversation (adding it to the list if needed)."""
        conv = self.conversations[session]
        self.selected = conv
        if self.endpoint is not None:
            self.main.children = [conv]
            self._refresh_list()

    def start_chat(self, uri: str) -> None:
        """Invite `uri` (what the New chat button does); returns at once."""
        assert self.endpoint is not None
        uri = (uri or "").strip()
        if uri and not uri.lower().startswith(("sip:", "sips:")):
            uri = "sip:" + uri
        try:
            op = self.endpoint.sessions.create(uri)
        except Exception as exc:  # noqa: BLE001 - bad URI, endpoint disabled: say so next to the box
            self.side_error.value = r.html.escape(str(exc))
            return
        self.side_error.value = ""
        self.uri_box.value = ""

        def done(o) -> None:
            exc = o.exception()
            if exc is not None:
                self.side_error.value = r.html.escape(f"{uri}: {exc}")

        op.add_done_callback(done)

    def close(self) -> None:
        """Unsubscribe from the endpoint's events and close every conversation."""
        for sub in getattr(self, "_subs", ()):
            sub.cancel()
        for conv in list(getattr(self, "conversations", {}).values()):
            conv.close()
        if getattr(self, "earlier", None) is not None:
            self.earlier.close()
        super().close()

    # -- endpoint events (loop thread) ----------------------------------------------------------------------------
    def _add_session(self, session: ImSession) -> Conversation:
        with self._lock:
            conv = self.conversations.get(session)
            if conv is None:
                conv = Conversation(session, style=False, **self._options)
                self.conversations[session] = conv
                first = self.selected is None
            else:
                first = False
        if first or not session.is_incoming:
            self.select(session)  # the first conversation, or one this user just started
        else:
            self._refresh_list()
        return conv

    def _on_participant_added(self, e: ParticipantAdded) -> None:
        self._add_session(e.session)

    def _on_incoming(self, e: IncomingSession) -> None:
        conv = self._add_session(e.session)
        if e.session.state is SessionState.CONNECTING:
            conv.set_invite(e)
        self._refresh_list()

    def _refresh_list(self) -> None:
        with self._lock:
            items = list(self.conversations.items())
            selected = self.selected
        buttons = []
        for session, conv in items:
            state = session.state.value
            label = r.who_text(conv.name_of(session.remote), session.remote.uri)
            if conv.incoming is not None and session.state is SessionState.CONNECTING:
                label += " • invitation"
            elif state != "connected":
                label += f" ({state})"
            b = w.Button(
                description=label,
                tooltip=session.remote.uri,
                layout=w.Layout(width="100%"),
                button_style="info" if conv is selected else "",
            )
            b.add_class("nim-conv-item")
            b.on_click(lambda _b, s=session: self.select(s))
            buttons.append(b)
        old = self.conv_list.children
        self.conv_list.children = buttons
        for b in old:
            b.close()
