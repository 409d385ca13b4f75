"""The Reason header (RFC 3326): why a CANCEL or BYE was sent.

A forking proxy cancels the branches that lost with `Reason: SIP;cause=200;text="Call completed
elsewhere"`, so a device that rang can say "answered elsewhere" instead of "missed call" (what
Lync/OCS and most phones show). Parsing is lenient: a Reason we cannot read is ignored, never an error,
because it only decorates a request that is valid without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .message import Message
from .uri import _find_unquoted, split_header_values


@dataclass(frozen=True)
class Reason:
    """One reason value: protocol ("SIP" or "Q.850"), cause code, optional text."""

    protocol: str
    cause: int | None = None
    text: str | None = None

    def __str__(self) -> str:
        out = self.protocol
        if self.cause is not None:
            out += f";cause={self.cause}"
        if self.text is not None:
            quoted = self.text.replace("\\", "\\\\").replace('"', '\\"')
            out += f';text="{quoted}"'
        return out

    @property
    def completed_elsewhere(self) -> bool:
        """SIP cause 200: another device of the callee answered (RFC 3326 §2, RFC 3261 §16.7 step 10)."""
        return self.protocol.upper() == "SIP" and self.cause == 200


COMPLETED_ELSEWHERE = Reason("SIP", 200, "Call completed elsewhere")


def parse(value: str) -> Reason | None:
    """One Reason value (`SIP;cause=200;text="..."`); None if it is not one."""
    parts: list[str] = []
    rest = value.strip()
    while True:
        i = _find_unquoted(rest, ";")
        if i < 0:
            parts.append(rest.strip())
            break
        parts.append(rest[:i].strip())
        rest = rest[i + 1 :]
    protocol = parts[0]
    if not protocol or any(c in protocol for c in ' \t"=<>'):
        return None
    cause: int | None = None
    text: str | None = None
    for p in parts[1:]:
        name, _, v = p.partition("=")
        name, v = name.strip().lower(), v.strip()
        if name == "cause" and v.isdigit() and len(v) <= 5:
            cause = int(v)
        elif name == "text":
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            text = v[:200]
    return Reason(protocol, cause, text)


def parse_all(values: list[str]) -> list[Reason]:
    """Every readable Reason in a message's Reason header fields (comma-separated values allowed)."""
    out = []
    for field in values:
        for v in split_header_values(field):
            r = parse(v)
            if r is not None:
                out.append(r)
    return out


def completed_elsewhere(message: Message | None) -> bool:
    """True if `message` (a CANCEL or BYE) says another device answered: `Reason: SIP;cause=200`."""
    if message is None:
        return False
    return any(r.completed_elsewhere for r in parse_all(message.headers.get_all("Reason")))
