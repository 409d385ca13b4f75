"""SIP URIs (RFC 3261 §19.1), name-addr/addr-spec addresses (§20.10) and Via values (§20.42).

The objects are frozen and their parse functions are cached: the same From/To/Contact strings recur
on every message of a dialog, so caching turns most parses into a dict lookup (the performance issue
asks for thousands of messages per second on one core).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from types import MappingProxyType
from urllib.parse import quote, unquote

from .errors import RemoteProtocolError

_EMPTY: Mapping[str, str | None] = MappingProxyType({})
# the parse caches keep at most 4096 entries each; only values up to this length are cached, so a flood of
# distinct long values (up to 8 KB a header line) cannot pin 2 x 4096 x 8 KB of memory (URIs and addresses; Vias are
# not cached)
_CACHED_LEN = 512
_USER_SAFE = (
    "-_.!~*'()&=+$,;/"  # RFC 3261 user-unreserved + unreserved but '?' (it starts URI headers); the rest is %-escaped
)


_USER_PLAIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + _USER_SAFE  # users needing no escapes


def bracket(host: str) -> str:
    """A host as written in a URI or Via: an IPv6 literal goes in brackets (RFC 3261 §19.1.1, §25.1)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _parse_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        params[name.strip().lower()] = value.strip() if sep else None
    return params


