"""Digest authentication for the embedded server (RFC 3261 §22, RFC 7616/8760), sans-IO.

Nonces are stateless (a timestamp and an HMAC of it under a per-server secret), so a flood of
unauthenticated requests costs no memory. A nonce is good for `nonce_ttl` seconds. Only a nonce that
authenticated something is remembered, with its last nonce count, per user, so that a captured request
cannot be replayed. The table is bounded per user (`max_nonces_per_user`) and a user's entries can only be
pushed out by that user's own fresh nonces; what is pushed out is not forgotten silently: every nonce of that
user issued no later than the evicted one is refused from then on with `stale=true` (a client answers the
fresh nonce at once), so a replay never slips through a full table. qop=auth is required (without it a
response is replayable) and the digest `uri` must name the Request-URI (RFC 7616 §3.4.6, RFC 2617 §3.2.2.5).

Guessing is slowed two ways, keyed so that the innocent are not locked out with the guilty:
- per (user, source address): `max_failures` failures within `failure_window` lock that pair for `lockout`
  seconds (bob's correct login from the NAT where someone guesses alice's password still works);
- per user, from any number of sources: after `user_threshold` failures each further check waits an
  exponentially growing back-off (up to `backoff_max`), during which attempts from sources that never
  authenticated as that user are refused unchecked. Sources where the user authenticated before (the last
  `trusted_sources` of them) are not slowed: the user is never locked out for good.

Passwords never leave this module: no repr, log line, exception or response contains one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..sip import digest
from ..sip.errors import RemoteProtocolError
from ..sip.message import Request
from ..sip.uri import SipUri

ALGORITHMS = ("SHA-256", "MD5")  # offered in this order; RFC 8760: the client picks the first it supports
UNKNOWN_USER = ""  # failures for user names that do not exist share this key (per source)


@dataclass(frozen=True)
class AuthResult:
    ok: bool
    user: str | None = None
    status: int = 0  # 401/407 to challenge, 403 to refuse, 400 for a malformed answer
    stale: bool = False
    reason: str = ""


@dataclass
class _Failures:
    count: int = 0
    first: float = 0.0
    locked_until: float = 0.0


@dataclass
class _UserGuard:
    """Failures against one user from anywhere, and the sources where the user authenticated."""

    count: int = 0
    last: float = 0.0
    wait_until: float = 0.0
    trusted: OrderedDict[str, float] = field(default_factory=OrderedDict)


@dataclass
class _Nonces:
    """The nonces one user authenticated with: nonce -> (last nonce count, time it was issued)."""

    used: OrderedDict[str, tuple[int, float]] = field(default_factory=OrderedDict)
    forgotten_until: float = float("-inf")  # nonces issued up to here and not in `used` are refused (stale)


@dataclass
class Authenticator:
    users: Mapping[str, str] = field(repr=False)
    realm: str = "notebook_im"
    nonce_ttl: float = 300.0
    max_failures: int = 5  # failures of one (user, source) within `failure_window` before it is locked
    failure_window: float = 60.0
    lockout: float = 60.0
    user_threshold: int = 10  # failures against one user (any source) before the per-user back-off
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    user_memory: float = 600.0  # a user's failure count is forgotten after this long without failures
    trusted_sources: int = 16
    max_nonces_per_user: int = 64
    max_tracked: int = 10_000  # (user, source) failure records kept (oldest forgotten first)
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    _nonces: dict[str, _Nonces] = field(default_factory=dict, repr=False)
    _failures: OrderedDict[tuple[str, str], _Failures] = field(default_factory=OrderedDict, repr=False)
    _guards: dict[str, _UserGuard] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for user, password in self.users.items():
            if not isinstance(user, str) or not isinstance(password, str) or not user or not password:
                raise ValueError("users must map non-empty user names to non-empty password strings")

    # -- nonces -------------------------------------------------------------------------------------
    def _nonce(self, now: float) -> str:
        stamp = struct.pack(">d", now)
        mac = hmac.new(self._secret, stamp, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(stamp + mac).decode().rstrip("=")

    def _nonce_time(self, nonce: str) -> float | None:
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, TypeError):
            return None
        if len(raw) != 24:
            return None
        stamp, mac = raw[:8], raw[8:]
        if not hmac.compare_digest(mac, hmac.new(self._secret, stamp, hashlib.sha256).digest()[:16]):
            return None
        return struct.unpack(">d", stamp)[0]

    def challenges(self, now: float, *, stale: bool = False) -> list[str]:
        """WWW-/Proxy-Authenticate values: one per algorithm, strongest first (RFC 8760 §2.4)."""
        nonce = self._nonce(now)
        extra = ", stale=true" if stale else ""
        return [
            f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={alg}, qop="auth"{extra}' for alg in ALGORITHMS
        ]

    def _count_nonce(self, user: str, nonce: str, nc: int, issued: float, now: float) -> bool:
        """Record that `user` used `nonce` with count `nc`; False if that is a replay or the nonce's state is
        gone (the caller challenges again with stale=true)."""
        table = self._nonces.get(user)
        if table is None:
            table = self._nonces[user] = _Nonces()
        used = table.used
        seen = used.get(nonce)
        if seen is None:
            if issued <= table.forgotten_until:
                return False  # its count may have been pushed out of the table: refuse, never guess
            for old, (_, t) in list(used.items()):  # expired nonces are refused anyway: drop them first
                if now - t <= self.nonce_ttl:
                    break
                del used[old]
            while len(used) >= self.max_nonces_per_user:
                _, (_, t) = used.popitem(last=False)
                table.forgotten_until = max(table.forgotten_until, t)
            if issued <= table.forgotten_until:
                return False
        elif nc <= seen[0]:
            return False
        used[nonce] = (nc, issued)
        return True

    # -- guessing -------------------------------------------------------------------------------------
    def locked_out(self, source: str, now: float, user: str = UNKNOWN_USER) -> bool:
        f = self._failures.get((user, source))
        return f is not None and f.locked_until > now

    def _slowed(self, user: str, source: str, now: float) -> float:
        """Seconds `source` must still wait before a guess at `user` is checked (0: go ahead)."""
        guard = self._guards.get(user)
        if guard is None or source in guard.trusted:
            return 0.0
        return max(0.0, guard.wait_until - now)

    def _fail(self, user: str, source: str, now: float, reason: str) -> AuthResult:
        key = (user, source)
        f = self._failures.get(key)
        if f is None or now - f.first > self.failure_window:
            f = _Failures(first=now)
        self._failures[key] = f
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_tracked:
            self._failures.popitem(last=False)
        f.count += 1
        if f.count >= self.max_failures:
            f.locked_until = now + self.lockout
        if user != UNKNOWN_USER:
            guard = self._guards.setdefault(user, _UserGuard())
            if now - guard.last > self.user_memory:
                guard.count = 0
            guard.count += 1
            guard.last = now
            if guard.count >= self.user_threshold:
                over = guard.count - self.user_threshold
                guard.wait_until = now + min(self.backoff_base * 2 ** min(over, 32), self.backoff_max)
        return AuthResult(False, status=403, reason=reason)

    def _succeeded(self, user: str, source: str, now: float) -> None:
        self._failures.pop((user, source), None)
        guard = self._guards.get(user)
        if guard is None:
            if len(self._guards) >= len(self.users):  # (one per configured user at most)
                return
            guard = self._guards[user] = _UserGuard()
        guard.trusted[source] = now
        guard.trusted.move_to_end(source)
        while len(guard.trusted) > self.trusted_sources:
            guard.trusted.popitem(last=False)

    # -- checking -----------------------------------------------------------------------------------
    def check(self, request: Request, source: str, now: float, *, proxy: bool) -> AuthResult:
        """Authenticate `request` from `source`. `proxy` selects 407/Proxy-Authorization (else 401)."""
        challenge_status = 407 if proxy else 401
        values = request.headers.get_all("Proxy-Authorization") + request.headers.get_all("Authorization")
        params = None
        for value in values:
            scheme, p = digest.parse_auth_params(value)
            if scheme.lower() == "digest" and p.get("realm") == self.realm:
                params = p
                break
        if params is None:
            return AuthResult(False, status=challenge_status, reason="credentials required")
        user = params.get("username", "")
        password = self.users.get(user)
        key_user = user if password is not None else UNKNOWN_USER
        if self.locked_out(source, now, key_user):
            return AuthResult(False, status=403, reason="Forbidden (too many failed authentications; try later)")
        wait = self._slowed(key_user, source, now)
        if wait > 0:
            return AuthResult(
                False,
                status=403,
                reason=f"Forbidden (too many failed authentications for this user; try again in {wait:.0f} s)",
            )
        if password is None:
            return self._fail(UNKNOWN_USER, source, now, "Forbidden (unknown user or wrong password)")
        issued = self._nonce_time(params.get("nonce", ""))
        if issued is None:
            return AuthResult(False, status=challenge_status, reason="nonce not issued here")
        if (params.get("qop") or "").lower() != "auth":
            return AuthResult(
                False,
                status=400,
                reason="Bad Request (digest without qop=auth is refused: it could be replayed; RFC 7616)",
            )
        if not _same_uri(params.get("uri", ""), request.uri):
            return AuthResult(False, status=400, reason="Bad Request (the digest uri is not the Request-URI)")
        try:
            nc = int(params.get("nc", ""), 16)
        except ValueError:
            return AuthResult(False, status=400, reason="Bad Request (bad nc)")
        if not digest.verify(_authorization(params), method=request.method, password=password):
            return self._fail(user, source, now, "Forbidden (unknown user or wrong password)")
        if now - issued > self.nonce_ttl:
            return AuthResult(False, status=challenge_status, stale=True, reason="nonce expired")
        if not self._count_nonce(user, params["nonce"], nc, issued, now):
            return AuthResult(False, status=challenge_status, stale=True, reason="nonce count replayed or forgotten")
        self._succeeded(user, source, now)
        return AuthResult(True, user=user)


def _same_uri(text: str, uri: SipUri) -> bool:
    """Does the digest `uri` directive name the Request-URI (the same text, or the same URI written otherwise)?"""
    if text == str(uri):
        return True
    try:
        return str(SipUri.parse(text)) == str(uri)
    except RemoteProtocolError:
        return False


def _authorization(params: dict[str, str]) -> str:
    return "Digest " + ", ".join(f'{k}="{v}"' for k, v in params.items())


def load_users_file(path: str) -> dict[str, str]:
    """Read `user:password` lines (blank lines and # comments ignored) for `notebook-im serve --users`."""
    users: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, password = line.partition(":")
            if not sep or not user.strip() or not password:
                raise ValueError(f"{path}:{n}: expected 'user:password'")
            users[user.strip()] = password
    return users
