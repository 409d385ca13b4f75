"""Arguments of the public API, checked where they enter: before anything is scheduled or sent, with an error
that names the argument and says what a good value looks like.

Every string that ends up in a SIP header (a URI, a display name, a user name, a reason phrase, a realm) goes
through `header_text` or `sip_uri` here. CR and LF would start a header line of the caller's making (header
injection: `display_name="A\\r\\nVia: ..."`), NUL cuts a message short in many stacks, and the other control
characters make every peer refuse the message. `sip.headers.field_value` refuses CR/LF/NUL again as the
last gate; this module is where the caller learns which argument was wrong.
"""

from __future__ import annotations

from typing import Any

from ..errors import MessageTooLarge
from ..sip.errors import RemoteProtocolError
from ..sip.parser import MAX_MESSAGE
from ..sip.uri import SipUri

MAX_DISPLAY_NAME = 256  # characters; the header line must stay far below the 8 KB peers accept
MAX_USERNAME = 256
MAX_URI = 2048
MAX_REASON = 128
# bytes of UTF-8 text in one MESSAGE: what fits in a SIP message (64 KiB, our parser's and most servers'
# limit) with room for the headers and a message/cpim wrapper
MAX_TEXT_BYTES = MAX_MESSAGE - 5_535

_CONTROLS = {c: None for c in [*range(0, 9), *range(10, 32), 127]}  # all C0 controls but TAB, and DEL


def header_text(value: Any, argument: str, *, max_len: int, optional: bool = False, quoted: bool = False) -> str | None:
    """`value` if it may go into a header: a str without control characters (TAB allowed), at most `max_len`
    characters, and for a value written inside a quoted-string without escapes, without `"` or `\\`."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{argument} must be a str{' or None' if optional else ''}, not {type(value).__name__}")
    if value.translate(_CONTROLS) != value:
        what = (
            "CR or LF (they would inject SIP header lines)"
            if ("\r" in value or "\n" in value)
            else "NUL"
            if "\0" in value
            else "control characters"
        )
        raise ValueError(f"{argument} must not contain {what}: {value[:40]!r}")
    if len(value) > max_len:
        raise ValueError(f"{argument} is {len(value):,} characters long; at most {max_len} are allowed")
    if quoted and ('"' in value or "\\" in value):
        raise ValueError(f"{argument} must not contain '\"' or '\\\\' (it is sent as a quoted string): {value[:40]!r}")
    return value


def display_name(value: Any) -> str | None:
    """A display name for From/Contact/To: None, or printable text of at most `MAX_DISPLAY_NAME` characters
    (quotes are fine: `Address` escapes them)."""
    return header_text(value, "display_name", max_len=MAX_DISPLAY_NAME, optional=True)


def username(value: Any) -> str | None:
    """A digest user name: sent as `username="..."` (RFC 7616), so no quotes or backslashes either."""
    return header_text(value, "username", max_len=MAX_USERNAME, optional=True, quoted=True)


def sip_uri(uri: Any, what: str = "remote_uri", *, user: bool = True) -> SipUri:
    """A user-supplied SIP URI, parsed, with a message that says what a good one looks like. `user=False`
    accepts a server URI without a user part."""
    if not isinstance(uri, str):
        raise TypeError(f"{what} must be a string such as 'sip:bob@example.test', not {type(uri).__name__}")
    header_text(uri, what, max_len=MAX_URI)
    example = "'sip:bob@example.test'" if user else "'sip:127.0.0.1:5060'"
    try:
        parsed = SipUri.parse(uri)
    except RemoteProtocolError:
        raise ValueError(f"{what} {uri[:80]!r} is not a SIP URI; write it like {example}") from None
    if parsed.scheme not in ("sip", "sips"):
        raise ValueError(
            f"{what} {uri[:80]!r} is a {parsed.scheme}: URI; only sip: and sips: URIs can be reached; "
            f"write it like {example}"
        )
    if user and not parsed.user:
        raise ValueError(f"{what} {uri!r} has no user part; write it like {example}")
    return parsed


def reason_phrase(value: Any) -> str | None:
    """A reason phrase of our own (`incoming.reject(486, reason)`)."""
    return header_text(value, "reason", max_len=MAX_REASON, optional=True)


def text_size(text: str, target: str) -> None:
    """Refuse a message text that cannot fit in one SIP MESSAGE, before anything is sent."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise MessageTooLarge(
            "MESSAGE",
            target,
            f"the text is {size:,} bytes in UTF-8; at most {MAX_TEXT_BYTES:,} "
            "fit in one SIP MESSAGE: split it, or share large content another way",
        )
