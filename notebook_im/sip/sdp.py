"""The SDP of an IM session (session mode as OCS/Lync speak it): `m=message <port> sip null`.

Only what IM needs: build an offer or answer, and check that a remote description offers a message
stream and which content types it accepts (Lync sends `a=accept-types:`). Office Communications Server 2005
clients name the stream `m=x-ms-message` (SIPE writes it for OCS 2005, `m=message` for 2007 and later:
`sipe-im.c`, `sipe_invite`); it is taken as a message stream, and answered with the same name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import RemoteProtocolError

ACCEPT_TYPES = ("text/plain", "text/html", "text/enriched", "application/im-iscomposing+xml")
MEDIA = ("message", "x-ms-message")  # the media names of an IM stream: RFC 4975's, and OCS 2005's


@dataclass(frozen=True)
class MessageMedia:
    port: int
    accept_types: tuple[str, ...]
    media: str = "message"  # or "x-ms-message" (an OCS 2005 client)


def build(
    host: str,
    port: int,
    *,
    session_id: int | None = None,
    accept_types: tuple[str, ...] = ACCEPT_TYPES,
    media: str = "message",
) -> bytes:
    sid = session_id if session_id is not None else int(time.time())
    family = "IP6" if ":" in host else "IP4"
    lines = [
        "v=0",
        f"o=- {sid} {sid} IN {family} {host}",
        "s=-",
        f"c=IN {family} {host}",
        "t=0 0",
        f"m={media} {port} sip null",
        "a=accept-types:" + " ".join(accept_types),
    ]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def parse_message_media(body: bytes) -> MessageMedia:
    """The `m=message` (or OCS 2005's `m=x-ms-message`) stream of an SDP body; RemoteProtocolError (488) if there
    is none."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("SDP is not UTF-8", 400) from None
    media: MessageMedia | None = None
    in_message = False
    port = 0
    accept: tuple[str, ...] = ()
    kind = "message"
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if in_message:
                break
            fields = line[2:].split()
            in_message = len(fields) >= 3 and fields[0] in MEDIA
            if in_message:
                kind = fields[0]
                port = int(fields[1]) if fields[1].isascii() and fields[1].isdigit() and len(fields[1]) <= 5 else 0
        elif in_message and line.startswith("a=accept-types:"):
            accept = tuple(t.lower() for t in line[len("a=accept-types:") :].split())
    if in_message:
        media = MessageMedia(port=port, accept_types=accept, media=kind)
    if media is None:
        raise RemoteProtocolError("the offer has no m=message stream", 488)
    return media
