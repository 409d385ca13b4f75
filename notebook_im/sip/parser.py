"""Parse SIP messages from bytes, and frame them out of a byte stream (TCP, TLS).

The hot path uses `bytes.find`/`str.split` and a few whole-message C passes only (no regular expression per
header). Header values are kept as strings and parsed on access. Sizes are bounded so that hostile input costs
bounded memory and time: `MAX_MESSAGE` bytes in all, `MAX_BODY` bytes announced by Content-Length,
`MAX_HEADERS` header fields, `MAX_LINE` characters in the start line and in any (unfolded) header field.
Control characters, invalid UTF-8, non-token methods and header names, and non-ASCII digits are refused.

Only `RemoteProtocolError` comes out (tests/hostile fuzzes this). When a Via and a CSeq were read, the exception
carries the partial Request so the caller can answer it (400, or 413/414/416/505) with the reason; errors in the
start line are raised after the headers are read for that purpose. Otherwise the input is to be dropped.
"""

from __future__ import annotations

from .errors import RemoteProtocolError
from .headers import Headers, normalize_name
from .message import Message, Request, Response
from .uri import SipUri

MAX_MESSAGE = 65535  # bytes in one message (a datagram, or one message framed from a stream)
MAX_HEADERS = 1000  # header fields besides Content-Length (folded continuations not counted); real
# traffic carries a few hundred (Kamailio answers 300 extension headers)
MAX_LINE = 8192  # characters in the start line or in any header line
MAX_BODY = 65535 - 200  # Content-Length a message may announce (413 above that)

_WS = " \t"
# control characters that may not appear in a start line or header (RFC 3261 §25.1: TEXT-UTF8char, LWS);
# HTAB is whitespace, CR and LF are line ends and handled separately
_CTL = bytes(range(0, 9)) + b"\x0b\x0c" + bytes(range(0x0E, 0x20)) + b"\x7f"
_CTL_STR = {c: None for c in _CTL}  # str.translate table deleting them
_CTL_CR = _CTL + b"\r"
_TOKEN_STR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
_ECHOED = ("via", "from", "to", "call-id", "cseq")  # what a response copies back to the sender
_ECHOED_SET = frozenset(_ECHOED)


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n", 0, end if end >= 0 else len(data))
    if lf >= 0:  # tolerate bare LF line endings (robustness, RFC 3261 §7.5 spirit) when they come first
        return data[:lf], data[lf + 2 :]
    if end >= 0:
        return data[:end], data[end + 4 :]
    return data, b""


def is_token(text: str) -> bool:
    """RFC 3261 §25.1 token (a method, a header name): one or more of alphanum and -.!%*_+`'~"""
    return bool(text) and not text.strip(_TOKEN_STR)


_GOOD_NAMES: set[str] = set()  # header names and methods already found to be tokens (bounded)


def _good_name(name: str) -> bool:
    if not is_token(name):
        return False
    if len(_GOOD_NAMES) < 4096 and len(name) <= 64:
        _GOOD_NAMES.add(name)
    return True


def _digits(text: str) -> int | None:
    """The value of a run of ASCII digits (leading zeros allowed, any length), or None."""
    if not text.isascii() or not text.isdigit():
        return None
    text = text.lstrip("0") or "0"
    if len(text) > 12:
        return 10**12  # far beyond every limit; avoids int() on huge strings
    return int(text)


