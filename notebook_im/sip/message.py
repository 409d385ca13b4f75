"""SIP requests and responses (RFC 3261 §7), with typed accessors over lazily parsed headers.

Messages are mutable on purpose: a proxy adds a Via, pops a Route and decrements Max-Forwards on the
message it relays. Typed accessors (`from_`, `cseq`, `vias`...) parse on access through the cached
parse functions of `uri.py`, so repeated access costs a dict lookup.
"""

from __future__ import annotations

import codecs
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import LocalProtocolError, RemoteProtocolError
from .headers import Headers
from .uri import Address, SipUri, Via, split_header_values

BRANCH_MAGIC = "z9hG4bK"
_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"  # RFC 3261 §25.1

REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    429: "Too Many Requests",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


class _HexPool:
    """Cryptographically random hex digits, read from the OS 4 KB at a time.

    Tags, branches and Call-IDs must be cryptographically random (RFC 3261 §19.3, §8.1.1.7); `secrets.token_hex`
    is, but costs a getrandom() system call each time, three per answered request (~8% of a MESSAGE's cost under
    load). Slicing a pre-read block of `os.urandom` gives the same randomness for a fraction of that. The lock
    makes a slice unique also when other threads (widgets, user code) create requests.
    """

    __slots__ = ("_hex", "_pos", "_lock")

    def __init__(self) -> None:
        self._hex = ""
        self._pos = 0
        self._lock = threading.Lock()

    def take(self, digits: int) -> str:
        with self._lock:
            pos = self._pos
            end = pos + digits
            if end > len(self._hex):
                self._hex = os.urandom(4096).hex()
                pos, end = 0, digits
            self._pos = end
            return self._hex[pos:end]


_POOL = _HexPool()
random_hex = _POOL.take


def new_branch() -> str:
    return BRANCH_MAGIC + random_hex(16)


def new_tag() -> str:
    return random_hex(12)


def new_call_id(host: str = "") -> str:
    return random_hex(24) + (f"@{host}" if host else "")


