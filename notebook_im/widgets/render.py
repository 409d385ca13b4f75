"""HTML for the chat panel: pure functions, no widget library, so they are cheap to test and to benchmark.

Everything a remote party controls (names, URIs, message bodies, SIP reasons) goes through `html.escape`
or, for text/html bodies, through nh3 (ammonia) with a small allow-list. Nothing rendered here can run
script or fetch anything: no <img>, no style/on* attributes, links only http(s)/mailto with rel=noopener.
"""
from __future__ import annotations

import html
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable

# A palette that reads well on light and dark Jupyter themes (white initials on each).
PALETTE = ("#4f46e5", "#0891b2", "#059669", "#d97706", "#dc2626", "#7c3aed", "#db2777", "#2563eb",
           "#65a30d", "#ea580c")

HTML_TAGS = {"a", "b", "blockquote", "br", "code", "del", "div", "em", "i", "li", "ol", "p", "pre", "s", "span",
             "strong", "sub", "sup", "u", "ul"}
HTML_ATTRIBUTES = {"a": {"href", "title"}}
URL_SCHEMES = {"http", "https", "mailto"}
GROUP_GAP = timedelta(minutes=5)  # a new group starts when one sender pauses this long


def colour_for(uri: str) -> str:
    """A stable colour per participant (the same URI gets the same colour in every panel and session)."""
    return PALETTE[zlib.crc32(uri.strip().lower().encode("utf-8")) % len(PALETTE)]


def initials(name: str) -> str:
    """'Bob Smith' -> 'BS', 'alice' -> 'A', 'sip:carol@x' -> 'C'."""
    name = name.strip()
    if name.lower().startswith(("sip:", "sips:")):
        name = name.split(":", 1)[1].split("@", 1)[0]
    words = [w for w in name.replace(".", " ").replace("_", " ").replace("-", " ").split() if w]
    if len(words) >= 2:
        return (words[0][0] + words[-1][0]).upper()
    return (words[0][0] if words else "?").upper()


def sanitize_html(body: str) -> str:
    """A text/html body reduced to inert formatting (nh3: the Rust ammonia sanitiser)."""
    import nh3

    return nh3.clean(body, tags=HTML_TAGS, attributes=HTML_ATTRIBUTES, url_schemes=URL_SCHEMES,
                     link_rel="noopener noreferrer nofollow", strip_comments=True)


def body_html(text: str, content_type: str) -> str:
    """The body of one message as safe HTML: text/html sanitised, everything else escaped (line breaks kept)."""
    if content_type == "text/html":
        return sanitize_html(text)
    return html.escape(text).replace("\n", "<br>")


def avatar(name: str, uri: str, size: int = 32) -> str:
    return (f'<span class="nim-avatar" style="background:{colour_for(uri)};width:{size}px;height:{size}px;'
            f'line-height:{size}px;font-size:{max(10, size * 0.4):.0f}px" title="{html.escape(uri, quote=True)}">'
            f"{html.escape(initials(name))}</span>")


def local_time(ts: datetime) -> str:
    return ts.astimezone().strftime("%H:%M")


@dataclass
class Entry:
    """One message as the panel shows it (a view of `ChatMessage` plus a cached HTML fragment)."""

    id: str
    direction: str          # "out" / "in"
    sender: str             # URI
    sender_name: str
    text: str
    content_type: str
    timestamp: datetime
    status: str             # sending / delivered / failed / received (the SIP outcome)
    sip_status: int | None = None
    reason: str = ""
    state: str = ""         # receipts (RFC 5438): sending / sent / delivered / displayed / failed; received / displayed
    _html: str | None = field(default=None, repr=False)
    _html_latest: bool = field(default=False, repr=False)

    def invalidate(self) -> None:
        self._html = None

    def fragment(self, latest: bool = False) -> str:
        """The message's HTML (cached). `latest`: the newest message we sent, whose state is spelled out."""
        if self._html is None or self._html_latest != latest:
            self._html_latest = latest
            self._html = (f'<div class="nim-msg nim-{self.status}" data-id="{html.escape(self.id, quote=True)}">'
                          f'<div class="nim-body">{body_html(self.text, self.content_type)}</div>'
                          f"{status_html(self, latest)}</div>")
        return self._html


# state -> (tick, word spelled out on the newest sent message, tooltip): WhatsApp/Signal-style receipts
TICKS = {
    "sent": ("✓", "Sent", "Sent ({sip}): the server took it; no delivery receipt from the recipient yet"),
    "delivered": ("✓✓", "Delivered", "Delivered to the recipient's device ({sip})"),
    "displayed": ("✓✓", "Seen", "Seen by the recipient ({sip})"),
}


