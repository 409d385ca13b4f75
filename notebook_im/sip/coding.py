"""Content-Encoding of message bodies (RFC 3261 §20.12, §8.2.3), sans-IO.

liblinphone compresses its IMDNs and (with CPIM) its is-composing with `Content-Encoding: deflate`. A user agent
that does not understand a body's coding must answer 415 listing the codings it takes (`Accept-Encoding`), not
read the compressed bytes as text. `decode(message)` undoes `deflate` (zlib or raw) and `gzip` in place, bounded:
a body that inflates past `MAX_INFLATED` bytes (a decompression bomb) is refused with 413, a coding we do not know
(or more than `MAX_CODINGS` of them) with 415, and a body that does not inflate, or has bytes after its compressed
stream, with 400.
"""

from __future__ import annotations

import zlib

from .errors import RemoteProtocolError
from .message import Message
from .parser import MAX_BODY

ACCEPT_ENCODING = "deflate, gzip, identity"
MAX_INFLATED = MAX_BODY  # what a body may be once decoded: what the parser takes undecoded
# Codings undone on one body. Real clients apply one; each layer may cost inflating a whole body, so a header of
# 900 "deflate"s around stored blocks cost 12 ms of CPU per datagram (360 times one layer) before this bound.
MAX_CODINGS = 4
_WBITS = {
    "deflate": (zlib.MAX_WBITS, -zlib.MAX_WBITS),
    "gzip": (zlib.MAX_WBITS | 16,),
    "x-gzip": (zlib.MAX_WBITS | 16,),
}


def codings(message: Message) -> list[str]:
    """The content codings applied to the body, in the order they were applied (lower case, identity left out).
    Every Content-Encoding line counts: RFC 3261 §7.3.1 makes several lines one comma-separated list (reading the
    first alone let `Content-Encoding: identity` hide a `gzip` on the next line, and the body went on compressed)."""
    values = message.headers.fields.get("content-encoding") or ()
    return [c for value in values for c in (p.strip().lower() for p in value.split(",")) if c and c != "identity"]


def decode(message: Message) -> None:
    """Undo the body's Content-Encoding in place (the header goes too). RemoteProtocolError 415 for a coding we do
    not take or more than MAX_CODINGS (answer with Accept-Encoding: ACCEPT_ENCODING), 413 for a body inflating past
    the limit, 400 for one that does not inflate."""
    applied = codings(message)
    if not applied:
        if message.headers.get("Content-Encoding") is not None:
            message.headers.remove("Content-Encoding")
        return
    if len(applied) > MAX_CODINGS:  # refused before any layer is undone
        raise RemoteProtocolError(
            f"{len(applied)} content codings on one body; at most {MAX_CODINGS} are undone "
            f"(accepted: {ACCEPT_ENCODING})",
            415,
            message,
        )
    unknown = [c for c in applied if c not in _WBITS]
    if unknown:
        raise RemoteProtocolError(
            f"content coding {unknown[0][:40]!r} is not supported (accepted: {ACCEPT_ENCODING})", 415, message
        )
    body = message.body
    for coding in reversed(applied):  # the last one applied comes off first
        body = _inflate(body, coding, message)
    message.body = body
    message.headers.remove("Content-Encoding")
    message.headers.set("Content-Length", str(len(body)))


def _inflate(data: bytes, coding: str, message: Message) -> bytes:
    """One layer off. A gzip body may hold several members (RFC 1952 §2.2), all of which are the body; any other
    bytes after the compressed stream are a 400 rather than dropped without a word."""
    for wbits in _WBITS[coding]:  # "deflate" is zlib-wrapped by the RFC, raw by some implementations: try both
        out = b""
        rest = data
        while True:
            inflater = zlib.decompressobj(wbits)
            try:
                out += inflater.decompress(rest, MAX_INFLATED + 1 - len(out))
            except zlib.error:
                break
            if len(out) > MAX_INFLATED or inflater.unconsumed_tail:
                raise RemoteProtocolError(
                    f"a {coding} body inflating past {MAX_INFLATED} bytes is refused", 413, message
                )
            if not inflater.eof:
                break
            rest = inflater.unused_data
            if not rest:
                return out
            if "gzip" not in coding:
                raise RemoteProtocolError(f"{len(rest)} bytes follow the {coding} stream", 400, message)
            if len(out) == MAX_INFLATED:  # another member, and no room left for any of it
                raise RemoteProtocolError(
                    f"a {coding} body inflating past {MAX_INFLATED} bytes is refused", 413, message
                )
    raise RemoteProtocolError(f"the {coding} body does not inflate", 400, message)