def parse_message(data: bytes, *, stream: bool = False) -> Message:
    """Parse one SIP message.

    For a datagram (`stream=False`) bytes beyond Content-Length are discarded and a body shorter than
    Content-Length is an error (RFC 3261 §18.3). For a message already framed from a stream, the body is
    exactly Content-Length bytes.

    Only `RemoteProtocolError` is raised. Its `message` is either None (drop the input) or a Request with
    a usable Via and a CSeq, so a response `exc.status_code` with `exc.reason` can be sent.
    """
    if len(data) > MAX_MESSAGE:
        raise RemoteProtocolError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE}-byte limit", 513)
    data = data.lstrip(b"\r\n")  # RFC 3261 §7.5: ignore CRLFs before the start line
    if not data:
        raise RemoteProtocolError("empty message")
    # the usual message: CRLF line ends only, valid UTF-8, no folded line. Its header section is found with one
    # search, its lines split with one pass, and two counts prove there is no bare CR or LF in it (then no
    # earlier bare-LF blank line can end it either); anything else is read the general way below
    end = data.find(b"\r\n\r\n")
    if end > 0:
        head = data[:end]
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        lines = text.split("\r\n")
        crlf = len(lines) - 1
        # the CRs and control characters deleted are the line ends' CRs only, and so are the LFs: no bare CR,
        # no bare LF, no control character (one translate, one count, in C)
        if text and len(head) - len(head.translate(None, _CTL_CR)) == crlf and text.count("\n") == crlf:
            message, pending = _parse_start_line(lines[0])
            bad = _read_unfolded(lines, message.headers.fields)
            if bad is not _FOLDED:
                _finish_headers(message, message.headers, lines[0], pending, False, bad, data[end + 4 :], stream)
                return message
    return _parse_general(data, stream)


def _parse_general(data: bytes, stream: bool) -> Message:
    """`parse_message` for any line ends, folding and invalid UTF-8."""
    head, body = _split_head(data)
    utf8_error: str | None = None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # read on with the bad bytes kept as lone surrogates, so that a request whose bad bytes sit in a header a
        # response need not echo can still be answered 400 (they never reach the wire: only echoed headers do)
        text = head.decode("utf-8", "surrogateescape")
        utf8_error = "header section is not valid UTF-8"
    text = text.replace("\r\n", "\n")
    ctl = len(head.translate(None, _CTL)) != len(head) or "\r" in text  # one pass each, in C
    lines = text.split("\n")
    start = lines[0]
    message, pending = _parse_start_line(start)

    headers = message.headers
    bad: str | None
    if "\n " not in text and "\n\t" not in text:  # no folded lines: one pass, no deferred add
        bad = _read_unfolded(lines, headers.fields)
    else:
        bad = _read_folded(lines, headers)
    if utf8_error is not None:
        tainted = [k for k, vs in headers.fields.items() if any(_has_surrogates(v) for v in vs)]
        where = tainted[0] if tainted else None
        if where is None or _ECHOED_SET.intersection(tainted) or _has_surrogates(start):
            raise RemoteProtocolError(utf8_error + (f" (in {where})" if where else ""))
        bad = f"{utf8_error} (in the {where} header)"
    _finish_headers(message, headers, start, pending, ctl, bad, body, stream)
    return message


_LOW_SURROGATE, _HIGH_SURROGATE = chr(0xDC80), chr(0xDCFF)  # surrogateescape's range (chr(): mypyc takes no literal)


def _has_surrogates(text: str) -> bool:
    return not text.isascii() and any(_LOW_SURROGATE <= c <= _HIGH_SURROGATE for c in text)


_FOLDED = "folded"  # what _read_unfolded says when it meets a continuation line (compared by identity)


def _read_unfolded(lines: list[str], fields: dict[str, list[str]]) -> str | None:
    """Read header lines that have no continuation lines into `fields`; the first problem found, or None.
    `_FOLDED` (and `fields` half filled) if a line turns out to continue the one before it."""
    bad: str | None = None
    count = 0
    keys = _KEYS
    for line in lines[1:]:
        if not line:
            continue
        first = line[0]
        if first == " " or first == "\t":
            return _FOLDED
        name, sep, value = line.partition(":")
        key = keys.get(name) if sep else None
        if key is None:
            stripped = name.rstrip(_WS)
            if not sep or len(stripped) > MAX_LINE or (stripped not in _GOOD_NAMES and not _good_name(stripped)):
                bad = bad or (
                    f"header line longer than {MAX_LINE} bytes"
                    if len(line) > MAX_LINE
                    else f"malformed header line {line[:60]!r}"
                )
                continue
            key = normalize_name(stripped)
            if len(keys) < 4096 and len(name) <= 64:
                keys[name] = key
        if len(line) > MAX_LINE:
            bad = bad or f"header line longer than {MAX_LINE} bytes"
            if key not in _ECHOED_SET:
                continue  # (a header the 400 must echo is kept: the client matches the answer by it)
        count += 1
        if (
            count > MAX_HEADERS
            and count - len(fields.get("content-length") or ()) - (key == "content-length") > MAX_HEADERS
        ):
            bad = bad or f"more than {MAX_HEADERS} header fields"
            if key not in _ECHOED_SET:
                continue
        values = fields.get(key)
        if values is None:
            fields[key] = [value.strip(_WS)]
        else:
            values.append(value.strip(_WS))
    return bad


