"""Parsing the small XML documents SIP IM carries (is-composing, IMDN, conference-info) from untrusted peers.

Every XML body a peer sends goes through `parse_untrusted`, so the defences live here once:

- **Size**: bounded by the caller's `limit` (413 past it).
- **Encoding, decided here and not by expat**: UTF-8 (BOM or not), US-ASCII, ISO-8859-1, and UTF-16 with a
  byte-order mark are accepted; anything else (UTF-32, EBCDIC, UTF-7, a codec such as `rot13` or `zlib`, a name
  Python does not know, a BOM that contradicts the declaration) is refused with 415 before a parser sees it.
  Why: expat hands an encoding it does not know to Python's codec machinery, where `encoding="rot13"` raised
  LookupError and `encoding="utf-7"` ValueError out of the parser; and a byte-level check for `<!DOCTYPE` is
  blind to a UTF-16 document, which is how a DTD with entities used to get past it. The text is decoded
  strictly in Python and handed to expat as a str (which overrides the declaration), so what expat parses is
  exactly what was checked.
- **No DTD at all**: a document type declaration, an entity declaration or an external entity reference
  stops the parser from inside expat's own callbacks (the `defusedxml` approach, with the standard library
  only), whatever the encoding. So no entity expansion (billion laughs, quadratic blowup), no external
  entities, no parameter entities. Nothing here processes XInclude: an `xi:include` is an unknown element.
- **Depth**: at most `MAX_DEPTH` nested elements (the deepest document we read nests 6).
- **Errors**: anything the parse raises becomes RemoteProtocolError (400, or 413/415 as above), so a caller
  that catches RemoteProtocolError answers every hostile document with a 4xx.

`escape` is the other direction, for the documents we build from values a peer chose (a display name copied
into conference-info, a message id echoed in an IMDN): XML 1.0 has no way to write a control character,
a lone surrogate or U+FFFE/U+FFFF, so they are dropped rather than written into a document every receiver
must refuse.

`ascii_int` reads the numbers in these documents: ASCII digits only (`str.isdigit` also takes '²', which
`int()` then refuses with ValueError) and a bounded number of them (`int()` refuses more than 4,300 digits, and
`float()` overflows far sooner).
"""

from __future__ import annotations

import codecs
import html
import re
import xml.etree.ElementTree as ET
from xml.parsers import expat

from ..sip.errors import RemoteProtocolError

MAX_DEPTH = 64

# declared encoding (lower case) -> the Python codec that decodes it; expat knows all of these natively
_ENCODINGS = {
    "utf-8": "utf-8",
    "utf8": "utf-8",
    "us-ascii": "ascii",
    "ascii": "ascii",
    "iso-8859-1": "latin-1",
    "latin-1": "latin-1",
    "latin1": "latin-1",
    "iso_8859-1": "latin-1",
    "utf-16": "utf-16",
    "utf-16le": "utf-16",
    "utf-16be": "utf-16",
}
_DECLARATION = re.compile(
    rb"<\?xml[ \t\r\n]+version[ \t\r\n]*=[ \t\r\n]*[\"'][^\"']*[\"']"
    rb"(?:[ \t\r\n]+encoding[ \t\r\n]*=[ \t\r\n]*[\"']([^\"']*)[\"'])?"
)
_DECLARATION_TEXT = re.compile(
    r"<\?xml[ \t\r\n]+version[ \t\r\n]*=[ \t\r\n]*[\"'][^\"']*[\"']"
    r"(?:[ \t\r\n]+encoding[ \t\r\n]*=[ \t\r\n]*[\"']([^\"']*)[\"'])?"
)


class _Refused(Exception):
    """Raised inside an expat callback to stop the parse (a DTD, an entity, too deep)."""


def _declared(match: re.Match | None) -> str | None:
    if match is None or match.group(1) is None:
        return None
    value = match.group(1)
    return (value.decode("ascii", "replace") if isinstance(value, bytes) else value).strip().lower()


