"""Parse SIP messages from bytes, and frame them out of a byte stream (TCP, TLS).

The hot path uses `bytes.find`/`str.split` only (no regular expression per header). Header values are
kept as strings and parsed on access. Sizes are bounded so that hostile input costs bounded memory:
`MAX_MESSAGE` bytes in all, `MAX_HEADERS` header fields, `MAX_LINE` bytes in any header line.

Errors raise `RemoteProtocolError`; when the start line and the five headers needed to answer were read,
the exception carries the partial Request so the caller can answer `400 Bad Request`.
"""
from __future__ import annotations

from .errors import RemoteProtocolError
from .headers import Headers, normalize_name
from .message import Message, Request, Response
from .uri import SipUri

MAX_MESSAGE = 65535
MAX_HEADERS = 256
MAX_LINE = 8192
MAX_BODY = 65535 - 200

_WS = " \t"


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[:end], data[end + 4 :]
    end = data.find(b"\n\n")  # tolerate bare LF line endings (robustness, RFC 3261 §7.5 spirit)
    if end >= 0:
        return data[:end], data[end + 2 :]
    return data, b""


def parse_message(data: bytes, *, stream: bool = False) -> Message:
    """Parse one SIP message.

    For a datagram (`stream=False`) bytes beyond Content-Length are discarded and a body shorter than
    Content-Length is an error (RFC 3261 §18.3). For a message already framed from a stream, the body is
    exactly Content-Length bytes.
    """
    if len(data) > MAX_MESSAGE:
        raise RemoteProtocolError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE}-byte limit", 513)
    data = data.lstrip(b"\r\n")  # RFC 3261 §7.5: ignore CRLFs before the start line
    if not data:
        raise RemoteProtocolError("empty message")
    head, body = _split_head(data)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("header section is not valid UTF-8") from None
    lines = text.replace("\r\n", "\n").split("\n")
    start = lines[0]
    message = _parse_start_line(start)

    headers = message.headers
    count = 0
    current_name: str | None = None
    current_value = ""
    bad: str | None = None
    for line in lines[1:]:
        if len(line) > MAX_LINE:
            bad = bad or f"header line longer than {MAX_LINE} bytes"
            continue
        if line[:1] in (" ", "\t"):  # folded continuation (RFC 3261 §7.3.1)
            if current_name is None:
                bad = bad or "continuation line before any header"
                continue
            current_value += " " + line.strip(_WS)
            continue
        if current_name is not None:
            headers.add(current_name, current_value)
        if not line:
            current_name = None
            continue
        name, sep, value = line.partition(":")
        name = name.rstrip(_WS)
        if not sep or not name or " " in name or "\t" in name:
            bad = bad or f"malformed header line {line[:60]!r}"
            current_name = None
            continue
        count += 1
        if count > MAX_HEADERS:
            raise RemoteProtocolError(f"more than {MAX_HEADERS} header fields", 400, None)
        current_name = name
        current_value = value.strip(_WS)
    if current_name is not None:
        headers.add(current_name, current_value)

    cl_text = headers.get("Content-Length")
    if cl_text is not None:
        cl_text = cl_text.strip()
        if not cl_text.isdigit() or len(cl_text) > 9:
            bad = bad or f"bad Content-Length {cl_text!r}"
            length = len(body)
        else:
            length = int(cl_text)
    else:
        length = len(body)
    if length > MAX_BODY:
        raise RemoteProtocolError(f"body of {length} bytes exceeds the limit", 413, _answerable(message))
    if len(body) < length:
        bad = bad or f"body shorter ({len(body)} bytes) than Content-Length {length}"
    elif len(body) > length:
        if stream:
            bad = bad or "body longer than Content-Length"
        body = body[:length]
    message.body = body
    if bad is not None:
        raise RemoteProtocolError(bad, 400, _answerable(message))
    if isinstance(message, Request):
        _check_request(message)
    else:
        _check_response(message)
    return message


def _parse_start_line(start: str) -> Message:
    if start.startswith("SIP/"):
        version, _, rest = start.partition(" ")
        code, _, reason = rest.partition(" ")
        if version != "SIP/2.0":
            raise RemoteProtocolError(f"unsupported version {version!r}", 505)
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise RemoteProtocolError(f"bad status code {code!r}")
        return Response(int(code), reason.strip())
    parts = start.split(" ")
    if len(parts) != 3:
        raise RemoteProtocolError(f"bad request line {start[:80]!r}")
    method, uri_text, version = parts
    if not method or not method.isascii() or not method.replace("-", "").replace(".", "").isalnum():
        raise RemoteProtocolError(f"bad method {method[:40]!r}")
    try:
        uri = SipUri.parse(uri_text)
    except RemoteProtocolError as exc:
        request = Request(method, SipUri(host="invalid"))
        raise RemoteProtocolError(exc.reason, exc.status_code, request) from None
    request = Request(method, uri)
    if version != "SIP/2.0":
        raise RemoteProtocolError(f"unsupported version {version!r}", 505, request)
    return request


def _answerable(message: Message) -> Message | None:
    """The message if a response that its sender can match can be built for it (Via and CSeq present)."""
    if not isinstance(message, Request) or message.method == "ACK":
        return None
    h = message.headers
    if "via" not in h or "cseq" not in h:  # a client matches a response by Via branch and CSeq method
        return None
    try:
        message.top_via  # the response has to find its way back
    except RemoteProtocolError:
        return None
    return message


def _check_request(req: Request) -> None:
    h = req.headers
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if name not in h:
            raise RemoteProtocolError(f"missing {name} header", 400, _answerable(req))
    try:
        req.top_via
        cseq = req.cseq
        req.from_
        req.to
        req.max_forwards
    except RemoteProtocolError as exc:
        raise RemoteProtocolError(exc.reason, 400, _answerable(req)) from None
    if cseq.method != req.method:
        raise RemoteProtocolError(f"CSeq method {cseq.method} does not match {req.method}", 400, _answerable(req))


def _check_response(resp: Response) -> None:
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if name not in resp.headers:
            raise RemoteProtocolError(f"missing {name} header in response")
    resp.top_via
    resp.cseq


class StreamFramer:
    """Cuts a byte stream into SIP messages by Content-Length (RFC 3261 §18.3).

    `feed(data)` returns the complete messages (as bytes) now available. CRLF keep-alives (RFC 5626)
    between messages are skipped and counted. A header section that never ends within `MAX_MESSAGE`
    bytes, or a missing/bad Content-Length, raises RemoteProtocolError: the connection cannot be
    resynchronised and must be closed.
    """

    __slots__ = ("_buf", "keepalives")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.keepalives = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            # skip keep-alives / stray CRLFs between messages
            i = 0
            while i < len(buf) and buf[i] in (13, 10):
                i += 1
            if i:
                self.keepalives += 1
                del buf[:i]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_MESSAGE:
                    raise RemoteProtocolError("header section exceeds the size limit on a stream", 513)
                break
            length = _content_length(bytes(buf[:end]))
            total = end + 4 + length
            if total > MAX_MESSAGE:
                raise RemoteProtocolError(f"message of {total} bytes exceeds the limit on a stream", 513)
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = normalize_name(name.decode("ascii"))
        except UnicodeDecodeError:
            continue
        if key == "content-length":
            value = value.strip()
            if not value.isdigit():
                raise RemoteProtocolError(f"bad Content-Length {value[:20]!r} on a stream")
            return int(value)
    raise RemoteProtocolError("Content-Length is mandatory on a stream transport (RFC 3261 §18.3)")
