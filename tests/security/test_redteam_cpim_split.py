"""LOW. cpim._split (the fast path) checks MAX_LINE in characters, _split_lines in bytes: a header line of
3,000 'é' (6,000 bytes) is refused line by line (400) but accepted by the fast path, so unwrap() takes lines up
to 4x the limit (16 KiB of 4-byte characters). The fast path must read exactly as the line reader."""

from __future__ import annotations

import pytest

from notebook_im.im import cpim
from notebook_im.sip.errors import RemoteProtocolError


def _outcome(fn, data):
    try:
        return ("ok", fn(data))
    except RemoteProtocolError as exc:
        return ("error", exc.status_code, exc.reason)


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_fast_split_refuses_a_line_over_max_line_bytes_as_the_line_reader_does(char):
    value = char * (cpim.MAX_LINE // len(char.encode()) + 10)
    assert len(value) <= cpim.MAX_LINE < len(value.encode())
    data = f"From: <sip:a@x>\r\nTo: <sip:b@x>\r\nSubject: {value}\r\n\r\nContent-Type: text/plain\r\n\r\nhi".encode()
    assert _outcome(cpim._split, data) == _outcome(cpim._split_lines, data)
    with pytest.raises(RemoteProtocolError):
        cpim.unwrap(data)
