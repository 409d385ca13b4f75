"""Host names to addresses, off the loop thread.

A blocking `getaddrinfo` on the loop thread stalls every session of the process for as long as the resolver
takes (seconds when a DNS server does not answer). `resolve` asks the loop's executor instead, so the loop
keeps running; answers are cached (a SIP peer's name is looked up once per process, as before). IP literals,
the common case, never reach the resolver. `cached` answers synchronously for code that cannot wait: an IP
literal or a name resolved before, else None.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

_CACHE: dict[str, str] = {}
_MAX_CACHE = 4096


_MAX_NAME = 255  # a DNS name is at most 253 characters, an IPv6 literal with brackets and a zone far less
_LITERALS: dict[str, str | None] = {}  # host as written -> literal() of it (every request sent asks once or twice)


def literal(host: str) -> str | None:
    """`host` without IPv6 brackets if it is an IP literal, else None. (Remembered for up to `_MAX_CACHE` hosts of
    at most `_MAX_NAME` characters, so at most 1 MiB whatever hosts peers write: `ipaddress.ip_address` costs 8 µs,
    about 3 % of what a whole MESSAGE costs an endpoint.)"""
    try:
        return _LITERALS[host]
    except KeyError:
        pass
    h: str | None = host.strip("[]")
    try:
        ipaddress.ip_address(h)
    except ValueError:
        h = None
    if len(host) <= _MAX_NAME:  # (a host as long as a header line: not kept)
        if len(_LITERALS) >= _MAX_CACHE:  # full (made-up hosts): start again, as _CACHE does
            _LITERALS.clear()
        _LITERALS[host] = h
    return h


def cached(host: str) -> str | None:
    """An address for `host` known without asking the network: an IP literal, or a name resolved before."""
    return literal(host) or _CACHE.get(host.strip("[]").lower())


async def resolve(host: str) -> str:
    """An address for `host` (IPv4 or IPv6, the resolver's first answer), looked up in the executor.
    Raises OSError (socket.gaierror) when the name does not resolve."""
    known = cached(host)
    if known is not None:
        return known
    name = host.strip("[]").lower()
    infos = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_DGRAM)
    address = str(infos[0][4][0])
    if len(_CACHE) >= _MAX_CACHE:
        _CACHE.clear()
    _CACHE[name] = address
    return address