@dataclass(frozen=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"

    def __copy__(self) -> CSeq:
        return self  # immutable (copy.copy would fail compiled: mypyc's __setstate__ cannot fill a frozen class)

    def __deepcopy__(self, memo: dict[int, object]) -> CSeq:
        return self

    def __reduce__(self) -> tuple[type[CSeq], tuple[int, str]]:
        return CSeq, (self.number, self.method)  # pickle: the constructor, as for __copy__


def _parse_cseq(text: str) -> CSeq:
    num, _, method = text.strip(" \t").replace("\t", " ").partition(" ")  # CSeq = 1*DIGIT LWS Method
    method = method.strip(" ")
    if not num.isascii() or not num.isdigit() or not method or len(num) > 10 or int(num) >= 2**31:
        raise RemoteProtocolError(f"bad CSeq {text!r}", 400)
    return CSeq(int(num), method)


def _parse_top_via(text: str) -> Via:
    if "," in text:
        values = split_header_values(text)
        if not values:
            raise RemoteProtocolError("empty Via header", 400)
        text = values[0]
    return Via.parse(text)


def _routable(addresses: list[Address], name: str) -> list[Address]:
    """Addresses that requests will be sent to must be sip:/sips: URIs (a tel: URI is fine in From and To,
    RFC 3966, but names no host to send to): 416 otherwise, as for a Request-URI."""
    for a in addresses:
        if not a.wildcard and a.uri.scheme not in ("sip", "sips"):
            raise RemoteProtocolError(f"a {name} must be a sip: or sips: URI, not {str(a.uri)[:60]!r}", 416)
    return addresses


class Message:
    """What requests and responses share: headers, a body and the accessors for common fields."""

    __slots__ = ("headers", "body")

    def __init__(self, headers: Headers | None = None, body: bytes = b"") -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body

    # -- typed accessors -------------------------------------------------------------------------
    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise RemoteProtocolError(f"missing {name} header", 400, self)
        return value

    def _parsed(self, key: str, parse: Callable[[str], Any], name: str) -> Any:
        """The cached parse of header `key` (see Headers.parsed); errors name this message."""
        try:
            return self.headers.parsed(key, parse)
        except KeyError:
            raise RemoteProtocolError(f"missing {name} header", 400, self) from None
        except RemoteProtocolError as exc:
            if exc.message is None:
                raise RemoteProtocolError(exc.reason, exc.status_code, self) from None
            raise

    @property
    def call_id(self) -> str:
        cached = self.headers.cache.get("call-id")  # (inline: these run a dozen times per message)
        return cached if cached is not None else self._parsed("call-id", str.strip, "Call-ID")

    @property
    def cseq(self) -> CSeq:
        cached = self.headers.cache.get("cseq")  # (inline: these run a dozen times per message)
        return cached if cached is not None else self._parsed("cseq", _parse_cseq, "CSeq")

    @property
    def from_(self) -> Address:
        cached = self.headers.cache.get("from")  # (inline: these run a dozen times per message)
        return cached if cached is not None else self._parsed("from", Address.parse, "From")

    @property
    def to(self) -> Address:
        cached = self.headers.cache.get("to")  # (inline: these run a dozen times per message)
        return cached if cached is not None else self._parsed("to", Address.parse, "To")

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        cached = self.headers.cache.get("via")  # (inline: these run a dozen times per message)
        return cached if cached is not None else self._parsed("via", _parse_top_via, "Via")

    @property
    def contacts(self) -> list[Address]:
        return _routable([Address.parse(v) for v in self.headers.get_all("Contact")], "Contact")

    @property
    def routes(self) -> list[Address]:
        return _routable([Address.parse(v) for v in self.headers.get_all("Route")], "Route")

    @property
    def record_routes(self) -> list[Address]:
        return _routable([Address.parse(v) for v in self.headers.get_all("Record-Route")], "Record-Route")

    @property
    def content_type(self) -> str | None:
        """The media type in lower case, without parameters (`text/plain`)."""
        ct = self.headers.get("Content-Type")
        return ct.partition(";")[0].strip().lower() if ct else None

    @property
    def charset(self) -> str:
        ct = self.headers.get("Content-Type") or ""
        for p in ct.split(";")[1:]:
            k, _, v = p.partition("=")
            if k.strip().lower() == "charset":
                return v.strip().strip('"') or "utf-8"
        return "utf-8"

    @property
    def expires(self) -> int | None:
        value = self.headers.get("Expires")
        if value is None:
            return None
        value = value.strip()
        if not value.isascii() or not value.isdigit():
            raise RemoteProtocolError(f"bad Expires {value[:20]!r}", 400, self)
        digits = value.lstrip("0") or "0"  # RFC 3261 §20.19: values above 2**32-1 mean 2**32-1
        return min(int(digits), 2**32 - 1) if len(digits) <= 12 else 2**32 - 1

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        if value is None:
            return None
        value = value.strip()
        if not value.isascii() or not value.isdigit() or len(value.lstrip("0")) > 3 or int(value) > 255:
            raise RemoteProtocolError(f"bad Max-Forwards {value[:20]!r}", 400, self)
        return int(value)

    def text(self) -> str:
        """The body decoded with its charset (replacement characters for undecodable bytes)."""
        charset = self.charset
        try:
            if not codecs.lookup(
                charset
            )._is_text_encoding:  # (CodecInfo has no public flag for it) e.g. hex, rot13, zlib
                charset = "utf-8"
            return self.body.decode(charset, errors="replace")
        except (LookupError, ValueError):  # unknown charset; or a codec without "replace" (idna, punycode)
            return self.body.decode("utf-8", errors="replace")

    # -- serialization ---------------------------------------------------------------------------
    def start_line(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        lines = self.headers.lines(skip="content-length")
        lines.insert(0, self.start_line())
        lines.append(f"Content-Length: {len(self.body)}\r\n\r\n")
        return "\r\n".join(lines).encode("utf-8") + self.body

    def copy(self) -> Message:  # pragma: no cover - overridden
        raise NotImplementedError

    def __copy__(self) -> Message:
        """copy.copy and copy.deepcopy are `copy()`: the headers copied, the parsed values and body shared (they
        are immutable). The same compiled or not: mypyc's classes cannot be rebuilt without their arguments."""
        return self.copy()

    def __deepcopy__(self, memo: dict[int, object]) -> Message:
        return self.copy()


class Request(Message):
    __slots__ = ("method", "uri")

    def __init__(self, method: str, uri: SipUri | str, headers: Headers | None = None, body: bytes = b"") -> None:
        super().__init__(headers, body)
        if not method or method.strip(_TOKEN_CHARS):
            raise LocalProtocolError(f"invalid method {method!r} (a token: letters, digits and -.!%*_+`'~)")
        self.method = method
        self.uri = uri if isinstance(uri, SipUri) else SipUri.parse(uri)

    def start_line(self) -> str:
        return f"{self.method} {self.uri} SIP/2.0"

    def copy(self) -> Request:
        return Request(self.method, self.uri, self.headers.copy(), self.body)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    __slots__ = ("status", "reason")

    def __init__(
        self, status: int, reason: str | None = None, headers: Headers | None = None, body: bytes = b""
    ) -> None:
        super().__init__(headers, body)
        if not 100 <= status <= 699:
            raise LocalProtocolError(f"status code {status} is outside 100-699")
        self.status = status
        if reason is None:
            reason = REASONS.get(status, "Unknown")
        elif "\n" in reason or "\r" in reason or "\x00" in reason:
            raise LocalProtocolError(f"a reason phrase may not contain CR, LF or NUL: {reason[:60]!r}")
        self.reason = reason

    def start_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"

    def copy(self) -> Response:
        return Response(self.status, self.reason, self.headers.copy(), self.body)

    @property
    def provisional(self) -> bool:
        return self.status < 200

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def make_request(
    method: str,
    uri: SipUri | str,
    *,
    via: str,
    from_: str,
    to: str,
    call_id: str,
    cseq: int,
    routes: list[str] | tuple[str, ...] = (),
    contact: str | None = None,
    max_forwards: int = 70,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes = b"",
    content_type: str | None = None,
) -> Request:
    """A request with the header fields every request has, in RFC 3261's usual order (§8.1.1): Via,
    Max-Forwards, Route, From, To, Call-ID, CSeq, Contact, then `headers` and Content-Type. The one builder of the
    stack: the user agent's out-of-dialog requests, dialogs' in-dialog requests and the conference focus's
    dial-out all come from here (`from_`/`to` are whole header values, tags included)."""
    h = Headers()
    h.add("Via", via)
    h.add("Max-Forwards", str(max_forwards))
    for route in routes:
        h.add("Route", route)
    h.add("From", from_)
    h.add("To", to)
    h.add("Call-ID", call_id)
    h.add("CSeq", f"{cseq} {method}")
    if contact:
        h.add("Contact", contact)
    for name, value in headers.items() if isinstance(headers, dict) else headers or ():
        h.add(name, value)
    if content_type:
        h.add("Content-Type", content_type)
    return Request(method, uri, h, body)


_COPIED_TO_RESPONSE = ("via", "from", "to", "call-id", "cseq")


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """Build a response to `request` (RFC 3261 §8.2.6): Via, From, To, Call-ID, CSeq copied; a To tag added
    when given and not already present (never on 100 Trying).

    The copied fields keep the request's cached parses (they are the same strings), so a server answering a
    request and recording the answer parses none of them again."""
    headers = Headers()
    fields, cache = headers.fields, headers.cache
    src, src_cache = request.headers.fields, request.headers.cache
    for key in _COPIED_TO_RESPONSE:
        values = src.get(key)
        if values:
            fields[key] = list(values) if key == "via" else [values[0]]
            parsed = src_cache.get(key)
            if parsed is not None:
                cache[key] = parsed
    if request.method == "INVITE":
        for rr in request.headers.get_all("Record-Route"):
            headers.add("Record-Route", rr)
    if to_tag and status != 100 and "to" in fields:
        try:
            to = request.to
        except RemoteProtocolError:
            to = None  # a 400 for an unparseable To echoes it as it came
        if to is not None and to.tag is None:
            fields["to"] = [f"{fields['to'][0]};tag={to_tag}"]
            cache["to"] = to.with_tag(to_tag)
    if content_type:
        headers.set("Content-Type", content_type)
    return Response(status, reason, headers, body)
