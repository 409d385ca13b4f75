"""The SDP of an IM session (session mode as OCS/Lync speak it): `m=message <port> sip null`.

Only what IM needs: build an offer or answer, and check that a remote description offers a message
stream and which content types it accepts (Lync sends `a=accept-types:`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import RemoteProtocolError

ACCEPT_TYPES = ("text/plain", "text/html", "text/enriched", "application/im-iscomposing+xml")


@dataclass(frozen=True)
class MessageMedia:
    port: int
    accept_types: tuple[str, ...]


def build(
    host: str, port: int, *, session_id: int | None = None, accept_types: tuple[str, ...] = ACCEPT_TYPES
) -> bytes:
    sid = session_id if session_id is not None else int(time.time())
    family = "IP6" if ":" in host else "IP4"
    lines = [
        "v=0",
        f"o=- {sid} {sid} IN {family} {host}",
        "s=-",
        f"c=IN {family} {host}",
        "t=0 0",
        f"m=message {port} sip null",
        "a=accept-types:" + " ".join(accept_types),
    ]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def parse_message_media(body: bytes) -> MessageMedia:
    """The `m=message` stream of an SDP body; RemoteProtocolError (488) if there is none."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("SDP is not UTF-8", 400) from None
    media: MessageMedia | None = None
    in_message = False
    port = 0
    accept: tuple[str, ...] = ()
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if in_message:
                break
            fields = line[2:].split()
            in_message = len(fields) >= 3 and fields[0] == "message"
            if in_message:
                port = int(fields[1]) if fields[1].isascii() and fields[1].isdigit() and len(fields[1]) <= 5 else 0
        elif in_message and line.startswith("a=accept-types:"):
            accept = tuple(t.lower() for t in line[len("a=accept-types:") :].split())
    if in_message:
        media = MessageMedia(port=port, accept_types=accept)
    if media is None:
        raise RemoteProtocolError("the offer has no m=message stream", 488)
    return media
