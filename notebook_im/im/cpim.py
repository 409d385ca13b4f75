"""RFC 3862 Common Presence and Instant Messaging (CPIM) message format, `message/cpim`. Sans-IO.

The conference focus relays each participant's MESSAGE inside a CPIM wrapper whose `From:` names the
original sender (what RFC 4975/5365-style conferences do), so that receivers show who wrote it even
though the SIP MESSAGE comes from the focus. The RFC 5438 namespace carries the message id
(`imdn.Message-ID`) for duplicate suppression.

    wrap(sender, recipient, body, content_type, message_id=..., display_name=...) -> bytes
    unwrap(body) -> Cpim(sender, display_name, recipient, content_type, body, message_id, datetime,
                         disposition_notification, content_disposition)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from ..sip.errors import RemoteProtocolError
from ..sip.uri import Address

CONTENT_TYPE = "message/cpim"
IMDN_NS = "urn:ietf:params:imdn"
MAX_HEADERS = 64  # header lines in each of the two blocks
MAX_LINE = 4096  # bytes in one header line
# fields that say who sent a message or which message it is: more than one of each is ambiguous, and an
# ambiguity about the sender is a spoof (RFC 3862 §5 allows From and DateTime once)
_ONCE = ("From", "DateTime")
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


@dataclass(frozen=True)
class Cpim:
    sender: str  # the original sender's URI
    display_name: str | None
    recipient: str | None
    content_type: str  # of the wrapped body, parameters included
    body: bytes
    message_id: str | None = None
    datetime: str | None = None
    disposition_notification: str | None = None  # imdn.Disposition-Notification (RFC 5438 request)
    content_disposition: str | None = None  # "notification" on an IMDN


# C0 controls but HTAB, DEL and C1 controls: a CPIM header value ends up in events, the history and the chat
# panel, and none of them has a use for an ESC, a NUL or a NEL (RFC 3862 §3.2 header values are UTF-8 text)
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _clean(value: str) -> str:
    """`value` fit for one header line of ours: every control character (CR and LF above all) a space, so what
    `wrap` writes is always what `unwrap` accepts."""
    return _CONTROLS.sub(" ", value)


def format_datetime(when: datetime) -> str:
    """RFC 3339 UTC with milliseconds (2026-12-05T15:00:00.123Z), as DateTime headers and IMDN's <datetime> want
    it; a naive `when` is local time. (isoformat is C and a tenth of strftime's cost, twice per receipt.)"""
    return when.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def wrap(
    sender: str,
    recipient: str,
    body: bytes,
    content_type: str,
    *,
    message_id: str | None = None,
    display_name: str | None = None,
    now: datetime | None = None,
    content_headers: dict[str, str] | None = None,
    disposition: str | None = None,
) -> bytes:
    """A message/cpim body around `body`. `content_headers` go next to the inner Content-Type (an IMDN's
    `Content-Disposition: notification`, RFC 5438 §7.1); `disposition` asks for notifications the way RFC 5438
    §6.3 does, in the wrapper (`imdn.Disposition-Notification: positive-delivery, display`), which is the only
    place liblinphone looks for it."""
    # quotes and backslashes are dropped from the display name: a name ending in a backslash used to escape the
    # closing quote, so every receiver refused the wrapper (and a quote could end the quoted-string early)
    name = ""
    if display_name:
        name = '"' + _clean(display_name).replace('"', "").replace("\\", "") + '" '
    when = format_datetime(now or datetime.now(timezone.utc))
    lines = [f"From: {name}<{_clean(sender)}>", f"To: <{_clean(recipient)}>", f"DateTime: {when}"]
    if message_id:
        lines += [f"NS: imdn <{IMDN_NS}>", f"imdn.Message-ID: {_clean(message_id)}"]
        if disposition:
            lines.append(f"imdn.Disposition-Notification: {_clean(disposition)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    extra = "".join(f"{_clean(k)}: {_clean(v)}\r\n" for k, v in (content_headers or {}).items())
    inner = f"Content-Type: {_clean(content_type)}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.encode("utf-8") + inner.encode("utf-8") + body


def _split(data: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """`_split_lines`, at once for the usual block (CRLF line ends only, UTF-8, no control character, no
    overlong or blank-looking line, few enough lines): one search for its end and one check of all of it.
    Anything else goes line by line, which also words the errors."""
    end = data.find(b"\r\n\r\n", 0, MAX_HEADERS * (MAX_LINE + 2))
    if end > 0:
        block = data[:end]
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        lines = text.split("\r\n")
        if (
            text
            and text.isascii()  # (then a line's length in characters is its length in bytes, which the limit is)
            and len(lines) <= MAX_HEADERS
            and not _CONTROLS.search(text.replace("\r\n", ""))
            and all(line.strip() and len(line) <= MAX_LINE for line in lines)
        ):
            headers: list[tuple[str, str]] = []
            for line in lines:
                name, sep, value = line.partition(":")
                name = name.strip()
                if not sep or not name or not _TOKEN.fullmatch(name):
                    break
                headers.append((name, value.strip()))
            else:
                return headers, data[end + 4 :]
    return _split_lines(data)


def _split_lines(data: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """The header lines up to the first empty line, and what follows it. Line by line, so the block ends at the
    *first* empty line whichever line end it uses (CRLF as RFC 3862 says, or a bare LF): searching for CRLFCRLF
    first used to let a bare-LF wrapper run on into its body whenever the body held a CRLFCRLF, so body lines
    were read as headers. Strict: UTF-8 only, no control characters, names are tokens, at most MAX_HEADERS
    lines of at most MAX_LINE bytes (RemoteProtocolError 400, 413 for too many)."""
    headers: list[tuple[str, str]] = []
    pos = 0
    while True:
        end = data.find(b"\n", pos, pos + MAX_LINE + 2)
        if end < 0:
            if len(data) - pos > MAX_LINE + 1:
                raise RemoteProtocolError(f"message/cpim header line longer than {MAX_LINE} bytes")
            raise RemoteProtocolError("message/cpim without a blank line after its headers")
        raw = data[pos:end]
        pos = end + 1
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            return headers, data[pos:]
        if len(raw) > MAX_LINE:
            raise RemoteProtocolError(f"message/cpim header line longer than {MAX_LINE} bytes")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("message/cpim header line is not UTF-8") from None
        if not line.strip():
            continue
        if _CONTROLS.search(line):
            raise RemoteProtocolError(f"control character in message/cpim header line {line[:60]!r}")
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name or not _TOKEN.fullmatch(name):
            raise RemoteProtocolError(f"bad message/cpim header line {line[:60]!r}")
        headers.append((name, value.strip()))
        if len(headers) > MAX_HEADERS:
            raise RemoteProtocolError("message/cpim has too many headers", 413)


def unwrap(data: bytes) -> Cpim:
    """Parse a message/cpim body; RemoteProtocolError (400; 413 for too many headers) if it is not one, or if it
    names its sender, date or message id more than once."""
    headers, rest = _split(data)
    sender = display = recipient = msg_id = when = disposition = None
    prefixes = {"imdn"}
    for name, value in headers:
        if name == "NS":
            prefix, _, uri = value.partition(" ")
            if uri.strip("<> ") == IMDN_NS:
                prefixes.add(prefix.strip())
    seen: set[str] = set()
    for name, value in headers:
        key = name
        if "." in name and name.split(".", 1)[0] in prefixes:
            key = "imdn." + name.split(".", 1)[1].lower()
        if key in _ONCE or key in ("imdn.message-id", "imdn.disposition-notification"):
            if key in seen:
                raise RemoteProtocolError(f"message/cpim with more than one {name}")
            seen.add(key)
        if name == "From":
            try:
                addr = Address.parse(value)
            except (RemoteProtocolError, ValueError):
                raise RemoteProtocolError(f"bad message/cpim From {value[:60]!r}") from None
            sender, display = str(addr.uri), addr.display_name
        elif name == "To":
            recipient = recipient or value.strip("<> ")
        elif name == "DateTime":
            when = value
        elif key == "imdn.message-id":
            msg_id = value
        elif key == "imdn.disposition-notification":
            disposition = value
    if not sender:
        raise RemoteProtocolError("message/cpim without From")
    inner, body = _split(rest)
    ct = next((v for n, v in inner if n.lower() == "content-type"), "text/plain")
    length = next((v for n, v in inner if n.lower() == "content-length"), None)
    if length is not None:
        if not (length.isascii() and length.isdigit()) or len(length) > 10:
            raise RemoteProtocolError(f"bad message/cpim Content-Length {length[:20]!r}")
        body = body[: int(length)]
    disp = next((v for n, v in inner if n.lower() == "content-disposition"), None)
    return Cpim(sender, display, recipient, ct, body, msg_id, when, disposition, disp)
