"""RFC 3994 "is composing" indications: the XML document and the sender/receiver state machines.

Sender rhythm (DESIGN.md §5, RFC 3994 §3.2): `active` on the first keystroke, refreshed every
`refresh` seconds (120) while typing continues, `idle` after `idle_timeout` seconds (15) without a
keystroke or when the user stops explicitly. Sending the content message moves the state to idle
without an idle indication, because the receiver infers idle from the message itself (RFC 3994 §3.2).

Receiver (RFC 3994 §4): `active` shows composing until the refresh interval lapses (default 120 s),
`idle` or a content message clears it.

Both machines are sans-IO: methods take `now` (seconds, any monotonic origin) and return actions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..sip.actions import StartTimer, StopTimer
from ..sip.errors import RemoteProtocolError
from .xmldoc import ascii_int, escape, parse_untrusted

CONTENT_TYPE = "application/im-iscomposing+xml"
NS = "urn:ietf:params:xml:ns:im-iscomposing"
DEFAULT_REFRESH = 120.0
IDLE_TIMEOUT = 15.0
MAX_DOCUMENT = 4096
# A peer's <refresh> is capped here: it only sets how long "composing" stays shown without news, and a value
# of 400 digits used to overflow float() in the receiver (an exception instead of a 200)
MAX_REFRESH = 3600


class ComposingState(str, enum.Enum):
    IDLE = "idle"
    ACTIVE = "active"


@dataclass(frozen=True)
class Indication:
    state: ComposingState
    refresh: int | None = None
    content_type: str | None = None


def build(indication: Indication) -> bytes:
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<isComposing xmlns="{NS}">\n',
        f"  <state>{indication.state.value}</state>\n",
    ]
    if indication.content_type:
        parts.append(f"  <contenttype>{escape(indication.content_type)}</contenttype>\n")
    if indication.refresh is not None:
        parts.append(f"  <refresh>{int(indication.refresh)}</refresh>\n")
    parts.append("</isComposing>\n")
    return "".join(parts).encode("utf-8")


def parse(body: bytes) -> Indication:
    """Parse an isComposing document; RemoteProtocolError (400) for anything that is not one."""
    root = parse_untrusted(body, limit=MAX_DOCUMENT, what="isComposing")
    if root.tag not in (f"{{{NS}}}isComposing", "isComposing"):
        raise RemoteProtocolError(f"unexpected root element {root.tag!r}")

    def child(name: str) -> str | None:
        el = root.find(f"{{{NS}}}{name}")
        if el is None:
            el = root.find(name)
        return el.text.strip() if el is not None and el.text else None

    state_text = (child("state") or "").lower()
    try:
        state = ComposingState(state_text)
    except ValueError:
        raise RemoteProtocolError(f"unknown composing state {state_text!r}") from None
    refresh = ascii_int(child("refresh"))  # a refresh that is not a plain number is ignored, as RFC 3994 §4 allows
    if refresh is not None:
        refresh = min(refresh, MAX_REFRESH)
    return Indication(state=state, refresh=refresh, content_type=child("contenttype"))


# --- actions -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SendIndication:
    indication: Indication


@dataclass(frozen=True)
class Changed:
    """The receiver's view of the remote party changed."""

    composing: bool


Action = SendIndication | StartTimer | StopTimer | Changed


class ComposingSender:
    """Our side: turns keystrokes, sends and explicit stops into indications."""

    def __init__(
        self,
        *,
        refresh: float = DEFAULT_REFRESH,
        idle_timeout: float = IDLE_TIMEOUT,
        content_type: str | None = "text/plain",
    ) -> None:
        self.state = ComposingState.IDLE
        self.refresh = refresh
        self.idle_timeout = idle_timeout
        self.content_type = content_type
        self._last_active_sent = 0.0

    def _active(self, now: float) -> list[Action]:
        self._last_active_sent = now
        return [
            SendIndication(Indication(ComposingState.ACTIVE, int(self.refresh), self.content_type)),
            StartTimer("refresh", self.refresh),
        ]

    def keystroke(self, now: float) -> list[Action]:
        """The user typed (or `start_composing()` was called)."""
        actions: list[Action] = []
        if self.state is ComposingState.IDLE:
            self.state = ComposingState.ACTIVE
            actions += self._active(now)
        elif now - self._last_active_sent >= self.refresh:
            actions += self._active(now)
        actions.append(StartTimer("idle", self.idle_timeout))
        return actions

    def stop(self, now: float) -> list[Action]:
        """Explicit stop (input cleared, `stop_composing()`): send idle if we were active."""
        if self.state is ComposingState.IDLE:
            return []
        self.state = ComposingState.IDLE
        return [
            SendIndication(Indication(ComposingState.IDLE, None, self.content_type)),
            StopTimer("refresh"),
            StopTimer("idle"),
        ]

    def message_sent(self, now: float) -> list[Action]:
        """A content message went out: idle, with no indication (the message implies it)."""
        if self.state is ComposingState.IDLE:
            return []
        self.state = ComposingState.IDLE
        return [StopTimer("refresh"), StopTimer("idle")]

    def timer(self, name: str, now: float) -> list[Action]:
        if self.state is ComposingState.IDLE:
            return []
        if name == "idle":
            return self.stop(now)
        if name == "refresh":
            return self._active(now)
        return []


class ComposingReceiver:
    """The remote side as we see it: composing until idle, a message, or the refresh window lapses."""

    def __init__(self) -> None:
        self.composing = False

    def indication(self, indication: Indication, now: float) -> list[Action]:
        if indication.state is ComposingState.ACTIVE:
            window = float(indication.refresh) if indication.refresh else DEFAULT_REFRESH
            actions: list[Action] = [StartTimer("expire", window)]
            if not self.composing:
                self.composing = True
                actions.append(Changed(True))
            return actions
        return self._idle()

    def message_received(self, now: float) -> list[Action]:
        return self._idle()

    def timer(self, name: str, now: float) -> list[Action]:
        return self._idle() if name == "expire" else []

    def _idle(self) -> list[Action]:
        if not self.composing:
            return []
        self.composing = False
        return [Changed(False), StopTimer("expire")]
