"""HTML for the chat panel: pure functions, no widget library, so they are cheap to test and to benchmark.

Everything a remote party controls (names, URIs, message bodies, SIP reasons) goes through `html.escape`
or, for text/html bodies, through nh3 (ammonia) with a small allow-list. Nothing rendered here can run
script or fetch anything: no <img>, no style/on* attributes, links only http(s)/mailto with rel=noopener.

Who wrote what cannot be spoofed with a display name (a SIP display name is whatever the other side typed):
every name is shown through `who_html` / `who_text`, which

- strip the characters that reorder or hide text (Unicode bidi embeddings, overrides and isolates
  U+202A-U+202E, U+2066-U+2069, the marks U+200E/U+200F/U+061C, zero-width joiners and spaces, every other
  control and format character), and isolate the name (`<bdi>`; FSI...PDI in plain text when it has
  right-to-left letters), so a name cannot reorder the text around it ("... wants to chat", the address);
- always put the real address next to it, as `Name <user@host>`, in ASCII (anything else percent-escaped,
  so `bоb@example.test` with a Cyrillic "о" cannot pass for `bob@example.test`); a name that is only the
  address's user part shows as the address alone;
- drop a name that looks like an address itself ("Bob <sip:bob@example.test>", full-width "＠" included):
  the real address is shown instead.

So a display name equal to another participant's, with homoglyphs or with zero-width joiners, still comes
with an address that tells the two apart. Message bodies are isolated by their own block (`<div dir="auto">`).
"""

from __future__ import annotations

import html
import unicodedata
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

# A palette that reads well on light and dark Jupyter themes (white initials on each).
PALETTE = ("#4f46e5", "#0891b2", "#059669", "#d97706", "#dc2626", "#7c3aed", "#db2777", "#2563eb", "#65a30d", "#ea580c")

HTML_TAGS = {
    "a",
    "b",
    "blockquote",
    "br",
    "code",
    "del",
    "div",
    "em",
    "i",
    "li",
    "ol",
    "p",
    "pre",
    "s",
    "span",
    "strong",
    "sub",
    "sup",
    "u",
    "ul",
}
HTML_ATTRIBUTES = {"a": {"href", "title"}}
URL_SCHEMES = {"http", "https", "mailto"}
GROUP_GAP = timedelta(minutes=5)  # a new group starts when one sender pauses this long


MAX_NAME = 64  # characters of a display name shown (a longer one is cut with "…")
MAX_ADDRESS = 96  # characters of an address shown (a longer one keeps its start and its end)
FSI, PDI = "\u2068", "\u2069"  # first-strong isolate ... pop directional isolate: <bdi> in plain text
_DROPPED = frozenset({"Cc", "Cf", "Cs", "Co"})  # controls, format (bidi, ZWJ, BOM, tags), surrogates, private use
_SPACES = frozenset({"Zl", "Zp", "Zs"})
_ADDRESS_MARKS = ("@", "<", ">", "sip:", "sips:", "tel:", "mailto:")


def clean_text(text: str, limit: int | None = None) -> str:
    """`text` without control and format characters (bidi controls, zero-width characters, ...), its runs of
    white space one space, at most `limit` characters. What a remote party's text becomes before it is shown
    outside a block of its own (a name, a reason)."""
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in _DROPPED:
            if ch in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85":
                out.append(" ")
        elif cat in _SPACES:
            out.append(" ")
        else:
            out.append(ch)
    cleaned = " ".join("".join(out).split())
    if limit is not None and len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned


def address(uri: str) -> str:
    """The address of a URI as the panel shows it: `user@host[:port]`, no scheme, parameters or headers, ASCII
    only (every other character percent-escaped as UTF-8, so a homoglyph shows as what it is)."""
    text = uri.strip().strip("<>")
    scheme, sep, rest = text.partition(":")
    if sep and scheme.lower() in ("sip", "sips", "tel"):
        text = rest
    text = text.split(";", 1)[0].split("?", 1)[0]
    shown = "".join(
        ch if 0x20 < ord(ch) < 0x7F else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "replace")) for ch in text
    )
    if len(shown) > MAX_ADDRESS:
        half = MAX_ADDRESS // 2 - 1
        shown = shown[:half] + "…" + shown[-half:]
    return shown or "?"


def _looks_like_address(name: str) -> bool:
    folded = unicodedata.normalize("NFKC", name).casefold()
    return any(mark in folded for mark in _ADDRESS_MARKS)


def label(name: str | None, uri: str) -> tuple[str, str | None]:
    """(the name to show, the address to show next to it, or None when the name shown *is* the address)."""
    addr = address(uri)
    shown = clean_text(name or "", MAX_NAME)
    user = addr.rsplit("@", 1)[0] if "@" in addr else None
    if not shown or _looks_like_address(shown) or shown.casefold() == addr.casefold() or shown == user:
        return addr, None
    return shown, addr


def _rtl(text: str) -> bool:
    return any(unicodedata.bidirectional(ch) in ("R", "AL", "AN") for ch in text)


def who_html(name: str | None, uri: str) -> str:
    """A participant as HTML: `<bdi>Name</bdi> <span class="nim-addr">&lt;user@host&gt;</span>` (see the module
    docstring: controls stripped, the name isolated, the real address always next to it)."""
    shown, addr = label(name, uri)
    out = f'<bdi class="nim-who">{html.escape(shown)}</bdi>'
    if addr is not None:
        out += f' <span class="nim-addr" dir="ltr">&lt;{html.escape(addr)}&gt;</span>'
    return out