def _put(headers: Headers, name: str, value: str) -> None:
    """Add a received field as it came (Headers.add refuses control characters in what we build; received
    ones are checked, and answered, once the whole header section is read)."""
    headers.fields.setdefault(normalize_name(name), []).append(value)


_KEYS: dict[str, str] = {}  # header names as written (before the colon) -> lower-case full name (bounded)


def _read_folded(lines: list[str], headers: Headers) -> str | None:
    """Read header lines with continuation lines (RFC 3261 §7.3.1) into `headers`; the first problem, or None."""
    count = 0
    current_name: str | None = None
    current_value = ""
    parts: list[str] | None = None  # the pieces of a folded field (None while it is not folded)
    field_len = 0
    bad: str | None = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):  # folded continuation (RFC 3261 §7.3.1)
            if current_name is None:
                bad = bad or "continuation line before any header"
                continue
            line = line.strip(_WS)
            if line:
                field_len += len(line) + 1
                if field_len > MAX_LINE:  # folded or not, a field must fit on one line when we send it on
                    bad = bad or f"header field longer than {MAX_LINE} bytes"
                    continue
                if parts is None:
                    parts = [current_value] if current_value else []
                parts.append(line)
            continue
        if current_name is not None:
            _put(headers, current_name, current_value if parts is None else " ".join(parts))
            current_name = None
        if not line:
            continue
        name, sep, value = line.partition(":")
        name = name.rstrip(_WS)
        if not sep or len(name) > MAX_LINE or (name not in _GOOD_NAMES and not _good_name(name)):
            bad = bad or (
                f"header line longer than {MAX_LINE} bytes"
                if len(line) > MAX_LINE
                else f"malformed header line {line[:60]!r}"
            )
            current_name = None
            continue
        key = normalize_name(name)
        if len(line) > MAX_LINE:
            bad = bad or f"header line longer than {MAX_LINE} bytes"
            if key not in _ECHOED_SET:  # (a header the 400 must echo is kept: the client matches the answer by it)
                current_name = None
                continue
        count += 1
        if (
            count > MAX_HEADERS
            and count - len(headers.fields.get("content-length") or ()) - (key == "content-length") > MAX_HEADERS
        ):  # (the one we write back is not counted)
            bad = bad or f"more than {MAX_HEADERS} header fields"
            if key not in _ECHOED_SET:
                current_name = None
                continue
        current_name = name
        current_value = value.strip(_WS)
        parts = None
        field_len = len(line)
    if current_name is not None:
        _put(headers, current_name, current_value if parts is None else " ".join(parts))
    return bad


def _finish_headers(
    message: Message,
    headers: Headers,
    start: str,
    pending: RemoteProtocolError | None,
    ctl: bool,
    bad: str | None,
    body: bytes,
    stream: bool,
) -> None:
    """Checks that need all headers: control characters, Content-Length and the body, required fields."""
    if ctl:
        bad = "control character in the header section"
        if (
            any(v.translate(_CTL_STR) != v or "\r" in v for k in _ECHOED for v in headers.get_all(k))
            or start.translate(_CTL_STR) != start
            or "\r" in start
        ):
            raise RemoteProtocolError(bad + " (in the start line or a header a response must echo)")
    if pending is not None:
        raise RemoteProtocolError(pending.reason, pending.status_code, _answerable(message))

    cl_values = headers.fields.get("content-length")  # (not multi-valued: get_all would return the same)
    if cl_values:
        length = _digits(cl_values[0].strip(_WS))
        if length is None:
            bad = bad or f"bad Content-Length {cl_values[0][:20]!r}"
            length = len(body)
        elif any(_digits(v.strip(_WS)) != length for v in cl_values[1:]):
            bad = bad or "conflicting Content-Length headers"
    else:
        length = len(body)
        if stream:  # RFC 3261 §20.14 (the framer read the message as having no body)
            bad = bad or "Content-Length is mandatory on a stream transport (RFC 3261 §18.3)"
    if length > MAX_BODY:
        raise RemoteProtocolError(
            f"body of {length} bytes exceeds the {MAX_BODY}-byte limit", 413, _answerable(message)
        )
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
    elif isinstance(message, Response):
        _check_response(message)


