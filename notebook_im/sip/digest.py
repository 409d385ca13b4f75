"""HTTP digest authentication for SIP (RFC 3261 §22, RFC 7616 / RFC 8760): MD5 and SHA-256, qop=auth.

Sans-IO: `parse_challenge` reads a WWW-/Proxy-Authenticate value, `DigestCredentials.authorize` builds
the Authorization value for a request (counting nonces per realm), `verify` checks one on a server.
The password is never stored in a repr.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from .errors import RemoteProtocolError

_ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256, "MD5-SESS": hashlib.md5, "SHA-256-SESS": hashlib.sha256}


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Split `Digest realm="x", nonce="y", qop="auth"` into ("Digest", {...})."""
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        name = rest[i:eq].strip().lower()
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            j = i + 1
            buf = []
            while j < n and rest[j] != '"':
                if rest[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(rest[j])
                j += 1
            params[name] = "".join(buf)
            i = j + 1
        else:
            j = rest.find(",", i)
            j = n if j < 0 else j
            params[name] = rest[i:j].strip()
            i = j
    return scheme, params


@dataclass(frozen=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    proxy: bool = False

    @staticmethod
    def parse(value: str, *, proxy: bool = False) -> Challenge:
        scheme, p = parse_auth_params(value)
        if scheme.lower() != "digest":
            raise RemoteProtocolError(f"unsupported authentication scheme {scheme!r}")
        if "nonce" not in p or "realm" not in p:
            raise RemoteProtocolError("digest challenge without realm or nonce")
        algorithm = p.get("algorithm", "MD5").upper()
        if algorithm not in _ALGORITHMS:
            raise RemoteProtocolError(f"unsupported digest algorithm {algorithm!r}")
        qop = tuple(q.strip().lower() for q in p.get("qop", "").split(",") if q.strip())
        return Challenge(
            realm=p["realm"],
            nonce=p["nonce"],
            algorithm=algorithm,
            qop=qop,
            opaque=p.get("opaque"),
            stale=p.get("stale", "").lower() == "true",
            proxy=proxy,
        )


def _h(algorithm: str, text: str) -> str:
    return _ALGORITHMS[algorithm](text.encode("utf-8")).hexdigest()


def compute_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str = "",
    cnonce: str = "",
) -> str:
    ha1 = _h(algorithm, f"{username}:{realm}:{password}")
    if algorithm.endswith("-SESS"):
        ha1 = _h(algorithm, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _h(algorithm, f"{method}:{uri}")
    if qop:
        return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{ha2}")


@dataclass
class DigestCredentials:
    username: str
    password: str = field(repr=False)
    _nonce_counts: dict[str, int] = field(default_factory=dict, repr=False)

    def authorize(self, challenge: Challenge, method: str, uri: str) -> str:
        """The Authorization / Proxy-Authorization value answering `challenge` for this request."""
        count = self._nonce_counts.get(challenge.nonce, 0) + 1
        self._nonce_counts[challenge.nonce] = count
        qop = "auth" if "auth" in challenge.qop else None
        nc = f"{count:08x}"
        cnonce = secrets.token_hex(8)
        response = compute_response(
            algorithm=challenge.algorithm,
            username=self.username,
            realm=challenge.realm,
            password=self.password,
            method=method,
            uri=uri,
            nonce=challenge.nonce,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
        )
        parts = [
            f'username="{self.username}"',
            f'realm="{challenge.realm}"',
            f'nonce="{challenge.nonce}"',
            f'uri="{uri}"',
            f'response="{response}"',
            f"algorithm={challenge.algorithm}",
        ]
        if qop:
            parts += [f"qop={qop}", f"nc={nc}", f'cnonce="{cnonce}"']
        if challenge.opaque is not None:
            parts.append(f'opaque="{challenge.opaque}"')
        return "Digest " + ", ".join(parts)


def verify(authorization: str, *, method: str, password: str, algorithm_default: str = "MD5") -> bool:
    """Check an Authorization value against the password (the server side; nonce freshness is the caller's)."""
    scheme, p = parse_auth_params(authorization)
    if scheme.lower() != "digest":
        return False
    try:
        algorithm = p.get("algorithm", algorithm_default).upper()
        if algorithm not in _ALGORITHMS:
            return False
        expected = compute_response(
            algorithm=algorithm,
            username=p["username"],
            realm=p["realm"],
            password=password,
            method=method,
            uri=p["uri"],
            nonce=p["nonce"],
            qop=p.get("qop"),
            nc=p.get("nc", ""),
            cnonce=p.get("cnonce", ""),
        )
    except KeyError:
        return False
    return secrets.compare_digest(expected, p.get("response", ""))
