"""The client side of digest authentication (RFC 3261 §22, RFC 7616/8760): one account's credentials, the last
challenge of each realm, and the rule for where credentials may go.

A digest response is enough for an offline dictionary attack on the password, so nobody but the server that
asked may see one. Before anyone asks, credentials go only on:
- a REGISTER, as `Authorization`, for a registrar realm that challenged with 401;
- a new (out-of-dialog) request, as `Proxy-Authorization`, for a proxy realm that challenged with 407.
In-dialog requests reach the peer through proxies that need not strip credentials: they carry some only
after a challenge of their own.
"""

from __future__ import annotations

from ..sip import digest
from ..sip.errors import RemoteProtocolError
from ..sip.message import Request, Response


def pick_challenge(response: Response) -> digest.Challenge | None:
    """The strongest digest challenge of a 401/407 that we support (SHA-256 over MD5, RFC 8760 §2.4)."""
    proxy = response.status == 407
    header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
    parsed: list[digest.Challenge] = []
    for value in response.headers.get_all(header):  # auth headers are not comma-split: one challenge per field
        try:
            parsed.append(digest.Challenge.parse(value, proxy=proxy))
        except RemoteProtocolError:
            continue
    if not parsed:
        return None
    for algorithm in ("SHA-256", "SHA-256-SESS", "MD5", "MD5-SESS"):
        for c in parsed:
            if c.algorithm == algorithm:
                return c
    return parsed[0]


class ClientAuth:
    """Credentials of one account (none without a password) and the challenges answered so far."""

    def __init__(self, username: str, password: str | None) -> None:
        self.credentials = digest.DigestCredentials(username, password) if password else None
        # the last challenge per (407?, realm): what answers the next request pre-emptively, where allowed
        self.challenges: dict[tuple[bool, str], digest.Challenge] = {}

    def apply_cached(self, request: Request) -> None:
        """Add credentials before anyone asks, only where they belong (see the module docstring)."""
        if self.credentials is None or not self.challenges:
            return
        register = request.method == "REGISTER"
        if not register and request.to.tag is not None:
            return
        for (proxy, _realm), challenge in self.challenges.items():
            if proxy == register:
                continue
            name = "Proxy-Authorization" if proxy else "Authorization"
            request.headers.add(name, self.credentials.authorize(challenge, request.method, str(request.uri)))

    def challenge_to_answer(self, response: Response, attempt: int) -> digest.Challenge | None:
        """The challenge of a 401/407 to answer with a retry, or None when retrying cannot help: no credentials,
        no challenge we support, or, after a first answer, a fresh nonce without `stale=true` (the server
        refused the password). Remembered for later requests of that realm."""
        if self.credentials is None:
            return None
        challenge = pick_challenge(response)
        if challenge is None:
            return None
        key = (challenge.proxy, challenge.realm)
        previous = self.challenges.get(key)
        if previous is not None and previous.nonce != challenge.nonce and not challenge.stale and attempt > 0:
            return None
        self.challenges[key] = challenge
        return challenge

    def authorize(self, request: Request, challenge: digest.Challenge) -> None:
        """Set the Authorization / Proxy-Authorization answering `challenge` on `request`."""
        assert self.credentials is not None
        name = "Proxy-Authorization" if challenge.proxy else "Authorization"
        request.headers.set(name, self.credentials.authorize(challenge, request.method, str(request.uri)))