def decode(body: bytes, what: str) -> str:
    """The text of an XML document in one of the accepted encodings (see the module docstring);
    RemoteProtocolError 415 for another encoding, 400 for bytes that are not valid in the one it names."""
    if body.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise RemoteProtocolError(
            f"{what} document in UTF-32: only UTF-8, US-ASCII, ISO-8859-1 and UTF-16 are accepted", 415
        )
    if body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        codec, bom = "utf-16", True
    elif body.startswith(codecs.BOM_UTF8):
        codec, bom, body = "utf-8", True, body[len(codecs.BOM_UTF8) :]
    else:
        if body[:1] == b"\x00" or body[1:2] == b"\x00" or body.startswith(b"\x4c\x6f\xa7\x94"):
            raise RemoteProtocolError(
                f"{what} document in an unsupported encoding (UTF-16 without a byte-order mark, UTF-32 or EBCDIC)", 415
            )
        codec, bom = None, False
        declared = _declared(_DECLARATION.match(body))
        if declared is not None:
            codec = _ENCODINGS.get(declared)
            if codec is None or codec == "utf-16":  # UTF-16 needs its byte-order mark (XML 1.0 §4.3.3)
                raise RemoteProtocolError(f"{what} document in an unsupported encoding {declared[:40]!r}", 415)
        codec = codec or "utf-8"
    try:
        text = body.decode(codec)
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"{what} document is not valid {codec}: byte {exc.start}") from None
    if bom:  # the declaration, if any, must agree with the byte-order mark
        declared = _declared(_DECLARATION_TEXT.match(text))
        if declared is not None and _ENCODINGS.get(declared) != codec:
            raise RemoteProtocolError(
                f"{what} document declares {declared[:40]!r} but starts with a {codec} byte-order mark", 415
            )
    return text


def parse_untrusted(body: bytes, *, limit: int, what: str) -> ET.Element:
    """The root element of `body`; RemoteProtocolError (413 when too large, 415 for an encoding we do not take,
    else 400) naming `what`. See the module docstring for what is refused and why."""
    if len(body) > limit:
        raise RemoteProtocolError(f"{what} document too large", 413)
    text = decode(body, what)
    builder = ET.TreeBuilder()
    depth = 0

    def name(raw: str) -> str:  # expat's "uri}local" (namespace_separator) as ElementTree's "{uri}local"
        return "{" + raw if "}" in raw else raw

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_DEPTH:
            raise _Refused(f"{what} document nested deeper than {MAX_DEPTH} elements")
        builder.start(name(tag), {name(k): v for k, v in attrs.items()})

    def end(tag: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(name(tag))

    def refuse_dtd(*_args: object) -> None:
        raise _Refused(f"{what} document must not declare a DTD")

    def refuse_entity(*_args: object) -> int:
        raise _Refused(f"{what} document must not declare or use entities")

    parser = expat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_entity
    parser.UnparsedEntityDeclHandler = refuse_entity
    parser.ExternalEntityRefHandler = refuse_entity
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(text, True)
        return builder.close()
    except _Refused as exc:
        raise RemoteProtocolError(str(exc)) from None
    except expat.ExpatError as exc:
        raise RemoteProtocolError(f"malformed {what} XML: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a hostile document must cost a 400, never an exception upstream
        raise RemoteProtocolError(f"malformed {what} XML ({type(exc).__name__})") from None


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def escape(value: str) -> str:
    """`value` as XML character data or an attribute value: markup characters escaped, characters XML 1.0 cannot
    hold dropped. (A conference participant whose display name held U+FFFF used to make every conference-info
    document the focus sent invalid, so every member refused the roster.)"""
    return html.escape(_NOT_XML.sub("", value), quote=True)


def ascii_int(text: str | None, *, max_digits: int = 10) -> int | None:
    """The value of `text` if it is 1 to `max_digits` ASCII digits, else None."""
    if not text or len(text) > max_digits or not (text.isascii() and text.isdigit()):
        return None
    return int(text)