def who_text(name: str | None, uri: str) -> str:
    """A participant as plain text (button labels, placeholders): `Name <user@host>`, the name isolated with
    FSI...PDI when it holds right-to-left letters."""
    shown, addr = label(name, uri)
    if _rtl(shown):
        shown = FSI + shown + PDI
    return shown if addr is None else f"{shown} <{addr}>"


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

    return nh3.clean(
        body,
        tags=HTML_TAGS,
        attributes=HTML_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


def body_html(text: str, content_type: str) -> str:
    """The body of one message as safe HTML: text/html sanitised, everything else escaped (line breaks kept)."""
    if content_type == "text/html":
        return sanitize_html(text)
    return html.escape(text).replace("\n", "<br>")


def avatar(name: str, uri: str, size: int = 32) -> str:
    return (
        f'<span class="nim-avatar" style="background:{colour_for(uri)};width:{size}px;height:{size}px;'
        f'line-height:{size}px;font-size:{max(10, size * 0.4):.0f}px" title="{html.escape(uri, quote=True)}">'
        f"{html.escape(initials(clean_text(name)))}</span>"
    )


def local_time(ts: datetime) -> str:
    return ts.astimezone().strftime("%H:%M")


@dataclass
class Entry:
    """One message as the panel shows it (a view of `ChatMessage` plus a cached HTML fragment)."""

    id: str
    direction: str  # "out" / "in"
    sender: str  # URI
    sender_name: str
    text: str
    content_type: str
    timestamp: datetime
    status: str  # sending / delivered / failed / received (the SIP outcome)
    sip_status: int | None = None
    reason: str = ""
    state: str = ""  # receipts (RFC 5438): sending / sent / delivered / displayed / failed; received / displayed
    _html: str | None = field(default=None, repr=False)
    _html_latest: bool = field(default=False, repr=False)

    def invalidate(self) -> None:
        self._html = None

    def fragment(self, latest: bool = False) -> str:
        """The message's HTML (cached). `latest`: the newest message we sent, whose state is spelled out."""
        if self._html is None or self._html_latest != latest:
            self._html_latest = latest
            self._html = (
                f'<div class="nim-msg nim-{self.status}" data-id="{html.escape(self.id, quote=True)}">'
                f'<div class="nim-body" dir="auto">{body_html(self.text, self.content_type)}</div>'
                f"{status_html(self, latest)}</div>"
            )
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
        title = html.escape(clean_text(title.format(sip=f"{e.sip_status or 200} {e.reason or 'OK'}")), quote=True)
        return f'<span class="nim-state nim-state-{state}" title="{title}">{mark}{" " + word if latest else ""}</span>'
    if e.status == "delivered":  # the server took it, then the recipient's device reported a failure
        reason = "the recipient's device reported that delivery failed"
    else:
        reason = f"{e.sip_status or ''} {e.reason}".strip() or "no response"
    return f'<span class="nim-state nim-state-failed">⚠ Not delivered: {html.escape(clean_text(reason))}</span>'


def group_header(e: Entry) -> str:
    when = e.timestamp.astimezone()
    return (
        f'<div class="nim-group-head"><span class="nim-name">{who_html(e.sender_name, e.sender)}</span>'
        f'<span class="nim-time" title="{when.strftime("%Y-%m-%d %H:%M:%S")}">{local_time(e.timestamp)}</span></div>'
    )


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
            parts.append(
                f'<div class="nim-group{mine}">{avatar(e.sender_name, e.sender, 36)}'
                f'<div class="nim-group-main">{group_header(e)}'
            )
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


def composing_html(people: list[tuple[str | None, str]]) -> str:
    """The composing line for (name, uri) pairs, each through `who_html` ('' for nobody), without the final
    ellipsis (the panel animates its dots)."""
    if not people:
        return ""
    return composing_text([who_html(name, uri) for name, uri in people])[:-1]


STATE_LABELS = {
    "idle": "idle",
    "connecting": "connecting…",
    "connected": "connected",
    "disconnecting": "leaving…",
    "disconnected": "disconnected",
}


PAGER_NOTE = (
    "Pager mode: this contact does not take IM sessions, so each message goes on its own "
    "(SIP MESSAGE, RFC 3428); typing and receipts still work if their client sends them."
)


def mode_badge(mode: str) -> str:
    """The header's note for a conversation in pager mode ("" in session mode)."""
    if mode != "pager":
        return ""
    return f'<span class="nim-mode" title="{html.escape(PAGER_NOTE)}">pager mode</span>'


def participant_chip(name: str, uri: str, state: str) -> str:
    return (
        f'<span class="nim-chip">{avatar(name, uri, 30)}<span class="nim-chip-text">'
        f'<span class="nim-chip-name">{who_html(name, uri)}</span>'
        f'<span class="nim-chip-state nim-pstate-{html.escape(state)}"><i></i>{STATE_LABELS.get(state, html.escape(state))}</span>'
        f"</span></span>"
    )


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
.nim-mode { font-size: 11px; padding: 1px 7px; border-radius: 9px; border: 1px solid #d1d5db;
  color: var(--jp-ui-font-color2, #6b7280); align-self: center; }
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
.nim-addr { font-weight: 400; font-size: 12px; color: var(--jp-ui-font-color2, #6b7280); unicode-bidi: isolate; }
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
