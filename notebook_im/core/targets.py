"""Where a request goes (RFC 3261 §8.1.2, §16.12): the first Route if it is a loose router, else the
Request-URI; its transport from the URI, its port 5060/5061 by default.

`target_of` answers at once for IP literals and names resolved before (net/resolve.py), and raises
`UnresolvedHost` (an OSError) for a name nobody looked up yet: code on the loop that may meet a host name
awaits `resolve_target` first, which asks the resolver off the loop thread.
"""

from __future__ import annotations

from ..net import resolve
from ..net.base import Target
from ..sip.message import Request
from ..sip.uri import Address, SipUri


class UnresolvedHost(OSError):
    """A host name that has not been resolved yet (await `resolve_target` first)."""


def _port(uri: SipUri) -> int:
    return uri.port or (5061 if uri.transport == "tls" else 5060)


def target_of(uri: SipUri) -> Target:
    """Where a request for `uri` goes: its host and port over its transport (host names resolved before)."""
    host = resolve.cached(uri.host)
    if host is None:
        raise UnresolvedHost(f"{uri.host} has not been resolved yet")
    return Target(uri.transport, host, _port(uri))


async def resolve_target(uri: SipUri) -> Target:
    """`target_of`, resolving a host name off the loop thread first."""
    return Target(uri.transport, await resolve.resolve(uri.host), _port(uri))


def next_hop(request: Request) -> SipUri:
    """The URI a request is sent to: its first Route when that is a loose router (`;lr`), else its Request-URI."""
    routes = request.headers.get_all("Route")
    if routes:
        first = Address.parse(routes[0]).uri
        if "lr" in first.params:
            return first
    return request.uri


def request_target(request: Request) -> Target:
    return target_of(next_hop(request))


async def resolve_request_target(request: Request) -> Target:
    return await resolve_target(next_hop(request))