def _format_params(params: Mapping[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _split_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise RemoteProtocolError(f"unterminated IPv6 reference in {text!r}")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise RemoteProtocolError(f"bad host:port {text!r}")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise RemoteProtocolError(f"missing host in {text!r}")
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
            raise RemoteProtocolError(f"bad port in {text!r}")
        return host.lower(), int(port_text)
    return host.lower(), None


@dataclass(frozen=True)
class SipUri:
    """A sip: or sips: URI, or a tel: URI (RFC 3966: `user` is the number, `host` is empty; legal in From and
    To, never a target). `user` is stored unescaped; `str()` escapes it again."""

    host: str
    user: str | None = None
    port: int | None = None
    scheme: str = "sip"
    params: Mapping[str, str | None] = field(default_factory=lambda: _EMPTY, compare=False)
    headers: str = field(default="", compare=False)

    @staticmethod
    def parse(text: str) -> SipUri:
        text = text.strip()
        return _parse_uri(text) if len(text) <= _CACHED_LEN else _parse_uri.__wrapped__(text)

    @property
    def transport(self) -> str:
        """The transport this URI asks for (udp unless a transport param or sips: says otherwise)."""
        t = self.params.get("transport")
        if t:
            return t.lower()
        return "tls" if self.scheme == "sips" else "udp"

    @property
    def aor(self) -> str:
        """Address of record: scheme, user and host, without port or parameters (registrar key)."""
        if self.scheme == "tel":
            return f"tel:{self.user}"
        return f"{self.scheme}:{self.user}@{self.host}" if self.user else f"{self.scheme}:{self.host}"

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def with_params(self, **params: str | None) -> SipUri:
        merged = dict(self.params)
        for k, v in params.items():
            merged[k.replace("_", "-")] = v
        return replace(self, params=MappingProxyType(merged))

    def without_params(self, *names: str) -> SipUri:
        if not any(n in self.params for n in names):
            return self  # frozen: nothing to remove, nothing to copy
        return replace(self, params=MappingProxyType({k: v for k, v in self.params.items() if k not in names}))

    def __str__(self) -> str:
        u = self.user
        if self.scheme == "tel":
            return f"tel:{u}{_format_params(self.params)}"
        user = (f"{u}@" if not u.strip(_USER_PLAIN) else f"{quote(u, safe=_USER_SAFE)}@") if u else ""
        port = f":{self.port}" if self.port is not None else ""
        hdrs = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{user}{self.host}{port}{_format_params(self.params)}{hdrs}"

    def __copy__(self) -> SipUri:
        return self  # immutable (copy.copy would fail compiled: mypyc's __setstate__ cannot fill a frozen class)

    def __deepcopy__(self, memo: dict[int, object]) -> SipUri:
        return self


_TEL_CHARS = "0123456789abcdefABCDEF*#+-.()"  # RFC 3966 global and local numbers with visual separators


@lru_cache(maxsize=4096)
def _parse_uri(text: str) -> SipUri:
    if not text.isprintable():
        # CR, LF, NUL and other controls never belong in a URI (they would end or inject header lines)
        raise RemoteProtocolError(f"control character in URI {text[:80]!r}")
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower()
    if sep and scheme == "tel":
        number, _, params = rest.partition(";")
        if not number or number.strip(_TEL_CHARS) or not any(c.isalnum() or c in "*#" for c in number):
            raise RemoteProtocolError(f"bad tel: URI {text[:80]!r}")
        return SipUri(
            host="", user=number, scheme="tel", params=MappingProxyType(_parse_params(params)) if params else _EMPTY
        )
    if not sep or scheme not in ("sip", "sips"):
        raise RemoteProtocolError(f"not a sip:, sips: or tel: URI: {text[:80]!r}", 416)
    rest, _, headers = rest.partition("?")
    user = None
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user = unquote(userinfo.partition(":")[0])  # a password in a URI is deprecated: drop it
        if not user:
            raise RemoteProtocolError(f"empty user part in {text!r}")
    hostport, _, params = rest.partition(";")
    host, port = _split_hostport(hostport)
    return SipUri(
        host=host,
        user=user,
        port=port,
        scheme=scheme,
        params=MappingProxyType(_parse_params(params)) if params else _EMPTY,
        headers=headers,
    )


def _find_unquoted(text: str, chars: str, start: int = 0) -> int:
    in_quotes = False
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            in_quotes = not in_quotes
        elif c == "\\" and in_quotes:
            i += 1
        elif not in_quotes and c in chars:
            return i
        i += 1
    return -1


def split_header_values(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and <...> (for Via, Contact, Route)."""
    if "," not in value:
        return [value.strip()]
    if '"' not in value and "<" not in value:  # nothing that could hide a comma: split in C (Via, Allow, ...)
        return [v for v in (part.strip() for part in value.split(",")) if v]
    out: list[str] = []
    depth = 0
    in_quotes = False
    start = 0
    i = 0
    while i < len(value):
        c = value[i]
        if c == '"':
            in_quotes = not in_quotes
        elif c == "\\" and in_quotes:
            i += 1
        elif not in_quotes:
            if c == "<":
                depth += 1
            elif c == ">":
                depth = max(0, depth - 1)
            elif c == "," and depth == 0:
                out.append(value[start:i].strip())
                start = i + 1
        i += 1
    out.append(value[start:].strip())
    return [v for v in out if v]


@dataclass(frozen=True)
class Address:
    """A name-addr or addr-spec with header parameters: From, To, Contact, Route, Record-Route."""

    uri: SipUri
    display_name: str | None = None
    params: Mapping[str, str | None] = field(default_factory=lambda: _EMPTY, compare=False)
    wildcard: bool = False  # the "Contact: *" of a REGISTER that removes every binding

    @staticmethod
    def parse(text: str) -> Address:
        text = text.strip()
        return _parse_address(text) if len(text) <= _CACHED_LEN else _parse_address.__wrapped__(text)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_tag(self, tag: str) -> Address:
        return Address(self.uri, self.display_name, MappingProxyType({**self.params, "tag": tag}), self.wildcard)

    def with_params(self, **params: str | None) -> Address:
        return replace(self, params=MappingProxyType({**self.params, **params}))

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        name = ""
        if self.display_name:
            escaped = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
            name = f'"{escaped}" '
        return f"{name}<{self.uri}>{_format_params(self.params)}"

    def __copy__(self) -> Address:
        return self  # immutable (copy.copy would fail compiled: mypyc's __setstate__ cannot fill a frozen class)

    def __deepcopy__(self, memo: dict[int, object]) -> Address:
        return self


@lru_cache(maxsize=4096)
def _parse_address(text: str) -> Address:
    if text == "*":
        return Address(uri=SipUri(host="*"), wildcard=True)
    lt = _find_unquoted(text, "<")
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise RemoteProtocolError(f"unterminated <...> in {text!r}")
        name = text[:lt].strip()
        if name.startswith('"') and name.endswith('"') and len(name) >= 2:
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        uri = SipUri.parse(text[lt + 1 : gt])
        params = text[gt + 1 :]
        return Address(
            uri=uri,
            display_name=name or None,
            params=MappingProxyType(_parse_params(params)) if params.strip() else _EMPTY,
        )
    # addr-spec: parameters after the URI belong to the header, not to the URI (RFC 3261 §20.10)
    uri_text, _, params = text.partition(";")
    if '"' in uri_text:
        raise RemoteProtocolError(f"unterminated quoted display name in {text[:80]!r}")
    if "?" in uri_text or "," in uri_text:
        raise RemoteProtocolError(f"addr-spec with reserved characters must use <...>: {text!r}")
    return Address(uri=SipUri.parse(uri_text), params=MappingProxyType(_parse_params(params)) if params else _EMPTY)


@dataclass(frozen=True)
class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=z9hG4bK...;rport;received=...`."""

    transport: str
    host: str
    port: int | None = None
    params: Mapping[str, str | None] = field(default_factory=lambda: _EMPTY, compare=False)

    @staticmethod
    def parse(text: str) -> Via:
        text = text.strip()
        # not cached, unlike URIs and addresses: every transaction has a Via of its own (a fresh branch), so a
        # cache of them only ever missed, and its upkeep cost ~6% of a parse (bench/parsers.py)
        return _parse_via(text)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> tuple[str, int]:
        default = 5061 if self.transport == "TLS" else 5060
        return self.host, self.port if self.port is not None else default

    def response_address(self) -> tuple[str, int]:
        """Where a response to this hop goes (RFC 3261 §18.2.2 with RFC 3581 rport)."""
        host = self.params.get("received") or self.host
        rport = self.params.get("rport")
        if rport and rport.isascii() and rport.isdigit() and 0 < int(rport) < 65536:
            return host.strip("[]"), int(rport)
        return host.strip("[]"), self.sent_by[1]

    def with_params(self, **params: str | None) -> Via:
        # the constructor, not dataclasses.replace: this runs for every request received (received/rport)
        return Via(self.transport, self.host, self.port, MappingProxyType({**self.params, **params}))

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{_format_params(self.params)}"

    def __copy__(self) -> Via:
        return self  # immutable (copy.copy would fail compiled: mypyc's __setstate__ cannot fill a frozen class)

    def __deepcopy__(self, memo: dict[int, object]) -> Via:
        return self


def _parse_via(text: str) -> Via:
    # sent-protocol may carry spaces around the slashes ("SIP / 2.0 / UDP", RFC 4475 §3.1.1.1)
    parts = text.split("/", 2)
    if len(parts) != 3 or parts[0].strip().upper() != "SIP" or parts[1].strip() != "2.0":
        raise RemoteProtocolError(f"bad Via: {text[:80]!r}")
    rest = parts[2].lstrip(" \t")
    i = 0
    while i < len(rest) and rest[i] not in " \t":
        i += 1
    transport, rest = rest[:i], rest[i:].strip()
    if not transport or not transport.isalpha():
        raise RemoteProtocolError(f"bad Via transport in {text[:80]!r}")
    hostport, _, params = rest.partition(";")
    host, port = _split_hostport(hostport.strip())
    return Via(
        transport=transport.upper(),
        host=host,
        port=port,
        params=MappingProxyType(_parse_params(params)) if params else _EMPTY,
    )
