"""Registrar bindings (RFC 3261 §10.3), sans-IO: the caller passes `now` (monotonic seconds).

Besides the Contact URI, each binding remembers the transport and source address the REGISTER came
from (the "flow"), so a client behind a TCP connection or NAT is reached the way it registered.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..sip.errors import RemoteProtocolError
from ..sip.message import Request
from ..sip.uri import SipUri


@dataclass
class Binding:
    aor: str
    contact: SipUri
    expires_at: float
    transport: str
    source: tuple[str, int]
    call_id: str
    cseq: int

    def remaining(self, now: float) -> int:
        return max(0, int(self.expires_at - now + 0.5))


def aor_key(uri: SipUri) -> str:
    return f"sip:{uri.user}@{uri.host}" if uri.user else f"sip:{uri.host}"


class Registrar:
    def __init__(self, *, min_expires: int = 1, max_expires: int = 7200, default_expires: int = 3600,
                 max_bindings_per_aor: int = 10) -> None:
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self.max_bindings_per_aor = max_bindings_per_aor
        self._bindings: dict[str, dict[str, Binding]] = {}
        self.known: set[str] = set()   # AORs that ever registered: 480 rather than 404 when offline

    def register(self, request: Request, transport: str, source: tuple[str, int], now: float) -> tuple[int, list[Binding], str]:
        """Apply a REGISTER. Returns (status, current bindings, reason)."""
        to = request.to.uri
        if not to.user:
            return 404, [], "Not Found (the To URI needs a user part)"
        aor = aor_key(to)
        contacts = request.contacts
        header_expires = request.expires
        call_id, cseq = request.call_id, request.cseq.number
        current = self._bindings.setdefault(aor, {})
        if any(c.wildcard for c in contacts):
            if len(contacts) != 1 or header_expires != 0:
                return 400, [], "Bad Request (Contact: * needs Expires: 0 and no other contact)"
            current.clear()
            self._bindings.pop(aor, None)
            return 200, [], "OK"
        for c in contacts:
            expires_text = c.params.get("expires")
            if expires_text is not None:
                if not expires_text.isdigit():
                    raise RemoteProtocolError(f"bad expires parameter {expires_text!r}", 400, request)
                expires = int(expires_text)
            elif header_expires is not None:
                expires = header_expires
            else:
                expires = self.default_expires
            if 0 < expires < self.min_expires:
                return 423, [], str(self.min_expires)
            expires = min(expires, self.max_expires)
            key = str(c.uri)
            old = current.get(key)
            if old is not None and old.call_id == call_id and old.cseq >= cseq:
                continue  # an out-of-order or retransmitted REGISTER (§10.3 step 7)
            if expires == 0:
                current.pop(key, None)
                continue
            if old is None and len(current) >= self.max_bindings_per_aor:
                return 403, [], "Forbidden (too many contacts for this address)"
            current[key] = Binding(aor, c.uri, now + expires, transport, source, call_id, cseq)
            self.known.add(aor)
        if not current:
            self._bindings.pop(aor, None)
        return 200, self.lookup(aor, now), "OK"

    def lookup(self, aor: str, now: float) -> list[Binding]:
        current = self._bindings.get(aor)
        if not current:
            return []
        alive = [b for b in current.values() if b.expires_at > now]
        if len(alive) != len(current):
            for key in [k for k, b in current.items() if b.expires_at <= now]:
                del current[key]
            if not current:
                del self._bindings[aor]
        return sorted(alive, key=lambda b: -b.expires_at)

    def aor_for_user(self, user: str) -> str | None:
        """The one known AOR with this user part (None if there is none or several domains share it)."""
        matches = [a for a in self.known if a.startswith(f"sip:{user}@")]
        return matches[0] if len(matches) == 1 else None

    def find_contact(self, host: str, port: int | None, now: float) -> Binding | None:
        """The live binding whose Contact (or registered source) is host:port: an in-dialog target we may route to."""
        for aor in list(self._bindings):
            for b in self.lookup(aor, now):
                if (b.contact.host.strip("[]") == host and (b.contact.port or 5060) == (port or 5060)) or \
                        (b.source[0] == host and b.source[1] == (port or 5060)):
                    return b
        return None

    def purge(self, now: float) -> None:
        for aor in list(self._bindings):
            self.lookup(aor, now)

    def snapshot(self, now: float) -> dict[str, list[str]]:
        return {aor: [str(b.contact) for b in self.lookup(aor, now)] for aor in list(self._bindings)}

    def __len__(self) -> int:
        return sum(len(v) for v in self._bindings.values())
