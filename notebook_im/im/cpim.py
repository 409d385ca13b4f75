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

from dataclasses import dataclass
from datetime import datetime, timezone

from ..sip.errors import RemoteProtocolError
from ..sip.uri import Address

CONTENT_TYPE = "message/cpim"
IMDN_NS = "urn:ietf:params:imdn"
MAX_HEADERS = 64


@dataclass(frozen=True)
class Cpim:
    sender: str                     # the original sender's URI
    display_name: str | None
    recipient: str | None
    content_type: str               # of the wrapped body, parameters included
    body: bytes
    message_id: str | None = None
    datetime: str | None = None
    disposition_notification: str | None = None   # imdn.Disposition-Notification (RFC 5438 request)
    content_disposition: str | None = None        # "notification" on an IMDN


def _clean(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


def wrap(sender: str, recipient: str, body: bytes, content_type: str, *, message_id: str | None = None,
         display_name: str | None = None, now: datetime | None = None,
         content_headers: dict[str, str] | None = None) -> bytes:
    """A message/cpim body around `body`. `content_headers` go next to the inner Content-Type (an IMDN's
    `Content-Disposition: notification`, RFC 5438 §7.1)."""
    name = f'"{_clean(display_name).replace(chr(34), "")}" ' if display_name else ""
    when = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    lines = [f"From: {name}<{_clean(sender)}>", f"To: <{_clean(recipient)}>", f"DateTime: {when}"]
    if message_id:
        lines += [f"NS: imdn <{IMDN_NS}>", f"imdn.Message-ID: {_clean(message_id)}"]
    head = "\r\n".join(lines) + "\r\n\r\n"
    extra = "".join(f"{_clean(k)}: {_clean(v)}\r\n" for k, v in (content_headers or {}).items())
    inner = f"Content-Type: {_clean(content_type)}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.encode("utf-8") + inner.encode("utf-8") + body


def _split(data: bytes) -> tuple[list[tuple[str, str]], bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = data.find(sep)
        if i >= 0:
            head, rest = data[:i], data[i + len(sep):]
            break
    else:
        raise RemoteProtocolError("message/cpim without a blank line after its headers")
    headers: list[tuple[str, str]] = []
    for raw in head.decode("utf-8", "replace").splitlines():
        if not raw.strip():
            continue
        name, sep, value = raw.partition(":")
        if not sep:
            raise RemoteProtocolError(f"bad message/cpim header line {raw[:60]!r}")
        headers.append((name.strip(), value.strip()))
        if len(headers) > MAX_HEADERS:
            raise RemoteProtocolError("message/cpim has too many headers", 413)
    return headers, rest


def unwrap(data: bytes) -> Cpim:
    """Parse a message/cpim body; RemoteProtocolError (400) if it is not one."""
    headers, rest = _split(data)
    sender = display = recipient = msg_id = when = disposition = None
    prefixes = {"imdn"}
    for name, value in headers:
        if name == "NS":
            prefix, _, uri = value.partition(" ")
            if uri.strip("<> ") == IMDN_NS:
                prefixes.add(prefix.strip())
    for name, value in headers:
        if name == "From":
            try:
                addr = Address.parse(value)
            except Exception:
                raise RemoteProtocolError(f"bad message/cpim From {value[:60]!r}") from None
            sender, display = str(addr.uri), addr.display_name
        elif name == "To":
            recipient = value.strip("<> ")
        elif name == "DateTime":
            when = value
        elif "." in name and name.split(".", 1)[0] in prefixes:
            field = name.split(".", 1)[1].lower()
            if field == "message-id":
                msg_id = value
            elif field == "disposition-notification":
                disposition = value
    if not sender:
        raise RemoteProtocolError("message/cpim without From")
    inner, body = _split(rest)
    ct = next((v for n, v in inner if n.lower() == "content-type"), "text/plain")
    length = next((v for n, v in inner if n.lower() == "content-length"), None)
    if length is not None and length.isdigit():
        body = body[: int(length)]
    disp = next((v for n, v in inner if n.lower() == "content-disposition"), None)
    return Cpim(sender, display, recipient, ct, body, msg_id, when, disposition, disp)