def tick_state(e: Entry) -> str:
    """The receipt state of an entry: its `state`, or the one its SIP `status` implies (a 2xx is "sent")."""
    return e.state or {"delivered": "sent"}.get(e.status, e.status)


def status_html(e: Entry, latest: bool = False) -> str:
    """Delivery state of a sent message: 'Sending…', a tick (✓ sent, ✓✓ delivered, blue ✓✓ seen; the word
    spelled out on the newest one), or the failure with its SIP status and reason, always spelled out."""
    if e.direction != "out":
        return ""
    state = tick_state(e)
    if state == "sending":
        return '<span class="nim-state nim-state-sending" title="Waiting for the final response">Sending…</span>'
    tick = TICKS.get(state)
    if tick is not None:
        mark, word, title = tick
        title = html.escape(title.format(sip=f"{e.sip_status or 200} {e.reason or 'OK'}".strip()), quote=True)
        return f'<span class="nim-state nim-state-{state}" title="{title}">{mark}{" " + word if latest else ""}</span>'
    if e.status == "delivered":  # the server took it, then the recipient's device reported a failure
        reason = "the recipient's device reported that delivery failed"
    else:
        reason = f"{e.sip_status or ''} {e.reason}".strip() or "no response"
    return f'<span class="nim-state nim-state-failed">⚠ Not delivered: {html.escape(reason)}</span>'


def group_header(e: Entry) -> str:
    when = e.timestamp.astimezone()
    return (f'<div class="nim-group-head"><span class="nim-name">{html.escape(e.sender_name)}</span>'
            f'<span class="nim-time" title="{when.strftime("%Y-%m-%d %H:%M:%S")}">{local_time(e.timestamp)}</span></div>')


def messages_html(entries: Iterable[Entry], *, empty: str = "No messages yet. Say hello!") -> str:
    """Entries (oldest first) as groups: consecutive messages of one sender share one avatar and header."""
    entries = list(entries)
    latest_out = next((e for e in reversed(entries) if e.direction == "out"), None)
    parts: list[str] = []
    prev: Entry | None = None
    for e in entries:
        if prev is None or e.sender != prev.sender or e.timestamp - prev.timestamp > GROUP_GAP:
            if prev is not None:
                parts.append("</div></div>")
            mine = " nim-mine" if e.direction == "out" else ""
            parts.append(f'<div class="nim-group{mine}">{avatar(e.sender_name, e.sender, 36)}'
                         f'<div class="nim-group-main">{group_header(e)}')
        parts.append(e.fragment(e is latest_out))
        prev = e
    if prev is None:
        return f'<div class="nim-empty">{html.escape(empty)}</div>'
    parts.append("</div></div>")
    return "".join(parts)


def composing_text(names: list[str]) -> str:
    """'Bob is typing…', 'Bob and Carol are typing…', 'Bob, Carol and Dave are typing…' ('' for nobody)."""
    if not names:
        return ""
    if len(names) == 1:
        return f"{names[0]} is typing…"
    return f"{', '.join(names[:-1])} and {names[-1]} are typing…"


STATE_LABELS = {"idle": "idle", "connecting": "connecting…", "connected": "connected",
                "disconnecting": "leaving…", "disconnected": "disconnected"}


def participant_chip(name: str, uri: str, state: str) -> str:
    return (f'<span class="nim-chip">{avatar(name, uri, 30)}<span class="nim-chip-text">'
            f'<span class="nim-chip-name">{html.escape(name)}</span>'
            f'<span class="nim-chip-state nim-pstate-{html.escape(state)}"><i></i>{STATE_LABELS.get(state, html.escape(state))}</span>'
            f"</span></span>")


