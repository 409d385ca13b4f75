"""A SIP header collection: case-insensitive, compact forms expanded, order of same-name fields kept.

Values are stored as the strings that came off the wire and parsed only when asked for (lazily): a
proxy that relays a MESSAGE never needs to parse its Content-Type or Subject.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from .errors import LocalProtocolError
from .uri import split_header_values

T = TypeVar("T")

# RFC 3261 §7.3.3 and later RFCs' compact forms
COMPACT = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
    "x": "session-expires",
    "b": "referred-by",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}

CANONICAL = {
    n.lower(): n
    for n in (
        "Via",
        "Max-Forwards",
        "Route",
        "Record-Route",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Expires",
        "Min-Expires",
        "Content-Type",
        "Content-Length",
        "Content-Encoding",
        "Content-Disposition",
        "User-Agent",
        "Server",
        "Allow",
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Supported",
        "Require",
        "Proxy-Require",
        "Unsupported",
        "Authorization",
        "Proxy-Authorization",
        "WWW-Authenticate",
        "Proxy-Authenticate",
        "Authentication-Info",
        "Subject",
        "Date",
        "Event",
        "Allow-Events",
        "Subscription-State",
        "Refer-To",
        "Referred-By",
        "Timestamp",
        "Retry-After",
        "Warning",
        "Imdn-Message-ID",
        "Disposition-Notification",
        "Session-Expires",
        "Min-SE",
        "Priority",
        "Organization",
        "In-Reply-To",
        "Reply-To",
        "Alert-Info",
        "Error-Info",
        "Call-Info",
        "Path",
        "Service-Route",
        "Identity",
        "Identity-Info",
        "Accept-Contact",
        "Reject-Contact",
        "Request-Disposition",
        "Reason",
        "RSeq",
        "RAck",
        "P-Asserted-Identity",
        "Ms-Text-Format",
    )
}
CANONICAL["call-id"] = "Call-ID"
CANONICAL["cseq"] = "CSeq"
CANONICAL["www-authenticate"] = "WWW-Authenticate"

# headers whose comma-separated values are separate fields (RFC 3261 §7.3.1); the auth headers are
# excluded because their parameters contain commas themselves
MULTI_VALUED = frozenset(
    {
        "via",
        "route",
        "record-route",
        "contact",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow-events",
        "path",
        "service-route",
    }
)


_NAME_CACHE: dict[str, str] = {}


def normalize_name(name: str) -> str:
    """Lower-case full name for a header name as written (compact forms expanded); cached, it is hot."""
    key = _NAME_CACHE.get(name)
    if key is None:
        low = name.strip().lower()
        key = COMPACT.get(low, low)
        if len(_NAME_CACHE) < 4096 and len(name) <= 64:  # bounded: hostile peers may invent names
            _NAME_CACHE[name] = key
    return key


def display_name(key: str) -> str:
    return CANONICAL.get(key) or "-".join(p[:1].upper() + p[1:] for p in key.split("-"))


def field_value(key: str, value: object) -> str:
    """`value` as a header field value, refusing CR, LF and NUL: the one gate every value passes on its way
    into a message we build, so that no argument, however it got here, can start a header line of its own
    (header injection) or cut the message short. The API checks its arguments first, with messages naming
    the argument; this is what holds if a path forgets to."""
    text = value if type(value) is str else str(value)
    if "\n" in text or "\r" in text or "\x00" in text:
        raise LocalProtocolError(
            f"a {display_name(key)} header value may not contain CR, LF or NUL "
            f"(it would inject header lines): {text[:60]!r}"
        )
    return text


class Headers:
    """Header fields keyed by lower-case full name; each key maps to its field values in order.

    `parsed(key, fn)` caches the parsed form of a header (the top Via, From, CSeq...): a message's Via is read
    by the parser's checks, the transaction key, the response builder and the response target, and parsing it
    once instead of four times is a measurable part of answering a request. Every mutation of a header drops
    its cached parse, so the cache can never disagree with the values.

    `fields` (key -> values) and `cache` (key -> parse) are the storage itself, open to the rest of the sip
    package for its hot paths: the parser fills `fields` directly (received values are checked once the whole
    header section is read, not value by value), `make_response` copies fields and parses at once. Everything
    else goes through the methods, whose `add`/`set` refuse CR, LF and NUL (`field_value`).
    """

    __slots__ = ("fields", "cache")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self.fields: dict[str, list[str]] = {}
        self.cache: dict[str, Any] = {}  # (Any: each key holds its own parse: str, CSeq, Address, Via)
        for name, value in items:
            self.add(name, value)

    def copy(self) -> Headers:
        h = Headers()
        h.fields = {k: list(v) for k, v in self.fields.items()}
        h.cache = dict(self.cache)  # same values, so the same parses (parsed objects are immutable)
        return h

    def parsed(self, key: str, parse: Callable[[str], T]) -> T:
        """`parse(first value of key)`, cached until the header changes (`key` lower-case full name).
        Raises what `parse` raises (not cached), KeyError if the header is absent."""
        try:
            return self.cache[key]  # type: ignore[return-value]
        except KeyError:
            pass
        values = self.fields.get(key)
        if not values:
            raise KeyError(key)
        result = parse(values[0])
        self.cache[key] = result
        return result

    def _changed(self, key: str) -> None:
        if self.cache:
            self.cache.pop(key, None)

    def add(self, name: str, value: str) -> None:
        key = normalize_name(name)
        self._changed(key)
        self.fields.setdefault(key, []).append(field_value(key, value))

    def prepend(self, name: str, value: str) -> None:
        """Put a value first: the first of its field, and a field new to the message first of all (a proxy's
        Via goes on top of a message whose Via was taken off, as a stored message's is)."""
        key = normalize_name(name)
        self._changed(key)
        values = self.fields.get(key)
        if values is None:
            self.fields = {key: [field_value(key, value)], **self.fields}
        else:
            values.insert(0, field_value(key, value))

    def set(self, name: str, value: str) -> None:
        key = normalize_name(name)
        self._changed(key)
        self.fields[key] = [field_value(key, value)]

    def remove(self, name: str) -> None:
        key = normalize_name(name)
        self._changed(key)
        self.fields.pop(key, None)

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.fields.get(normalize_name(name))
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """All values, with comma-joined fields of multi-valued headers split apart."""
        key = normalize_name(name)
        values = self.fields.get(key)
        if not values:
            return []
        if key in MULTI_VALUED:
            if len(values) == 1 and "," not in values[0]:
                return [values[0].strip()]
            out: list[str] = []
            for v in values:
                out.extend(split_header_values(v))
            return out
        return list(values)

    def set_all(self, name: str, values: Iterable[str]) -> None:
        key = normalize_name(name)
        vals = [field_value(key, v) for v in values]
        self._changed(key)
        if vals:
            self.fields[key] = vals
        else:
            self.fields.pop(key, None)

    def replace_first(self, key: str, value: str, parsed: object = None) -> None:
        """Replace the first value of multi-valued header `key` (lower-case full name), e.g. the top Via a
        server adds received/rport to; `parsed` (optional) is its parsed form, cached for `parsed()`."""
        values = self.fields.get(key)
        value = field_value(key, value)
        if values and "," not in values[0]:
            values[0] = value
            self.cache.pop(key, None)
        else:
            rest = self.get_all(key)[1:]
            self.set_all(key, [value, *rest])
        if parsed is not None:
            self.cache[key] = parsed

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first value of a multi-valued header (a proxy popping Via/Route)."""
        key = normalize_name(name)
        fields = self.fields.get(key)
        if fields and "," not in fields[0]:  # one value per line, the usual case: no splitting and joining
            self._changed(key)
            first = fields.pop(0)
            if not fields:
                del self.fields[key]
            return first.strip()
        values = self.get_all(name)
        if not values:
            return None
        self.set_all(name, values[1:])
        return values[0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self.fields

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for key, values in self.fields.items():
            dn = display_name(key)
            for v in values:
                yield dn, v

    def __len__(self) -> int:
        return sum(len(v) for v in self.fields.values())

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def lines(self, skip: str = "") -> list[str]:
        """`Name: value` for every field (without line ends), in order; `skip` is a key left out."""
        out: list[str] = []
        for k, vals in self.fields.items():
            if k == skip:
                continue
            dn = CANONICAL.get(k) or display_name(k)
            if len(vals) == 1:
                out.append(f"{dn}: {vals[0]}")
            else:
                out.extend([f"{dn}: {v}" for v in vals])
        return out
