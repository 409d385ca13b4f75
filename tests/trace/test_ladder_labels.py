"""Ladder labels say what a MESSAGE carries: its text, or its kind for composing indications and IMDN receipts
(bare or wrapped in message/cpim), and the text inside a conference's message/cpim."""

from __future__ import annotations

import pytest

from notebook_im.trace.ladder import arrow_from_raw


def message(content_type: str, body: str, *, header: str = "Content-Type") -> bytes:
    data = body.replace("\n", "\r\n").encode()
    return (
        f"MESSAGE sip:bob@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK1\r\n"
        f"From: <sip:alice@example.test>;tag=a\r\nTo: <sip:bob@example.test>;tag=b\r\nCall-ID: c1\r\n"
        f"CSeq: 2 MESSAGE\r\n{header}: {content_type}\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def label(raw: bytes) -> str:
    return arrow_from_raw(0.0, "out", ("127.0.0.1", 5080), ("127.0.0.1", 5070), raw, "alice").label


def composing(state: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing">\n'
        f"  <state>{state}</state>\n  <contenttype>text/plain</contenttype>\n</isComposing>\n"
    )


def imdn(kind: str, status: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<imdn xmlns="urn:ietf:params:xml:ns:imdn">\n'
        "  <message-id>ae264038d3cb</message-id>\n  <datetime>2024-05-06T07:08:09.123Z</datetime>\n"
        f"  <{kind}-notification><status><{status}/></status></{kind}-notification>\n</imdn>\n"
    )


def cpim(content_type: str, inner: str, extra: str = "") -> str:
    return (
        f"From: <sip:bob@example.test>\nTo: <sip:alice@example.test>\nDateTime: 2024-05-06T07:08:09.201Z\n{extra}\n"
        f"Content-Type: {content_type}\nContent-Length: {len(inner.encode())}\n\n{inner}"
    )


@pytest.mark.parametrize(
    "raw, expected",
    [
        (message("application/im-iscomposing+xml", composing("active")), "MESSAGE (composing: active)"),
        (message("application/im-iscomposing+xml", composing("idle")), "MESSAGE (composing: idle)"),
        (message("application/im-iscomposing+xml", composing("idle"), header="c"), "MESSAGE (composing: idle)"),
        (message("Application/IM-IsComposing+XML; charset=utf-8", composing("active")), "MESSAGE (composing: active)"),
        (message("message/imdn+xml", imdn("delivery", "delivered")), "MESSAGE (receipt: delivered)"),
        (
            message(
                "message/cpim",
                cpim("message/imdn+xml", imdn("delivery", "delivered"), "NS: imdn <urn:ietf:params:imdn>\n"),
            ),
            "MESSAGE (receipt: delivered)",
        ),
        (
            message("message/cpim", cpim("message/imdn+xml", imdn("display", "displayed"))),
            "MESSAGE (receipt: displayed)",
        ),
        (message("message/cpim", cpim("message/imdn+xml", imdn("delivery", "failed"))), "MESSAGE (receipt: failed)"),
        (message("message/imdn+xml", "<imdn/>"), "MESSAGE (receipt)"),
        (message("message/cpim", cpim("text/plain;charset=UTF-8", "Welcome, Carol!")), 'MESSAGE "Welcome, Carol!"'),
        (
            message("message/cpim", cpim("application/im-iscomposing+xml", composing("active"))),
            "MESSAGE (composing: active)",
        ),
        (message("text/plain;charset=UTF-8", "hello bob"), 'MESSAGE "hello bob"'),
        (
            message("text/plain", "a text long enough to be cut short in the diagram"),
            'MESSAGE "a text long enough to b…"',
        ),
        (message("text/plain", "<state>active</state>"), 'MESSAGE "<state>active</state>"'),  # text is text
    ],
)
def test_message_labels(raw: bytes, expected: str) -> None:
    assert label(raw) == expected


def test_a_receipt_is_never_labelled_with_its_cpim_headers() -> None:
    raw = message("message/cpim", cpim("message/imdn+xml", imdn("delivery", "delivered")))
    assert "From:" not in label(raw)
