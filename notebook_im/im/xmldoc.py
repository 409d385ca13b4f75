"""Parsing the small XML documents SIP IM carries (is-composing, conference-info) from untrusted peers.

Bounded in size, and any DTD is refused outright: no entity expansion ("billion laughs"), no external entities.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from ..sip.errors import RemoteProtocolError


def parse_untrusted(body: bytes, *, limit: int, what: str) -> ET.Element:
    """The root element of `body`; RemoteProtocolError (413 when too large, else 400) naming `what`."""
    if len(body) > limit:
        raise RemoteProtocolError(f"{what} document too large", 413)
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise RemoteProtocolError(f"{what} document must not declare a DTD")
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise RemoteProtocolError(f"malformed {what} XML: {exc}") from None