def _parse_start_line(start: str) -> tuple[Message, RemoteProtocolError | None]:
    """The message the start line begins, and the error to raise once the headers are read (so that the
    request can be answered), if any. Errors that leave nothing to answer are raised at once."""
    if len(start) > MAX_LINE:
        if start.startswith("SIP/"):
            raise RemoteProtocolError(f"status line longer than {MAX_LINE} bytes")
        method = start.partition(" ")[0]
        if not is_token(method):
            raise RemoteProtocolError(f"start line longer than {MAX_LINE} bytes")
        return Request(method, _INVALID_URI), RemoteProtocolError(f"request line longer than {MAX_LINE} bytes", 414)
    if start.startswith("SIP/"):
        version, _, rest = start.partition(" ")
        code, _, reason = rest.partition(" ")
        if version != "SIP/2.0":
            raise RemoteProtocolError(f"unsupported version {version[:20]!r}", 505)
        status = _digits(code)
        if len(code) != 3 or status is None or not 100 <= status <= 699:
            raise RemoteProtocolError(f"bad status code {code[:20]!r}")
        response = Response(status)
        response.reason = reason.strip()  # (as received: control characters are refused with the headers)
        return response, None
    parts = start.split(" ")
    method = parts[0]
    if method not in _GOOD_NAMES and not _good_name(method):  # a method is a token too
        raise RemoteProtocolError(f"bad method {method[:40]!r}")
    if len(parts) != 3 or not parts[2].startswith("SIP/"):
        # a method is there: answer 400 if the headers allow it (RFC 4475 §3.1.2.7 lwsstart)
        return Request(method, _INVALID_URI), RemoteProtocolError(f"bad request line {start[:80]!r}")
    _, uri_text, version = parts
    try:
        uri = SipUri.parse(uri_text)
    except RemoteProtocolError as exc:
        return Request(method, _INVALID_URI), RemoteProtocolError(exc.reason, exc.status_code)
    if uri.scheme not in ("sip", "sips"):  # (a tel: URI names no host: nothing here routes one)
        return Request(method, _INVALID_URI), RemoteProtocolError(
            f"not a sip: or sips: URI: a {uri.scheme}: Request-URI cannot be routed here", 416
        )
    request = Request(method, uri)
    if version != "SIP/2.0":
        return request, RemoteProtocolError(f"unsupported version {version[:20]!r}", 505)
    return request, None


_INVALID_URI = SipUri(host="invalid")


def _answerable(message: Message) -> Message | None:
    """The message if a response can be sent back for it: a request (not an ACK) with a usable Via, and either
    a CSeq (a client matches the answer by Via branch and CSeq method, RFC 3261 §17.1.3) or, failing that,
    From, To and Call-ID: a client cannot match that answer to its transaction, but the answer still names the
    request and says what is wrong, to the sender, a trace and the person reading it. A datagram cut short
    inside its headers has neither and is dropped."""
    if not isinstance(message, Request) or message.method == "ACK":
        return None
    h = message.headers
    if "via" not in h or ("cseq" not in h and not ("from" in h and "to" in h and "call-id" in h)):
        return None
    try:
        message.top_via  # the response has to find its way back
    except RemoteProtocolError:
        return None
    return message


_REQUIRED = (("via", "Via"), ("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"))


