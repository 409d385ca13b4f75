"""Hostile XML and CPIM bodies: what a peer can put in a MESSAGE or NOTIFY body (is-composing, IMDN,
conference-info, message/cpim). Shared by the direct-call tests and the wire tests.

Each `Doc` names what it attacks, its content type, its bytes and the statuses a receiver may answer:
`REFUSED` (400, 413, 415) for a document that must be refused, `OK` (200) for one that is odd but harmless
and must be taken (an unusual encoding we accept, a number we ignore)."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

IC_CT = "application/im-iscomposing+xml"
IMDN_CT = "message/imdn+xml"
CI_CT = "application/conference-info+xml"
CPIM_CT = "message/cpim"

REFUSED = frozenset({400, 413, 415})
OK = frozenset({200})

IC_BODY = (
    '<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing"><state>active</state>'
    "<contenttype>{payload}</contenttype><refresh>{refresh}</refresh></isComposing>"
)
IMDN_BODY = (
    '<imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>{payload}</message-id>'
    "<delivery-notification><status><delivered/></status></delivery-notification></imdn>"
)
CI_BODY = (
    '<conference-info xmlns="urn:ietf:params:xml:ns:conference-info" entity="sip:conf-x@127.0.0.1" '
    'state="{state}" version="{version}"><conference-description><subject>{payload}</subject>'
    "</conference-description><conference-state><user-count>{count}</user-count></conference-state>"
    "<users/></conference-info>"
)

LAUGHS = (
    '<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
    '<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">]>'
)


@dataclass(frozen=True)
class Doc:
    name: str
    content_type: str
    body: bytes
    expect: frozenset[int]

    def __str__(self) -> str:
        return self.name


def _template(ct: str) -> str:
    return {IC_CT: IC_BODY, IMDN_CT: IMDN_BODY, CI_CT: CI_BODY}[ct]


def _fill(ct: str, payload: str = "x", **kw: str) -> str:
    values = {"payload": payload, "refresh": "60", "state": "full", "version": "1", "count": "1"} | kw
    return _template(ct).format(**values)


def xml_documents(ct: str, limit: int) -> list[Doc]:
    """The attacks on one XML content type whose parser takes at most `limit` bytes."""
    short = ct.split("/")[1].split("+")[0]
    decl16 = '<?xml version="1.0" encoding="UTF-16"?>'
    docs = [
        # entity expansion: a DTD in UTF-8 (refused before this work too) and in UTF-16, where a byte-level
        # check for "<!DOCTYPE" sees "<\0!\0D\0..." and used to let it through to expat
        Doc(f"{short}-billion-laughs-utf8", ct, (LAUGHS + _fill(ct, "&f;")).encode(), REFUSED),
        Doc(f"{short}-billion-laughs-utf16", ct, (decl16 + LAUGHS + _fill(ct, "&f;")).encode("utf-16"), REFUSED),
        Doc(f"{short}-billion-laughs-utf16be-no-decl", ct, (LAUGHS + _fill(ct, "&f;")).encode("utf-16"), REFUSED),
        Doc(
            f"{short}-quadratic-blowup-utf16",
            ct,
            (decl16 + f'<!DOCTYPE r [<!ENTITY a "{"A" * 400}">]>' + _fill(ct, "&a;" * 300)).encode("utf-16"),
            REFUSED,
        ),
        Doc(
            f"{short}-external-entity-utf16",
            ct,
            (decl16 + '<!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + _fill(ct, "&e;")).encode("utf-16"),
            REFUSED,
        ),
        Doc(
            f"{short}-external-dtd",
            ct,
            ('<!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd">' + _fill(ct)).encode(),
            REFUSED,
        ),
        Doc(
            f"{short}-parameter-entity-utf16",
            ct,
            (decl16 + '<!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>' + _fill(ct)).encode("utf-16"),
            REFUSED,
        ),
        Doc(
            f"{short}-entity-declaration-in-utf8-bom",
            ct,
            codecs.BOM_UTF8 + ('<!DOCTYPE r [<!ENTITY a "b">]>' + _fill(ct, "&a;")).encode(),
            REFUSED,
        ),
        # encodings
        Doc(f"{short}-utf32", ct, ('<?xml version="1.0" encoding="UTF-32"?>' + _fill(ct)).encode("utf-32"), REFUSED),
        Doc(f"{short}-utf32-no-bom", ct, _fill(ct).encode("utf-32-be"), REFUSED),
        Doc(f"{short}-ebcdic", ct, _fill(ct).encode("cp037"), REFUSED),
        Doc(
            f"{short}-ebcdic-declared",
            ct,
            b'<?xml version="1.0" encoding="cp500"?>'
            + ('<!DOCTYPE r [<!ENTITY a "b">]>' + _fill(ct, "&a;")).encode("cp500"),
            REFUSED,
        ),
        *[
            Doc(
                f"{short}-declared-{enc}", ct, (f'<?xml version="1.0" encoding="{enc}"?>' + _fill(ct)).encode(), REFUSED
            )
            for enc in ("rot13", "zlib", "hex", "idna", "utf-7", "x-klingon", "unicode_escape", "shift_jis")
        ],
        Doc(
            f"{short}-utf16-without-bom",
            ct,
            ('<?xml version="1.0" encoding="UTF-16"?>' + _fill(ct)).encode("utf-16-le"),
            REFUSED,
        ),
        Doc(
            f"{short}-utf16-bom-declares-utf8",
            ct,
            ('<?xml version="1.0" encoding="UTF-8"?>' + _fill(ct)).encode("utf-16"),
            REFUSED,
        ),
        Doc(
            f"{short}-utf8-bom-declares-utf16",
            ct,
            codecs.BOM_UTF8 + ('<?xml version="1.0" encoding="UTF-16"?>' + _fill(ct)).encode(),
            REFUSED,
        ),
        Doc(f"{short}-invalid-utf8", ct, _fill(ct, "\udcff").encode("utf-8", "surrogateescape"), REFUSED),
        Doc(f"{short}-latin1-says-utf8", ct, _fill(ct, "café").encode("latin-1"), REFUSED),
        # deep nesting within the size limit
        Doc(
            f"{short}-deep-nesting",
            ct,
            _fill(ct, "<x>" * ((limit - 400) // 7) + "</x>" * ((limit - 400) // 7)).encode(),
            REFUSED,
        ),
        # size: one byte over the limit
        Doc(f"{short}-over-the-limit", ct, _fill(ct, "A" * limit).encode(), frozenset({413})),
        # namespaces
        Doc(
            f"{short}-unbound-prefix",
            ct,
            _fill(ct).replace("<", "<evil:", 1).replace("xmlns=", "xmlns:x=", 1).encode(),
            REFUSED,
        ),
        Doc(f"{short}-not-xml", ct, b"\x00\x01\x02 garbage \xff", REFUSED),
        Doc(f"{short}-empty", ct, b"", REFUSED),
    ]
    return docs


def accepted_documents(ct: str) -> list[Doc]:
    """Documents that are odd but legitimate: they must be taken (200), not refused."""
    short = ct.split("/")[1].split("+")[0]
    return [
        Doc(
            f"{short}-utf16-with-bom", ct, ('<?xml version="1.0" encoding="UTF-16"?>' + _fill(ct)).encode("utf-16"), OK
        ),
        Doc(f"{short}-utf16-bom-no-declaration", ct, _fill(ct, "héllo").encode("utf-16"), OK),
        Doc(
            f"{short}-latin1-declared",
            ct,
            ('<?xml version="1.0" encoding="ISO-8859-1"?>' + _fill(ct, "café")).encode("latin-1"),
            OK,
        ),
        Doc(f"{short}-utf8-bom", ct, codecs.BOM_UTF8 + _fill(ct).encode(), OK),
        Doc(f"{short}-us-ascii-declared", ct, ('<?xml version="1.0" encoding="US-ASCII"?>' + _fill(ct)).encode(), OK),
        Doc(
            f"{short}-xinclude",
            ct,
            _fill(ct)
            .replace(
                "</",
                '<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd" parse="text"/></',
                1,
            )
            .encode(),
            OK,
        ),
    ]


# numbers a peer writes in these documents: '²' passes str.isdigit() and then fails int(); 5,000 digits fail
# int() (CPython's 4,300-digit limit); 400 digits overflow float()
NUMBERS = [
    Doc("iscomposing-refresh-superscript", IC_CT, _fill(IC_CT, refresh="²").encode(), OK),
    Doc("iscomposing-refresh-400-digits", IC_CT, _fill(IC_CT, refresh="9" * 400).encode(), OK),
    Doc("iscomposing-refresh-arabic-indic", IC_CT, _fill(IC_CT, refresh="١٢٠").encode(), OK),
    Doc("conference-version-superscript", CI_CT, _fill(CI_CT, version="²").encode(), REFUSED),
    Doc("conference-version-5000-digits", CI_CT, _fill(CI_CT, version="9" * 5000).encode(), REFUSED),
    Doc("conference-version-over-32-bits", CI_CT, _fill(CI_CT, version=str(2**32)).encode(), REFUSED),
    Doc("conference-user-count-superscript", CI_CT, _fill(CI_CT, count="³").encode(), OK),
    Doc("conference-user-count-5000-digits", CI_CT, _fill(CI_CT, count="9" * 5000).encode(), OK),
]


# -- message/cpim -----------------------------------------------------------------------------------------------
def cpim(head: str, inner: str = "Content-Type: text/plain\r\n", body: bytes = b"hello", *, eol: str = "\r\n") -> bytes:
    """A message/cpim body from its header block, its inner header block and its content."""
    return (head.replace("\r\n", eol) + eol + inner.replace("\r\n", eol) + eol).encode() + body


GOOD_HEAD = "From: <sip:mallory@example.test>\r\nTo: <sip:bob@example.test>\r\nDateTime: 2030-01-01T00:00:00Z\r\n"

CPIM_DOCS = [
    Doc("cpim-no-from", CPIM_CT, cpim("To: <sip:bob@example.test>\r\n"), REFUSED),
    Doc(
        "cpim-two-froms",
        CPIM_CT,
        cpim('From: <sip:mallory@example.test>\r\nFrom: "Bob" <sip:bob@example.test>\r\n'),
        REFUSED,
    ),
    Doc(
        "cpim-two-message-ids",
        CPIM_CT,
        cpim(GOOD_HEAD + "NS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: a\r\nimdn.Message-ID: b\r\n"),
        REFUSED,
    ),
    Doc("cpim-no-blank-line", CPIM_CT, GOOD_HEAD.encode() + b"Content-Type: text/plain", REFUSED),
    Doc("cpim-no-inner-blank-line", CPIM_CT, (GOOD_HEAD + "\r\nContent-Type: text/plain\r\n").encode(), REFUSED),
    Doc("cpim-oversized-header", CPIM_CT, cpim(GOOD_HEAD + "Subject: " + "A" * 8000 + "\r\n"), REFUSED),
    Doc("cpim-65-headers", CPIM_CT, cpim(GOOD_HEAD + "".join(f"X-{i}: v\r\n" for i in range(65))), REFUSED),
    Doc(
        "cpim-content-length-superscript",
        CPIM_CT,
        cpim(GOOD_HEAD, "Content-Type: text/plain\r\nContent-Length: ²\r\n"),
        REFUSED,
    ),
    Doc(
        "cpim-content-length-5000-digits",
        CPIM_CT,
        cpim(GOOD_HEAD, "Content-Type: text/plain\r\nContent-Length: " + "9" * 5000 + "\r\n"),
        REFUSED,
    ),
    Doc(
        "cpim-nul-in-message-id",
        CPIM_CT,
        cpim(GOOD_HEAD + "NS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: a\x00b\r\n"),
        REFUSED,
    ),
    Doc("cpim-escape-in-from", CPIM_CT, cpim('From: "\x1b[31mBob" <sip:mallory@example.test>\r\n'), REFUSED),
    Doc("cpim-nel-in-header", CPIM_CT, cpim(GOOD_HEAD + "Subject: a\u0085From: <sip:bob@example.test>\r\n"), REFUSED),
    Doc(
        "cpim-invalid-utf8-header",
        CPIM_CT,
        b"From: \xff\xfe <sip:mallory@example.test>\r\n\r\nContent-Type: text/plain\r\n\r\nhi",
        REFUSED,
    ),
    Doc("cpim-bad-from", CPIM_CT, cpim("From: <<<>>>\r\n"), REFUSED),
    Doc("cpim-header-without-colon", CPIM_CT, cpim(GOOD_HEAD + "no colon here\r\n"), REFUSED),
    Doc("cpim-empty", CPIM_CT, b"", REFUSED),
    # nested CPIM: a wrapper in a wrapper is not a text (415), never unwrapped twice
    Doc("cpim-nested", CPIM_CT, cpim(GOOD_HEAD, "Content-Type: message/cpim\r\n", cpim(GOOD_HEAD)), frozenset({415})),
    # an IMDN inside CPIM that is itself hostile: the inner document goes through the same XML parser
    Doc(
        "cpim-wrapping-billion-laughs-utf16",
        CPIM_CT,
        cpim(
            GOOD_HEAD,
            f"Content-Type: {IMDN_CT}\r\nContent-Disposition: notification\r\n",
            ('<?xml version="1.0" encoding="UTF-16"?>' + LAUGHS + _fill(IMDN_CT, "&f;")).encode("utf-16"),
        ),
        REFUSED,
    ),
    Doc(
        "cpim-wrapping-rot13-imdn",
        CPIM_CT,
        cpim(
            GOOD_HEAD,
            f"Content-Type: {IMDN_CT}\r\n",
            ('<?xml version="1.0" encoding="rot13"?>' + _fill(IMDN_CT)).encode(),
        ),
        REFUSED,
    ),
]

# bare-LF wrappers whose *body* holds a CRLFCRLF: the header block ends at the first empty line, so the body's
# lines are never read as headers (a second From in the body used to become the sender)
LF_SPOOF = cpim(
    "From: <sip:mallory@example.test>\n",
    "Content-Type: text/plain\n",
    b"Subject: hi\r\nFrom: <sip:bob@example.test>\r\n\r\nContent-Type: text/plain\r\n\r\nspoofed",
    eol="\n",
)
