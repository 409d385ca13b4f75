"""Pull the few header fields a trace frame needs out of raw SIP bytes, fast, without a full parse.

`extract(raw)` returns the fields of one message as str / int (or None), in `FIELDS` order:

    method      request method, or None for a response
    status      response status code (int), or None for a request
    call_id     Call-ID value
    cseq        CSeq number (int) or None
    cseq_method CSeq method (for a response: the method it answers)
    from_tag    tag parameter of From
    to_tag      tag parameter of To
    branch      branch parameter of the top Via
    body_size   bytes after the blank line (int)

The fast path looks for the header names as nearly every implementation spells them (`Call-ID:`,
`CSeq:`, `From:`, `To:`, `Via:`) with `bytes.find`; when one is missing it falls back to a line-by-line
scan that is case-insensitive and knows the compact forms (`i`, `f`, `t`, `v`) and folded lines. It
never raises: a message too broken to read yields Nones (the raw bytes are still in the frame).
This is ~3 µs per message, which is why the recorder can afford it on the hot path (see recorder.py).
"""

from __future__ import annotations

import re

FIELDS = ("method", "status", "call_id", "cseq", "cseq_method", "from_tag", "to_tag", "branch", "body_size")

_TOKEN = re.compile(rb"[A-Za-z0-9.!%*_+`'~-]+")
_COMPACT = {b"i": b"call-id", b"f": b"from", b"t": b"to", b"v": b"via"}
_WANTED = (b"call-id", b"cseq", b"from", b"to", b"via")


def _param(value: bytes | None, name: bytes) -> bytes | None:
    """The value of header parameter `name` (b"tag=" / b"branch=") in a header value, outside <...>."""
    if value is None:
        return None
    gt = value.rfind(b">")
    i = value.find(name, gt + 1 if gt >= 0 else 0)
    if i < 0:
        low = value.lower()
        i = low.find(name, gt + 1 if gt >= 0 else 0)
        if i < 0:
            return None
    i += len(name)
    j = value.find(b";", i)
    return (value[i:j] if j >= 0 else value[i:]).strip() or None


def _slow_headers(head: bytes) -> dict[bytes, bytes]:
    """First value of each wanted header: case-insensitive names, compact forms, folded lines."""
    found: dict[bytes, bytes] = {}
    lines = head.replace(b"\r\n", b"\n").split(b"\n")[1:]
    unfolded: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and unfolded:
            unfolded[-1] += b" " + line.strip()
        else:
            unfolded.append(line)
    for line in unfolded:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        name = _COMPACT.get(name, name)
        if name in _WANTED and name not in found:
            found[name] = value.strip()
    return found


def _value(raw: bytes, marker: bytes, end: int) -> bytes | None:
    """The value after `marker` (b"\r\nName: ") up to the end of its line, within raw[:end]; None if absent."""
    i = raw.find(marker, 0, end)
    if i < 0:
        i = raw.find(marker[:-1], 0, end)  # no space after the colon (or several)
        if i < 0:
            return None
        i += len(marker) - 1
        j = raw.find(b"\r\n", i, end)
        return (raw[i:j] if j >= 0 else raw[i:end]).strip()
    i += len(marker)
    j = raw.find(b"\r\n", i, end)
    return raw[i:j] if j >= 0 else raw[i:end]


def extract(raw: bytes) -> tuple:
    """The `FIELDS` of one raw SIP message (see the module docstring)."""
    if raw[:1] in (b"\r", b"\n"):
        raw = raw.lstrip(b"\r\n")
    end = raw.find(b"\r\n\r\n")
    if end >= 0:
        body_size = len(raw) - end - 4
    else:
        end = raw.find(b"\n\n")
        if end < 0:
            end, body_size = len(raw), 0
        else:
            body_size = len(raw) - end - 2
    method = status = None
    if raw.startswith(b"SIP/2.0 "):
        code = raw[8:11]
        status = int(code) if code.isdigit() else None
    else:
        sp = raw.find(b" ", 0, end)
        method = raw[:sp] if sp > 0 else None
        if method is not None and not method.isalpha() and _TOKEN.fullmatch(method) is None:
            method = None  # not a request line
    call_id = _value(raw, b"\r\nCall-ID: ", end)
    cseq = _value(raw, b"\r\nCSeq: ", end)
    frm = _value(raw, b"\r\nFrom: ", end)
    to = _value(raw, b"\r\nTo: ", end)
    via = _value(raw, b"\r\nVia: ", end)
    if call_id is None or cseq is None or frm is None or to is None or via is None:
        found = _slow_headers(raw[:end])
        call_id = found.get(b"call-id", call_id)
        cseq = found.get(b"cseq", cseq)
        frm = found.get(b"from", frm)
        to = found.get(b"to", to)
        via = found.get(b"via", via)
    cseq_num = cseq_method = None
    if cseq is not None:
        num, _, cm = cseq.partition(b" ")
        if num.isdigit():
            cseq_num = int(num)
        cseq_method = cm.strip() or None
    if via is not None:
        comma = via.find(b",")
        if comma >= 0:
            via = via[:comma]
    ft, tt, br = _param(frm, b";tag="), _param(to, b";tag="), _param(via, b";branch=")
    # decoded here (~0.4 µs) because pyarrow converts a list of str ~5x faster than a list of bytes
    return (
        method.decode("utf-8", "replace") if method else None,
        status,
        call_id.decode("utf-8", "replace") if call_id else None,
        cseq_num,
        cseq_method.decode("utf-8", "replace") if cseq_method else None,
        ft.decode("utf-8", "replace") if ft else None,
        tt.decode("utf-8", "replace") if tt else None,
        br.decode("utf-8", "replace") if br else None,
        body_size,
    )


def fields_of(message) -> tuple | None:
    """The `FIELDS` of a parsed `sip.message.Message` (a Request or Response), from its cached header parses:
    the SIP core has these at hand for every message it sends or receives, so the recorder need not scan the
    bytes again. None if a field cannot be read (the caller falls back to `extract(raw)`)."""
    try:
        cseq = message.cseq
        method = getattr(message, "method", None)
        return (
            method,
            getattr(message, "status", None),
            message.call_id,
            cseq.number,
            cseq.method,
            message.from_.params.get("tag"),
            message.to.params.get("tag"),
            message.top_via.params.get("branch"),
            len(message.body),
        )
    except Exception:  # noqa: BLE001 - a message we cannot read is indexed from its bytes instead
        return None