def _check_request(req: Request) -> None:
    fields = req.headers.fields
    for key, name in _REQUIRED:
        if key not in fields:
            raise RemoteProtocolError(f"missing {name} header", 400, _answerable(req))
    try:
        req.top_via
        cseq = req.cseq
        req.from_
        req.to
        req.max_forwards
        if not req.call_id:
            raise RemoteProtocolError("empty Call-ID")
    except RemoteProtocolError as exc:
        raise RemoteProtocolError(exc.reason, 400, _answerable(req)) from None
    if cseq.method != req.method:
        raise RemoteProtocolError(f"CSeq method {cseq.method[:40]} does not match {req.method}", 400, _answerable(req))


def _check_response(resp: Response) -> None:
    fields = resp.headers.fields
    for key, name in _REQUIRED:
        if key not in fields:
            raise RemoteProtocolError(f"missing {name} header in response")
    try:
        resp.top_via
        resp.cseq
    except RemoteProtocolError as exc:
        raise RemoteProtocolError(exc.reason, 400, None) from None


class StreamFramer:
    """Cuts a byte stream into SIP messages by Content-Length (RFC 3261 §18.3).

    `feed(data)` returns the complete messages (as bytes) now available. CRLF keep-alives (RFC 5626)
    between messages are skipped and counted. A header section arriving a byte at a time is scanned once
    (not once per byte), so a slow sender costs linear time.

    What cannot be framed is still answered where the headers allow it:
    - a header section without Content-Length that starts like a SIP message is passed on without a body (the
      parser answers it 400: the length is mandatory on streams) and framing goes on after it;
    - a Content-Length beyond the limits passes the header section on alone (the parser answers 413), then
      the stream is `broken`: the rest of that body cannot be skipped safely, so the connection must close
      (once the answer is written). Further `feed` calls raise.
    - a header section that never ends within `MAX_MESSAGE` bytes, an unreadable Content-Length, or none in
      something that is not SIP, raises RemoteProtocolError at once: nothing to answer, the connection closes.
    """

    __slots__ = ("_buf", "_scanned", "keepalives", "broken")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already searched for the end of the header section
        self.keepalives = 0
        self.broken: RemoteProtocolError | None = None  # set once the stream cannot be framed any further

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self.broken is not None:
            raise self.broken
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            # skip keep-alives / stray CRLFs between messages
            if buf[0] in (13, 10):
                i = 0
                while i < len(buf) and buf[i] in (13, 10):
                    i += 1
                self.keepalives += 1
                del buf[:i]
                self._scanned = 0
                continue
            end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
            if end < 0:
                self._scanned = len(buf)
                if len(buf) > MAX_MESSAGE:
                    raise RemoteProtocolError("header section exceeds the size limit on a stream", 513)
                break
            self._scanned = end
            head = bytes(buf[:end])
            length = _content_length(head)
            if length is None and not _sip_start_line(head):
                raise RemoteProtocolError("Content-Length is mandatory on a stream transport (RFC 3261 §18.3)")
            total = end + 4 + (length or 0)
            if length is not None and (length > MAX_BODY or total > MAX_MESSAGE):
                out.append(bytes(buf[: end + 4]))  # the header section alone: the parser answers 413
                buf.clear()
                self.broken = RemoteProtocolError(f"message of {total} bytes exceeds the limit on a stream", 513)
                break
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
            self._scanned = 0
        return out


def _sip_start_line(head: bytes) -> bool:
    """Does a header section start like a SIP message (`METHOD uri SIP/2.0`, `SIP/2.0 code ...`)? Without a
    Content-Length, only such a one is framed (and answered); anything else closes the stream."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    return line.startswith(b"SIP/2.0 ") or (len(parts) == 3 and parts[2] == b"SIP/2.0")


def _content_length(head: bytes) -> int | None:
    """The Content-Length of a header section, None if it has none."""
    found: int | None = None
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep or len(name) > 40:
            continue
        try:
            key = normalize_name(name.decode("ascii"))
        except UnicodeDecodeError:
            continue
        if key == "content-length":
            length = _digits(value.strip(b" \t").decode("latin-1"))
            if length is None:
                raise RemoteProtocolError(f"bad Content-Length {value[:20]!r} on a stream")
            if found is not None and found != length:
                raise RemoteProtocolError("conflicting Content-Length headers on a stream")
            found = length
    return found
