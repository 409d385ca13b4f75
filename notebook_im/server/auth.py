"""Digest authentication for the embedded server (RFC 3261 §22, RFC 7616/8760), sans-IO.

Nonces are stateless (a timestamp and an HMAC of it under a per-server secret), so a flood of
unauthenticated requests costs no memory; only nonces that authenticated something remember their last
nonce count, which defeats replays (bounded table). Repeated failures from one source address lock it
out for a while: a password cannot be guessed at line rate.

Passwords never leave this module: no repr, log line, exception or response contains one.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping

from ..sip import digest
from ..sip.message import Request

ALGORITHMS = ("SHA-256", "MD5")  # offered in this order; RFC 8760: the client picks the first it supports


@dataclass(frozen=True)
class AuthResult:
    ok: bool
    user: str | None = None
    status: int = 0                 # 401/407 to challenge, 403 to refuse
    stale: bool = False
    reason: str = ""


@dataclass
class _Failures:
    count: int = 0
    first: float = 0.0
    locked_until: float = 0.0


@dataclass
class Authenticator:
    users: Mapping[str, str] = field(repr=False)
    realm: str = "notebook_im"
    nonce_ttl: float = 300.0
    max_failures: int = 5           # failures from one source within `failure_window` before a lockout
    failure_window: float = 60.0
    lockout: float = 60.0
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    _nc: "OrderedDict[str, int]" = field(default_factory=OrderedDict, repr=False)
    _failures: dict[str, _Failures] = field(default_factory=dict, repr=False)

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
        return [f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={alg}, qop="auth"{extra}' for alg in ALGORITHMS]

    # -- checking -----------------------------------------------------------------------------------
    def locked_out(self, source: str, now: float) -> bool:
        f = self._failures.get(source)
        return f is not None and f.locked_until > now

    def _fail(self, source: str, now: float, reason: str) -> AuthResult:
        f = self._failures.get(source)
        if f is None or now - f.first > self.failure_window:
            if len(self._failures) > 10000:  # bounded: forget the oldest sources
                self._failures.clear()
            f = self._failures[source] = _Failures(first=now)
        f.count += 1
        if f.count >= self.max_failures:
            f.locked_until = now + self.lockout
        return AuthResult(False, status=403, reason=reason)

    def check(self, request: Request, source: str, now: float, *, proxy: bool) -> AuthResult:
        """Authenticate `request` from `source`. `proxy` selects 407/Proxy-Authorization (else 401)."""
        challenge_status = 407 if proxy else 401
        if self.locked_out(source, now):
            return AuthResult(False, status=403, reason="Forbidden (too many failed authentications; try later)")
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
        if password is None:
            return self._fail(source, now, "Forbidden (unknown user or wrong password)")
        issued = self._nonce_time(params.get("nonce", ""))
        if issued is None:
            return AuthResult(False, status=challenge_status, reason="nonce not issued here")
        method = request.method
        if not digest.verify(_authorization(params), method=method, password=password):
            return self._fail(source, now, "Forbidden (unknown user or wrong password)")
        if now - issued > self.nonce_ttl:
            return AuthResult(False, status=challenge_status, stale=True, reason="nonce expired")
        if params.get("qop"):
            nc_text = params.get("nc", "")
            try:
                nc = int(nc_text, 16)
            except ValueError:
                return AuthResult(False, status=400, reason="Bad Request (bad nc)")
            nonce = params["nonce"]
            if nc <= self._nc.get(nonce, 0):
                return AuthResult(False, status=challenge_status, stale=True, reason="nonce count replayed")
            self._nc[nonce] = nc
            self._nc.move_to_end(nonce)
            while len(self._nc) > 10000:
                self._nc.popitem(last=False)
        self._failures.pop(source, None)
        return AuthResult(True, user=user)


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
