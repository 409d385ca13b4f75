"""The shapes Office Communications Server / Lync clients put on the wire for IM, read on receipt (sans-IO).

Three things an OCS-style client sends that RFC-only peers do not, as the open-source OCS client SIPE writes them
(github.com/tieto/sipe, `src/core`):

- **Typing as INFO.** In the session's dialog, `INFO` with `Content-Type: application/xml` and the body
  `<?xml version="1.0"?><KeyboardActivity> <status status="type" /></KeyboardActivity>` (`"idle"` when the
  user stops; `sipe-user.c`, `sipe_core_user_feedback_typing`). `parse_keyboard_activity` turns it into the
  RFC 3994 `iscomposing.Indication` the session's `ComposingReceiver` already takes, so refresh and expiry
  work as for is-composing. The document has no refresh interval: SIPE repeats `type` every 4 s while the user
  types (`purple-plugin-common.c`, `sipe_purple_send_typing` returns 4) and shows a peer typing for 6 s after
  the last one (`purple-user.c`, `SIPE_TYPING_RECV_TIMEOUT`). `KEYBOARD_ACTIVITY_WINDOW` takes the same 6 s:
  RFC 3994's default of 120 s would show somebody typing for two minutes after they closed the window.
- **The first message inside the INVITE.** A header `ms-text-format: text/plain; charset=UTF-8;ms-body=<base64
  of the text>` (optionally `;msgr=...`, an encoded font, which is ignored here; `sipe-im.c`, `sipe_invite`).
  `first_message` decodes it, bounded, and refuses with a reason what it cannot read. A receiver that took it
  says so with `Supported: ms-text-format` in its 200 OK; a sender that does not see that sends the text again
  as a MESSAGE once the session is up (`sipe-im.c`, `process_invite_response`; `sipe-incoming.c`,
  `process_incoming_invite`). So a first message that cannot be read is not fatal: the INVITE is answered as
  usual, without that header, and the text comes again.
- **`Ms-Conversation-ID`**, a header of the INVITE naming the conversation (SIPE writes a random number).
  `conversation_id` reads it, bounded.

Every XML body goes through the hardened `xmldoc.parse_untrusted` (no DTD, bounded size and depth).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from ..sip.errors import RemoteProtocolError
from . import iscomposing as ic
from .xmldoc import parse_untrusted

KEYBOARD_CONTENT_TYPE = "application/xml"
KEYBOARD_ROOT = "KeyboardActivity"
KEYBOARD_ACTIVITY_WINDOW = 6  # seconds a `type` keeps the peer shown typing (SIPE's own receiver window)
MAX_KEYBOARD_DOCUMENT = ic.MAX_DOCUMENT  # 4 KiB, as an is-composing document (SIPE's is under 100 bytes)

TEXT_FORMAT_HEADER = "ms-text-format"
CONVERSATION_HEADER = "Ms-Conversation-ID"
SUPPORTED = "ms-text-format"  # in our 200 OK: "the first message in your INVITE was taken"
# The first message rides in one header line, which the parser bounds at 8 KiB; 4 KiB of text (5,464 base64
# characters) leaves room for the rest of the line and makes the limit ours, with our reason, not the parser's.
MAX_FIRST_MESSAGE = 4096
MAX_ENCODED = 4 * ((MAX_FIRST_MESSAGE + 2) // 3)
FIRST_MESSAGE_TYPES = ("text/plain", "text/html", "text/enriched")  # what a session shows; others are refused
CHARSETS = ("utf-8", "utf8", "us-ascii", "ascii")  # SIPE writes UTF-8; US-ASCII is a subset of it
MAX_CONVERSATION_ID = 256


def parse_keyboard_activity(body: bytes) -> ic.Indication | None:
    """The is-composing indication an OCS `KeyboardActivity` document stands for: `type` → active (with
    `KEYBOARD_ACTIVITY_WINDOW` as its refresh), `idle` → idle. None for an XML document that is not a
    KeyboardActivity, or one with another status (as SIPE, which reacts to these two only).
    RemoteProtocolError (400; 413 too large; 415 an encoding not taken) for what the hardened parser refuses."""
    root = parse_untrusted(body, limit=MAX_KEYBOARD_DOCUMENT, what=KEYBOARD_ROOT)
    if _local(root.tag) != KEYBOARD_ROOT:
        return None
    status = next((el for el in root if _local(el.tag) == "status"), None)
    value = (status.get("status") or "").strip().lower() if status is not None else ""
    if value == "type":
        return ic.Indication(ic.ComposingState.ACTIVE, refresh=KEYBOARD_ACTIVITY_WINDOW)
    if value == "idle":
        return ic.Indication(ic.ComposingState.IDLE)
    return None


def _local(tag: str) -> str:
    """An element name without its namespace ("{urn:x}KeyboardActivity" → "KeyboardActivity")."""
    return tag.rpartition("}")[2]


@dataclass(frozen=True)
class FirstMessage:
    """The text an INVITE carried in its `ms-text-format` header."""

    content_type: str  # "text/plain", "text/html" or "text/enriched"
    text: str


def first_message(value: str | None) -> FirstMessage | None:
    """The first message in an `ms-text-format` header value; None without the header or without `ms-body`
    (a format with no text is not a message). RemoteProtocolError (400) saying what is wrong for a body that
    cannot be read: base64 that is invalid or longer than `MAX_ENCODED` characters, a text over
    `MAX_FIRST_MESSAGE` bytes, a charset other than UTF-8 (or US-ASCII), bytes that are not UTF-8, an empty
    text, or a media type a session does not show (`text/rtf`, SIPE's `text/x-msmsgsinvite` file transfers,
    `multipart/...`)."""
    if value is None:
        return None
    media, *raw_params = value.split(";")
    params: dict[str, str] = {}
    for p in raw_params:
        name, _, v = p.partition("=")
        params.setdefault(name.strip().lower(), v.strip())
    if "ms-body" not in params:
        return None
    media = media.strip().lower()
    if media not in FIRST_MESSAGE_TYPES:
        raise RemoteProtocolError(f"first message in {media[:40]!r}: only {', '.join(FIRST_MESSAGE_TYPES)} are shown")
    charset = params.get("charset", "utf-8").strip('"').lower()
    if charset not in CHARSETS:
        raise RemoteProtocolError(f"first message in charset {charset[:40]!r}: only UTF-8 is taken")
    encoded = params["ms-body"]
    if len(encoded) > MAX_ENCODED:
        raise RemoteProtocolError(
            f"first message too large: {len(encoded):,} base64 characters, at most {MAX_ENCODED:,} "
            f"({MAX_FIRST_MESSAGE:,} bytes of text)"
        )
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise RemoteProtocolError("first message is not valid base64") from None
    if not raw:
        raise RemoteProtocolError("first message is empty")
    if len(raw) > MAX_FIRST_MESSAGE:
        raise RemoteProtocolError(f"first message too large: {len(raw):,} bytes, at most {MAX_FIRST_MESSAGE:,}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"first message is not valid UTF-8: byte {exc.start}") from None
    return FirstMessage(media, text)


def conversation_id(value: str | None) -> str | None:
    """The `Ms-Conversation-ID` of an INVITE, stripped; None without one, or for a value longer than
    `MAX_CONVERSATION_ID` characters (a name, not a payload)."""
    if value is None:
        return None
    value = value.strip()
    return value if 0 < len(value) <= MAX_CONVERSATION_ID else None


__all__ = [
    "CONVERSATION_HEADER",
    "FirstMessage",
    "KEYBOARD_ACTIVITY_WINDOW",
    "KEYBOARD_CONTENT_TYPE",
    "MAX_ENCODED",
    "MAX_FIRST_MESSAGE",
    "SUPPORTED",
    "TEXT_FORMAT_HEADER",
    "conversation_id",
    "first_message",
    "parse_keyboard_activity",
]
