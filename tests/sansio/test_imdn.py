"""RFC 5438 IMDN, sans-IO: documents, headers, CPIM wrapping, and every entry of the sender's state table."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from notebook_im.im import cpim, imdn
from notebook_im.sip import RemoteProtocolError
from notebook_im.sip.headers import Headers

NOW = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=timezone.utc)
S, In = imdn.MessageState, imdn.Input

# RFC 5438 §7.2.1.1's delivery notification (namespaced, with the optional elements)
RFC_DELIVERED = b"""<?xml version="1.0" encoding="UTF-8"?>
<imdn xmlns="urn:ietf:params:xml:ns:imdn">
  <message-id>34jk324j</message-id>
  <datetime>2008-04-04T12:16:49-05:00</datetime>
  <recipient-uri>im:bob@example.com</recipient-uri>
  <original-recipient-uri>im:bob@example.com</original-recipient-uri>
  <delivery-notification>
     <status>
        <delivered/>
     </status>
  </delivery-notification>
</imdn>"""

# what linphone sends for "displayed" (an extra namespace and extension element next to the standard ones)
LINPHONE_DISPLAYED = b"""<?xml version="1.0" encoding="UTF-8"?>
<imdn xmlns="urn:ietf:params:xml:ns:imdn" xmlns:linphoneimdn="http://www.linphone.org/xsds/imdn.xsd">
<message-id>Dl8d7a2</message-id><datetime>2024-01-01T10:00:00Z</datetime>
<display-notification><status><displayed/></status></display-notification>
<linphoneimdn:reason code="200">OK</linphoneimdn:reason>
</imdn>"""


def test_rfc_example_parses() -> None:
    n = imdn.parse(RFC_DELIVERED)
    assert (n.message_id, n.kind, n.status) == ("34jk324j", "delivery", "delivered")
    assert n.datetime == "2008-04-04T12:16:49-05:00" and n.recipient_uri == "im:bob@example.com"
    assert n.original_recipient_uri == "im:bob@example.com"


def test_linphone_display_notification_parses() -> None:
    n = imdn.parse(LINPHONE_DISPLAYED)
    assert (n.message_id, n.kind, n.status) == ("Dl8d7a2", "display", "displayed")


@pytest.mark.parametrize("kind,status", [(k, s) for k, statuses in imdn.STATUSES.items() for s in statuses])
def test_build_parse_round_trip(kind: str, status: str) -> None:
    n = imdn.Notification("id<&>1", kind, status, "2024-05-06T07:08:09.123Z", "sip:bob@x", "sip:bob@y")
    doc = imdn.build(n)
    assert b"id&lt;&amp;&gt;1" in doc  # values from the other party are escaped
    assert imdn.parse(doc) == n


@pytest.mark.parametrize(
    "body,why",
    [
        (b"not xml", "malformed"),
        (b"<foo/>", "root"),
        (b"<imdn><message-id>x</message-id></imdn>", "without a delivery"),
        (b"<imdn><delivery-notification><status><delivered/></status></delivery-notification></imdn>", "message-id"),
        (
            b"<imdn><message-id>x</message-id><delivery-notification><status><displayed/></status>"
            b"</delivery-notification></imdn>",
            "valid status",
        ),
        (
            b"<imdn><message-id>x</message-id><display-notification><status/></display-notification></imdn>",
            "valid status",
        ),
        (
            b"<imdn><message-id>x</message-id><delivery-notification><status><delivered/></status></delivery-notification>"
            b"<display-notification><status><displayed/></status></display-notification></imdn>",
            "more than one",
        ),
        (b'<!DOCTYPE imdn [<!ENTITY a "b">]><imdn/>', "DTD"),
        (b"<imdn>" + b"x" * 5000 + b"</imdn>", "too large"),
    ],
)
def test_bad_documents_are_refused(body: bytes, why: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        imdn.parse(body)
    assert why in info.value.reason


def test_notification_rejects_wrong_kind_or_status() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        imdn.Notification("x", "read", "displayed")
    with pytest.raises(ValueError, match="status is one of displayed, forbidden, error"):
        imdn.Notification("x", "display", "delivered")


def test_request_headers_and_parse_disposition() -> None:
    h = imdn.request_headers("abc", NOW)
    assert h == {
        "Imdn-Message-ID": "abc",
        "DateTime": "2024-05-06T07:08:09.123Z",
        "Disposition-Notification": "positive-delivery, display",
    }
    assert imdn.parse_disposition("Positive-Delivery , display, unknown-future") == {"positive-delivery", "display"}
    assert imdn.parse_disposition("") == frozenset() and imdn.parse_disposition(None) == frozenset()
    assert "Disposition-Notification" not in imdn.request_headers("abc", NOW, wanted=())


def test_requested_from_sip_headers() -> None:
    headers = Headers(
        [
            ("Imdn-Message-ID", "m1"),
            ("DateTime", "2024-01-01T00:00:00Z"),
            ("Disposition-Notification", "positive-delivery, display"),
        ]
    )
    req = imdn.requested(headers)
    assert req == imdn.Request("m1", "2024-01-01T00:00:00Z", frozenset({"positive-delivery", "display"}))
    assert req.delivery and req.display
    assert imdn.requested(Headers([("Imdn-Message-ID", "m1")])) is None  # nothing asked
    assert imdn.requested(Headers([("Disposition-Notification", "display")])) is None  # nothing to refer to


def test_requested_from_a_cpim_wrapper_as_linphone_sends_it() -> None:
    body = (
        b"From: <sip:linphone@example.test>\r\nTo: <sip:bob@example.test>\r\n"
        b"DateTime: 2024-01-01T10:00:00Z\r\nNS: imdn <urn:ietf:params:imdn>\r\n"
        b"imdn.Message-ID: Lx1\r\nimdn.Disposition-Notification: positive-delivery, display\r\n\r\n"
        b"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 2\r\n\r\nhi"
    )
    wrapped = cpim.unwrap(body)
    req = imdn.requested(Headers(), wrapped)
    assert req == imdn.Request("Lx1", "2024-01-01T10:00:00Z", frozenset({"positive-delivery", "display"}))
    assert not imdn.requested(Headers(), cpim.unwrap(body.replace(b"imdn.Disposition-Notification", b"X-Other")))


def test_wrap_and_unpack_both_forms() -> None:
    n = imdn.Notification("m1", "delivery", "delivered", "2024-01-01T00:00:00Z", "sip:bob@example.test")
    body = imdn.wrap(n, "sip:bob@example.test", "sip:alice@example.test", "n1", NOW)
    w = cpim.unwrap(body)
    assert w.content_type == imdn.CONTENT_TYPE and w.content_disposition == "notification"
    assert w.message_id == "n1" and w.sender == "sip:bob@example.test"
    assert imdn.unpack("message/cpim", body) == n
    assert imdn.unpack("message/imdn+xml; charset=UTF-8", imdn.build(n)) == n
    assert imdn.unpack("text/plain", b"<imdn/>") is None
    text = cpim.wrap("sip:a@x", "sip:b@x", b"hi", "text/plain")
    assert imdn.unpack("message/cpim", text) is None
    with pytest.raises(RemoteProtocolError):
        imdn.unpack("message/imdn+xml", b"<imdn/>")


# -- the state table ------------------------------------------------------------------------------------------
EXPECTED = {
    (S.SENDING, In.RESPONSE_2XX): S.SENT,
    (S.SENDING, In.RESPONSE_ERROR): S.FAILED,
    (S.SENDING, In.DELIVERED): S.DELIVERED,
    (S.SENDING, In.DELIVERY_FAILED): S.FAILED,
    (S.SENDING, In.DISPLAYED): S.DISPLAYED,
    (S.SENT, In.RESPONSE_2XX): S.SENT,
    (S.SENT, In.RESPONSE_ERROR): S.SENT,
    (S.SENT, In.DELIVERED): S.DELIVERED,
    (S.SENT, In.DELIVERY_FAILED): S.FAILED,
    (S.SENT, In.DISPLAYED): S.DISPLAYED,
    (S.DELIVERED, In.RESPONSE_2XX): S.DELIVERED,
    (S.DELIVERED, In.RESPONSE_ERROR): S.DELIVERED,
    (S.DELIVERED, In.DELIVERED): S.DELIVERED,
    (S.DELIVERED, In.DELIVERY_FAILED): S.DELIVERED,
    (S.DELIVERED, In.DISPLAYED): S.DISPLAYED,
    **{(S.DISPLAYED, i): S.DISPLAYED for i in In},
    (S.FAILED, In.RESPONSE_2XX): S.FAILED,
    (S.FAILED, In.RESPONSE_ERROR): S.FAILED,
    (S.FAILED, In.DELIVERED): S.DELIVERED,
    (S.FAILED, In.DELIVERY_FAILED): S.FAILED,
    (S.FAILED, In.DISPLAYED): S.DISPLAYED,
}


def test_table_is_complete() -> None:
    assert set(imdn.TRANSITIONS) == {(s, i) for s in S for i in In}


@pytest.mark.parametrize("state,event", sorted(EXPECTED, key=lambda k: (k[0].value, k[1].value)))
def test_table_entry(state: imdn.MessageState, event: imdn.Input) -> None:
    assert imdn.advance(state, event) is EXPECTED[(state, event)]
    assert imdn.advance(state.value, event.value) is EXPECTED[(state, event)]  # plain strings work too


@pytest.mark.parametrize(
    "order,final",
    [
        ([In.RESPONSE_2XX, In.DELIVERED, In.DISPLAYED], S.DISPLAYED),  # the usual order
        ([In.DELIVERED, In.RESPONSE_2XX], S.DELIVERED),  # receipt overtakes the 200
        ([In.DISPLAYED, In.DELIVERED, In.RESPONSE_2XX], S.DISPLAYED),  # both receipts overtake, out of order
        ([In.RESPONSE_2XX, In.DISPLAYED], S.DISPLAYED),  # displayed implies delivered
        ([In.RESPONSE_ERROR, In.DELIVERED], S.DELIVERED),  # timed out, yet it arrived
        ([In.RESPONSE_2XX], S.SENT),  # a peer without IMDN: stays sent
    ],
)
def test_orders(order: list, final: imdn.MessageState) -> None:
    state = S.SENDING
    for event in order:
        state = imdn.advance(state, event)
    assert state is final


@pytest.mark.parametrize(
    "kind,status,expected",
    [
        ("delivery", "delivered", In.DELIVERED),
        ("delivery", "failed", In.DELIVERY_FAILED),
        ("delivery", "forbidden", None),
        ("delivery", "error", None),
        ("display", "displayed", In.DISPLAYED),
        ("display", "forbidden", None),
        ("display", "error", None),
        ("processing", "processed", None),
        ("processing", "stored", None),
        ("processing", "forbidden", None),
        ("processing", "error", None),
    ],
)
def test_input_for_every_notification(kind: str, status: str, expected) -> None:
    assert imdn.input_for(imdn.Notification("m", kind, status)) is expected


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 12, 5, 15, 0, 0, 123999, tzinfo=timezone.utc),
        datetime(2026, 12, 5, 16, 30, 0, 123999, tzinfo=timezone(timedelta(hours=1, minutes=30))),
        datetime(2026, 12, 5, 10, 0, 0, 123999, tzinfo=timezone(timedelta(hours=-5))),
    ],
)
def test_datetimes_go_out_in_utc_with_milliseconds_whatever_the_zone(when: datetime) -> None:
    """RFC 3339 "Z" means UTC: a CPIM DateTime and an IMDN <datetime> made from a clock in another zone are
    converted, not stamped "Z" on local fields; milliseconds truncated, as the old strftime [:-3] did."""
    assert imdn.format_datetime(when) == "2026-12-05T15:00:00.123Z"
    wrapped = cpim.unwrap(cpim.wrap("sip:a@x", "sip:b@y", b"hi", "text/plain", now=when))
    assert wrapped.datetime == "2026-12-05T15:00:00.123Z"
