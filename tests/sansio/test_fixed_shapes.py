"""The receipt's fast paths agree with the general parsers: `imdn._fixed` (one regular expression for the
document's usual shape) never accepts what the XML parser refuses nor reads anything differently, and
`cpim._split` (the whole header block at once) gives what the line-by-line reading gives, errors included.
Checked on documents built by the library, by hand in other clients' shapes, and thousands of mutations of
them (seeded, bounded)."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest

from notebook_im.im import cpim, imdn
from notebook_im.sip.errors import RemoteProtocolError

NOW = datetime(2026, 12, 5, 10, 0, tzinfo=timezone.utc)
SEED = 20261205
INTERESTING = [b"<", b">", b"&", b"\r", b"\n", b" ", b"\t", b"\x00", b"\x0b", b"/", b'"', b"=", b"\xff", b"\xc3", b"a"]


def notifications() -> list[imdn.Notification]:
    out = []
    for kind, statuses in imdn.STATUSES.items():
        for status in statuses:
            out.append(imdn.Notification("id-1", kind, status))
            out.append(imdn.Notification("a<b>&c", kind, status, "2026-12-05T10:00:00Z", "sip:bob@x", "sip:o@y"))
    return out


def mutations(doc: bytes, count: int, rng: random.Random) -> list[bytes]:
    out = []
    for _ in range(count):
        d = bytearray(doc)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(d) + 1)
            op = rng.randrange(3)
            if op == 0 and d:
                del d[min(i, len(d) - 1)]
            elif op == 1:
                d[i:i] = rng.choice(INTERESTING)
            elif d:
                d[min(i, len(d) - 1)] = rng.choice(INTERESTING)[0]
        out.append(bytes(d))
    return out


def xml_reading(doc: bytes) -> imdn.Notification | str:
    try:
        return imdn.parse_xml(doc)
    except RemoteProtocolError as exc:
        return f"refused {exc.status_code}"


HAND_WRITTEN = [
    # linphone's shape: no declaration's spaces, a different order is the XML parser's business
    b'<?xml version="1.0" encoding="UTF-8"?><imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>x</message-id>'
    b"<datetime>2026-12-05T10:00:00Z</datetime><delivery-notification><status><delivered/></status>"
    b"</delivery-notification></imdn>",
    b'<imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>  y </message-id>'
    b"<display-notification><status><displayed/></status></display-notification></imdn>",
    b'<imdn xmlns="urn:ietf:params:xml:ns:imdn"><datetime>d</datetime><message-id>z</message-id>'
    b"<delivery-notification><status><failed/></status></delivery-notification></imdn>",
    b'<imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id></message-id>'
    b"<delivery-notification><status><delivered/></status></delivery-notification></imdn>",
    b'<imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>m</message-id>'
    b"<delivery-notification><status><displayed/></status></delivery-notification></imdn>",
]


def test_the_fixed_imdn_shape_reads_what_the_xml_parser_reads():
    rng = random.Random(SEED)
    docs = [imdn.build(n) for n in notifications()] + HAND_WRITTEN
    fast = 0
    for doc in docs + [m for d in docs[:6] + HAND_WRITTEN for m in mutations(d, 600, rng)]:
        fixed = imdn._fixed(doc)  # noqa: SLF001 - the fast path itself is what is under test
        if fixed is None:
            continue
        fast += 1
        assert xml_reading(doc) == fixed, doc
        assert imdn.parse(doc) == fixed
    assert fast > 40, "the fixed shape took the library's own documents"
    for n in notifications():  # what the library builds round-trips, by either path
        assert imdn.parse(imdn.build(n)) == imdn.parse_xml(imdn.build(n)) == n


def split_reading(fn, data: bytes):
    try:
        return fn(data)
    except RemoteProtocolError as exc:
        return f"refused {exc.status_code}: {exc.reason}"


def test_the_cpim_block_at_once_reads_what_the_line_by_line_reading_reads():
    rng = random.Random(SEED)
    wrappers = [imdn.wrap(n, "sip:bob@x", "sip:alice@y", "nid", NOW) for n in notifications()[:4]] + [
        cpim.wrap("sip:a@x", "sip:b@y", b"hello\r\n\r\nworld", "text/plain", message_id="m1", display_name="A"),
        b"From: <sip:a@x>\nTo: <sip:b@y>\n\nContent-Type: text/plain\r\n\r\nbare LF\r\n\r\nbody",
        b"From: <sip:a@x>\r\n   \r\nTo: <sip:b@y>\r\n\r\nContent-Type: text/plain\r\n\r\nx",
        b"From: <sip:a@x>\r\n" + b"X: y\r\n" * 70 + b"\r\nContent-Type: text/plain\r\n\r\nx",
        b"From: <sip:a@x>\r\nBad Name: y\r\n\r\nContent-Type: text/plain\r\n\r\nx",
    ]
    for data in wrappers + [m for w in wrappers for m in mutations(w, 400, rng)]:
        assert split_reading(cpim._split, data) == split_reading(cpim._split_lines, data), data  # noqa: SLF001


@pytest.mark.parametrize("n", notifications()[:3])
def test_a_wrapped_notification_unpacks_to_itself(n):
    assert imdn.unpack("message/cpim", imdn.wrap(n, "sip:bob@x", "sip:alice@y", "nid", NOW)) == n