CSS = """
<style>
.nim-chat { font-family: -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif;
  font-size: 14px; color: var(--jp-ui-font-color0, #1f2328); }
.nim-chat .widget-html, .nim-chat .widget-html-content { line-height: 1.4; height: auto; }
.nim-chat-conv { border: 1px solid var(--jp-border-color1, #d0d7de); border-radius: 10px; overflow: hidden;
  background: var(--jp-layout-color0, #fff); }
.nim-chat-head { background: var(--jp-layout-color1, #f6f8fa); border-bottom: 1px solid var(--jp-border-color2, #e5e7eb);
  padding: 6px 10px; align-items: center; }
.nim-chip { display: inline-flex; align-items: center; gap: 8px; margin-right: 14px; }
.nim-chip-text { display: inline-flex; flex-direction: column; line-height: 1.2; }
.nim-chip-name { font-weight: 600; font-size: 15px; }
.nim-chip-state { font-size: 12px; color: var(--jp-ui-font-color2, #6b7280); }
.nim-chip-state i { display: inline-block; width: 8px; height: 8px; border-radius: 50%; margin-right: 5px;
  background: #9ca3af; vertical-align: 0; }
.nim-pstate-connected i { background: #22c55e; }
.nim-pstate-connecting i, .nim-pstate-idle i { background: #f59e0b; }
.nim-pstate-disconnecting i, .nim-pstate-disconnected i { background: #9ca3af; }
.nim-avatar { display: inline-block; flex: none; border-radius: 50%; color: #fff; text-align: center;
  font-weight: 600; letter-spacing: .5px; user-select: none; }
.nim-chat-messages { overflow-y: auto; padding: 4px 0; }
.nim-group { display: flex; gap: 10px; padding: 6px 14px; align-items: flex-start; }
.nim-group:hover { background: var(--jp-layout-color1, #f8fafc); }
.nim-group-main { min-width: 0; flex: 1; }
.nim-group-head { display: flex; align-items: baseline; gap: 8px; }
.nim-name { font-weight: 700; }
.nim-time { font-size: 12px; color: var(--jp-ui-font-color2, #6b7280); }
.nim-chat + .nim-chat { margin-left: 14px; }
.nim-msg { padding: 1px 0; display: flex; align-items: baseline; gap: 10px; }
.nim-body { flex: 1; min-width: 0; white-space: normal; overflow-wrap: anywhere; }
.nim-body p { margin: 0; }
.nim-body pre { margin: 2px 0; padding: 6px 8px; background: var(--jp-layout-color2, #f3f4f6); border-radius: 6px; }
.nim-state { flex: none; font-size: 11.5px; white-space: nowrap; }
.nim-state-failed { white-space: normal; max-width: 45%; text-align: right; }
.nim-state-sending { color: var(--jp-ui-font-color2, #6b7280); font-style: italic; }
.nim-state-sent { color: var(--jp-ui-font-color2, #6b7280); }
.nim-state-delivered { color: #16a34a; }
.nim-state-displayed { color: #2563eb; font-weight: 600; }
.nim-state-failed { color: #dc2626; font-weight: 600; }
.nim-failed .nim-body { color: var(--jp-ui-font-color2, #6b7280); }
.nim-empty { color: var(--jp-ui-font-color2, #6b7280); text-align: center; padding: 40px 0; }
.nim-chat-status { padding: 0 14px; height: 22px; min-height: 22px; font-size: 12.5px; font-style: italic;
  color: var(--jp-ui-font-color2, #6b7280); overflow: hidden; white-space: nowrap; text-overflow: ellipsis; }
.nim-dots span { animation: nim-blink 1.4s infinite both; }
.nim-dots span:nth-child(2) { animation-delay: .2s; } .nim-dots span:nth-child(3) { animation-delay: .4s; }
@keyframes nim-blink { 0% { opacity: .2; } 20% { opacity: 1; } 100% { opacity: .2; } }
.nim-earlier { align-self: center; }
.nim-invite { background: #eef2ff; border-bottom: 1px solid #c7d2fe; padding: 6px 12px; align-items: center; gap: 8px; }
.nim-composer { display: flex; gap: 8px; align-items: flex-end; padding: 6px 12px 12px 12px; }
.nim-composer textarea { flex: 1; resize: none; box-sizing: border-box; min-height: 38px; max-height: 140px;
  padding: 8px 10px; border: 1px solid var(--jp-border-color1, #c9ced6); border-radius: 8px; font: inherit;
  font-size: 14px; line-height: 1.4; background: var(--jp-layout-color0, #fff); color: inherit; outline: none; }
.nim-composer textarea:focus { border-color: #4f46e5; box-shadow: 0 0 0 2px rgba(79, 70, 229, .18); }
.nim-composer button { height: 38px; padding: 0 16px; border: 0; border-radius: 8px; background: #4f46e5; color: #fff;
  font-weight: 600; cursor: pointer; font: inherit; font-weight: 600; }
.nim-composer button:disabled, .nim-composer textarea:disabled { opacity: .5; cursor: default; }
.nim-side { border: 1px solid var(--jp-border-color1, #d0d7de); border-radius: 10px; padding: 8px;
  background: var(--jp-layout-color1, #f6f8fa); }
.nim-side-title { font-weight: 700; padding: 2px 4px 6px 4px; }
.nim-side .nim-conv-item { width: 100%; text-align: left; }
.nim-side-error { color: #dc2626; font-size: 12px; }
</style>
"""
