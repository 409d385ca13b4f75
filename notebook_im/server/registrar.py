"""Registrar bindings (RFC 3261 §10.3), sans-IO: the caller passes `now` (monotonic seconds).

Besides the Contact URI, each binding remembers the transport and source address the REGISTER came
from (the "flow"), so a client behind a TCP connection or NAT is reached the way it registered.

Every in-dialog request the proxy relays asks "is this next hop a registered contact?" (`find_contact`),
so the bindings are also indexed by address: by the Contact's host:port and by the REGISTER's source.
The index answers in O(1) instead of scanning every user, and every change of a binding (new, refreshed,
moved to another source, expired, removed, wildcard) goes through `_put`/`_drop`, which keep it in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

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
    # RFC 5626: the client asked to be reached over the flow its REGISTER came on (`;ob` in the Contact URI, or
    # `reg-id` with `+sip.instance`), instead of at its Contact
    outbound: bool = False
    # the REGISTER came from another address than its top Via says it was sent from: a NAT (or a relay) rewrote
    # it on the way (Kamailio's nat_uac_test flags 2 and 16), so the Contact, written behind it, is suspect
    natted: bool = False
    # the device stopped answering (a request to it went unanswered, or its TCP/TLS flow closed): requests for
    # the user skip it (a pager MESSAGE is kept for later) until it registers again, which makes a new binding
    dead: bool = False

    def remaining(self, now: float) -> int:
        """Seconds left, rounded (what the 200 OK's Contact `expires` parameter says)."""
        return max(0, int(self.expires_at - now + 0.5))

    @property
    def contact_addr(self) -> tuple[str, int]:
        """The Contact's host:port as the index keys it (brackets off, lower case, 5060 by default)."""
        return _addr(self.contact.host, self.contact.port)

    @property
    def source_addr(self) -> tuple[str, int]:
        """Where the REGISTER came from, as the index keys it."""
        return _addr(self.source[0], self.source[1])


def _addr(host: str, port: int | None) -> tuple[str, int]:
    return host.strip("[]").lower(), port or 5060


def aor_key(uri: SipUri) -> str:
    """The address of record a URI names: `sip:user@host` (no port, no parameters)."""
    return f"sip:{uri.user}@{uri.host}" if uri.user else f"sip:{uri.host}"


class Mirror(Protocol):
    """What keeps a copy of the bindings elsewhere (shared.py: the SQLite file a server's workers read)."""

    def put(self, binding: Binding) -> None: ...

    def drop(self, aor: str, key: str) -> None: ...


class Registrar:
    """The location service: AOR -> live bindings, plus the set of AORs that ever registered."""

    def __init__(
        self,
        *,
        min_expires: int = 1,
        max_expires: int = 7200,
        default_expires: int = 3600,
        max_bindings_per_aor: int = 10,
    ) -> None:
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self.max_bindings_per_aor = max_bindings_per_aor
        self._bindings: dict[str, dict[str, Binding]] = {}
        self.known: set[str] = set()  # AORs that ever registered: 480 rather than 404 when offline
        self._known_by_user: dict[str, set[str]] = {}  # user part -> known AORs (for sip:user@<server>)
        # address -> the bindings there, as {(aor, contact key): None} (an ordered set): who is at host:port
        self._by_contact: dict[tuple[str, int], dict[tuple[str, str], None]] = {}
        self._by_source: dict[tuple[str, int], dict[tuple[str, str], None]] = {}
        # told of every change (`put(binding)`, `drop(aor, contact key)`): the shared copy that a server's worker
        # processes read (shared.py); None for a server of one process
        self.mirror: Mirror | None = None

    # -- the only ways a binding changes (they keep the address index and the mirror in step) -------------
    def _put(self, binding: Binding) -> None:
        self.apply(binding)
        if self.mirror is not None:
            self.mirror.put(binding)

    def _drop(self, aor: str, key: str) -> None:
        self.forget(aor, key)
        if self.mirror is not None:
            self.mirror.drop(aor, key)

    def mark_dead(self, binding: Binding) -> None:
        """The device stopped answering: requests skip it until it registers again (a new binding)."""
        if not binding.dead:
            binding.dead = True
            if self.mirror is not None:
                self.mirror.put(binding)

    def apply(self, binding: Binding) -> None:
        """Put `binding` in place (a new one, or one changed elsewhere: a worker's copy of the main registrar)."""
        key = str(binding.contact)
        current = self._bindings.setdefault(binding.aor, {})
        if key in current:
            self.forget(binding.aor, key)
            current = self._bindings.setdefault(binding.aor, {})
        current[key] = binding
        ref = (binding.aor, key)
        self._by_contact.setdefault(binding.contact_addr, {})[ref] = None
        self._by_source.setdefault(binding.source_addr, {})[ref] = None
        if binding.aor not in self.known:
            self.known.add(binding.aor)
            user = binding.aor[4:].partition("@")[0]  # aor_key: "sip:user@host"
            self._known_by_user.setdefault(user, set()).add(binding.aor)

    def forget(self, aor: str, key: str) -> None:
        """Remove the binding of `aor` whose Contact is `key` (its str), if there is one."""
        current = self._bindings.get(aor)
        if current is None:
            return
        binding = current.pop(key, None)
        if not current:
            del self._bindings[aor]
        if binding is None:
            return
        ref = (aor, key)
        for index, addr in ((self._by_contact, binding.contact_addr), (self._by_source, binding.source_addr)):
            refs = index.get(addr)
            if refs is not None:
                refs.pop(ref, None)
                if not refs:
                    del index[addr]

    def register(
        self, request: Request, transport: str, source: tuple[str, int], now: float
    ) -> tuple[int, list[Binding], str]:
        """Apply a REGISTER. Returns (status, current bindings, reason)."""
        to = request.to.uri
        if not to.user:
            return 404, [], "Not Found (the To URI needs a user part)"
        aor = aor_key(to)
        contacts = request.contacts
        header_expires = request.expires
        call_id, cseq = request.call_id, request.cseq.number
        via_host, via_port = request.top_via.sent_by
        natted = transport == "udp" and (_addr(via_host, via_port) != _addr(source[0], source[1]))
        if any(c.wildcard for c in contacts):
            if len(contacts) != 1 or header_expires != 0:
                return 400, [], "Bad Request (Contact: * needs Expires: 0 and no other contact)"
            for key in list(self._bindings.get(aor, {})):
                self._drop(aor, key)
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
            current = self._bindings.get(aor, {})
            old = current.get(key)
            if old is not None and old.call_id == call_id and old.cseq >= cseq:
                continue  # an out-of-order or retransmitted REGISTER (§10.3 step 7)
            if expires == 0:
                self._drop(aor, key)
                continue
            if old is None and len(current) >= self.max_bindings_per_aor:
                return 403, [], "Forbidden (too many contacts for this address)"
            outbound = "ob" in c.uri.params or ("reg-id" in c.params and "+sip.instance" in c.params)
            self._put(Binding(aor, c.uri, now + expires, transport, source, call_id, cseq, outbound, natted))
        return 200, self.lookup(aor, now), "OK"

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """The live bindings of `aor`, longest-lived first (expired ones are dropped on the way)."""
        current = self._bindings.get(aor)
        if not current:
            return []
        for key in [k for k, b in current.items() if b.expires_at <= now]:
            self._drop(aor, key)
        return sorted(current.values(), key=lambda b: -b.expires_at)

    def remember(self, aor: str) -> None:
        """Know `aor` as a user of this server without a binding (a restarted server with an offline store:
        messages for them are kept, not refused as for nobody)."""
        if aor not in self.known:
            self.known.add(aor)
            user = aor[4:].partition("@")[0] if aor.startswith("sip:") else aor.partition("@")[0]
            self._known_by_user.setdefault(user, set()).add(aor)

    def live(self, aor: str, now: float) -> list[Binding]:
        """The bindings of `aor` that requests may go to: unexpired and not known to be dead."""
        return [b for b in self.lookup(aor, now) if not b.dead]

    def from_source(self, host: str, port: int) -> list[Binding]:
        """The bindings registered from this address (a stream flow that closed takes them with it)."""
        refs = self._by_source.get(_addr(host, port), {})
        return [self._bindings[aor][key] for aor, key in list(refs) if key in self._bindings.get(aor, {})]

    def aor_for_user(self, user: str) -> str | None:
        """The one known AOR with this user part (None if there is none or several domains share it)."""
        matches = self._known_by_user.get(user, ())
        return next(iter(matches)) if len(matches) == 1 else None

    def find_contact(self, host: str, port: int | None, now: float) -> Binding | None:
        """The live binding whose Contact (or registered source) is host:port: an in-dialog target we may
        route to. O(1): looked up in the address index, Contact addresses before sources."""
        addr = _addr(host, port)
        for index in (self._by_contact, self._by_source):
            refs = index.get(addr)
            if not refs:
                continue
            for aor, key in list(refs):
                binding = self._bindings[aor][key]
                if binding.expires_at > now:
                    return binding
                self._drop(aor, key)
        return None

    def purge(self, now: float) -> None:
        """Drop every expired binding."""
        for aor in list(self._bindings):
            self.lookup(aor, now)

    def snapshot(self, now: float) -> dict[str, list[str]]:
        """AOR -> live Contact URIs (for `Server.registrations`)."""
        return {aor: [str(b.contact) for b in self.lookup(aor, now)] for aor in list(self._bindings)}

    def index_size(self) -> int:
        """Entries in the address index (two per binding: its Contact and its source); for tests."""
        return sum(len(v) for v in self._by_contact.values()) + sum(len(v) for v in self._by_source.values())

    def __len__(self) -> int:
        return sum(len(v) for v in self._bindings.values())
