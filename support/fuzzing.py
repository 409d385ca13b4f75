"""The parser fuzz target shared by the CI fuzz test (hypothesis) and bench/fuzz_parser.py (atheris or hypothesis).

`exercise(data)` feeds one input through everything that reads untrusted bytes before the transaction layer:
`parse_message` (datagram and stream mode), the typed accessors a UA or proxy calls, the 400 a UA builds from a
partial request, a serialize/re-parse round trip, and `StreamFramer.feed` in uneven chunks. The only exception
allowed out is `RemoteProtocolError`; anything else is a bug (the fuzzer reports it with the input).
"""

from __future__ import annotations

import random
from pathlib import Path

from notebook_im.sip import RemoteProtocolError, Request, StreamFramer, parse_message
from notebook_im.sip.message import make_response

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "corpus"

_ACCESSORS = (
    "call_id",
    "cseq",
    "from_",
    "to",
    "vias",
    "top_via",
    "contacts",
    "routes",
    "record_routes",
    "content_type",
    "charset",
    "expires",
    "max_forwards",
)


def seeds() -> list[bytes]:
    """Every corpus message (valid and invalid): the starting points of the mutation fuzzers."""
    return [p.read_bytes() for p in sorted(CORPUS.glob("*/*.sip"))]


def _touch(message) -> None:
    for name in _ACCESSORS:
        try:
            getattr(message, name)
        except RemoteProtocolError:
            pass
    try:
        for via in message.vias:
            via.response_address()
            str(via)
    except RemoteProtocolError:
        pass
    message.text()
    repr(message)


def _check_error(exc: RemoteProtocolError) -> None:
    assert isinstance(exc.reason, str) and exc.reason
    assert 400 <= exc.status_code <= 599, exc.status_code
    partial = exc.message
    if isinstance(partial, Request):  # what the UA does: answer it; that must always be possible
        partial.top_via  # the parser promises a Via to answer along
        response = make_response(partial, exc.status_code, "Bad Request (x)")
        wire = bytes(response)
        try:  # a response echoing a request that lacks From or To is itself incomplete: only parse it
            assert parse_message(wire).status == exc.status_code
        except RemoteProtocolError:
            pass


def exercise(data: bytes) -> None:
    for stream in (False, True):
        try:
            message = parse_message(data, stream=stream)
        except RemoteProtocolError as exc:
            _check_error(exc)
            continue
        _touch(message)
        wire = bytes(message)
        again = parse_message(wire, stream=True)  # what we parsed, we can serialize and parse back
        assert bytes(again) == wire, (wire, bytes(again))
    framer = StreamFramer()
    rng = random.Random(len(data))
    i = 0
    try:
        while i < len(data):
            step = rng.randint(1, 64)
            for framed in framer.feed(data[i : i + step]):
                try:
                    parse_message(framed, stream=True)
                except RemoteProtocolError:
                    pass
            i += step
    except RemoteProtocolError:
        pass


# -- a small structure-aware mutator (used by the hypothesis strategy and the standalone fuzzer) -------------
TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b"\r\n ",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b'"',
    b"\\",
    b"@",
    b"%",
    b"%00",
    b"%zz",
    b"[",
    b"]",
    b"[::1]",
    b"=",
    b"?",
    b"/",
    b"\x00",
    b"\xff",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\xc2\xb2",
    b"\xd9\xa1",
    b"0",
    b"-1",
    b"4294967296",
    b"99999999999999999999",
    b"65536",
    b"\xef\xbb\xbf",
    b"SIP/2.0",
    b"SIP/2.0/UDP ",
    b"sip:",
    b"sips:",
    b"tel:",
    b"z9hG4bK",
    b";branch=",
    b";rport",
    b";tag=",
    b";transport=",
    b";received=",
    b";maddr=",
    b"Content-Length: ",
    b"l: ",
    b"CSeq: ",
    b"Via: ",
    b"v: ",
    b"From: ",
    b"To: ",
    b"Call-ID: ",
    b"Max-Forwards: ",
    b"Contact: *",
    b"Expires: ",
    b"Content-Type: ",
    b"charset=",
    b"charset=idna",
    b"charset=utf-16",
    b"INVITE",
    b"ACK",
    b"MESSAGE",
    b"FOO.BAR",
    b"SIP/2.0 200 OK",
    b"SIP/2.0 100",
    b"SIP/3.0",
]


def mutate(data: bytes, rng: random.Random, rounds: int = 4) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, rounds)):
        op = rng.randrange(8)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:  # flip a byte
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:  # insert a token
            buf[pos:pos] = rng.choice(TOKENS)
        elif op == 2 and buf:  # delete a range
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 3 and buf:  # duplicate a range
            end = min(len(buf), pos + rng.randint(1, 64))
            buf[pos:pos] = buf[pos:end] * rng.randint(1, 8)
        elif op == 4:  # truncate
            del buf[pos:]
        elif op == 5:  # replace a line with another line of the message
            lines = bytes(buf).split(b"\r\n")
            if len(lines) > 1:
                lines[rng.randrange(len(lines))] = rng.choice(lines)
                buf = bytearray(b"\r\n".join(lines))
        elif op == 6:  # swap two lines
            lines = bytes(buf).split(b"\r\n")
            if len(lines) > 2:
                a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
                lines[a], lines[b] = lines[b], lines[a]
                buf = bytearray(b"\r\n".join(lines))
        else:  # overwrite with a token
            tok = rng.choice(TOKENS)
            buf[pos : pos + len(tok)] = tok
    return bytes(buf[:70000])
