"""Content-Encoding (sip/coding.py): deflate (zlib and raw) and gzip inflated, unknown codings 415, bombs 413."""

from __future__ import annotations

import gzip
import zlib

import pytest

from notebook_im.sip.coding import ACCEPT_ENCODING, MAX_INFLATED, decode
from notebook_im.sip.errors import RemoteProtocolError
from notebook_im.sip.parser import parse_message

DOC = b'<?xml version="1.0"?><isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing"><state>active</state></isComposing>'


def message(body: bytes, coding: str | None) -> object:
    head = (
        "MESSAGE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\n"
        "Call-ID: c\r\nCSeq: 1 MESSAGE\r\nContent-Type: application/im-iscomposing+xml\r\n"
        + (f"Content-Encoding: {coding}\r\n" if coding else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return parse_message(head.encode() + body)


@pytest.mark.parametrize(
    "coding, packed",
    [
        ("deflate", zlib.compress(DOC)),  # RFC 1950 zlib, what liblinphone sends
        ("deflate", zlib.compress(DOC)[2:-4]),  # raw RFC 1951, what some send as "deflate"
        ("gzip", gzip.compress(DOC)),
        ("Deflate, identity", zlib.compress(DOC)),
    ],
)
def test_compressed_bodies_are_inflated_and_the_header_goes(coding, packed):
    m = message(packed, coding)
    decode(m)
    assert m.body == DOC and m.headers.get("Content-Encoding") is None
    assert m.headers.get("Content-Length") == str(len(DOC))


def test_unknown_coding_is_415_with_what_we_take():
    m = message(b"xyz", "br")
    with pytest.raises(RemoteProtocolError) as info:
        decode(m)
    assert info.value.status_code == 415 and "br" in info.value.reason and ACCEPT_ENCODING in info.value.reason


def test_a_decompression_bomb_is_413_and_garbage_400():
    bomb = zlib.compress(b"\0" * (50 * MAX_INFLATED))
    assert len(bomb) < 4000
    with pytest.raises(RemoteProtocolError) as info:
        decode(message(bomb, "deflate"))
    assert info.value.status_code == 413
    with pytest.raises(RemoteProtocolError) as info:
        decode(message(b"not compressed at all", "deflate"))
    assert info.value.status_code == 400


def test_no_coding_is_no_change():
    m = message(DOC, None)
    decode(m)
    assert m.body == DOC
