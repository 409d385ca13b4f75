"""How the API's events are written to the history store and read back (the store's codec, record/store.py).

The store moves rows; this module knows what an event is. Encoding: JSON scalars, lists and dicts as they are;
states (str enums) as their value, turned back into the enum the field's annotation names; `{"$dt": iso}`
datetimes; `{"$enum": class, "v": value}` other enums; `{"$ref": class, "uri", "name", "local"}` objects with a
URI (participants, endpoints); `{"$session": id, "remote": ...}` sessions; anything else `str()`. So
`SELECT json_extract(fields, '$.text') FROM events` works in SQL. On loading, events are rebuilt into the same
classes (`MessageDelivered`, ...), with small stand-ins for the live objects they pointed at (`EarlierSession`, a
`Participant` without a session); a type or field this version does not know becomes a frozen dataclass of the
same name and fields, and a row that fits neither is refused (`BadRecord`) rather than becoming an object that
fails later.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import json.encoder
import keyword
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..record.store import BadRecord
from . import events
from .participant import Participant


# -- events to JSON and back -------------------------------------------------------------------------------------
def _ref(value: Any) -> dict:  # a participant or an endpoint
    return {
        "$ref": type(value).__name__,
        "uri": str(value.uri),
        "name": getattr(value, "display_name", None),
        "local": bool(getattr(value, "is_local", False)),
    }


def _session(value: Any) -> dict:
    return {
        "$session": str(value.id),
        "remote": value.remote,
        "local": str(getattr(getattr(value, "endpoint", None), "uri", "") or ""),
        "conference": bool(getattr(value, "is_conference", False)),
        "incoming": bool(getattr(value, "is_incoming", False)),
    }


def encode_value(value: Any) -> Any:
    """What a field value the JSON encoder does not know becomes (see the module docstring for the tags). Only
    these go through Python: strings, numbers, booleans, None, lists and dicts are the C encoder's work, which
    keeps the writer thread's share of the GIL small."""
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, enum.Enum):  # str-valued enums (the states) are written as their value by the encoder
        return {"$enum": type(value).__name__, "v": value.value}
    if hasattr(value, "uri"):
        return _ref(value)
    if hasattr(value, "id") and hasattr(value, "remote"):
        return _session(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _json_encoder() -> Any:
    """A function value -> JSON text. JSONEncoder.encode builds a new C encoder on every call, which is a third of
    the time of encoding a small event; CPython's C encoder is made once here (the pure-Python one elsewhere).
    No circular check: the values are fresh dicts and strings."""
    c_make_encoder = json.encoder.c_make_encoder
    if c_make_encoder is None:  # pragma: no cover - not CPython
        return json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), check_circular=False, default=encode_value
        ).encode
    make = c_make_encoder(None, encode_value, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    return lambda value: "".join(make(value, 0))


_JSON = _json_encoder()


OBJECT_FIELDS = ("session", "participant", "inviter", "endpoint")  # event fields that hold live objects
_string = json.encoder.encode_basestring  # str -> JSON string literal (C), non-ASCII kept as it is


class EventEncoder:
    """Events as JSON, for the writer thread, which shares the GIL with the loop thread and so must be cheap.
    Field by field: strings through the C string encoder, numbers, None and datetimes written directly, and
    the live objects an event points at (its session, participant, endpoint), which are the same in every event
    of a conversation, encoded once and kept (keyed by the object and its display name, which may still
    change). Anything else goes through the JSON encoder. About a third cheaper than one `json.dumps` of a dict
    of encoded fields. Not thread-safe: one per writer."""

    def __init__(self, max_cached: int = 4096) -> None:
        self.max_cached = max_cached
        self._cache: dict[int, tuple[Any, Any, str]] = {}  # id(obj) -> (obj, its display name, its JSON)

    def __call__(self, event: Any) -> str:
        """Every dataclass field of `event` as one JSON object."""
        fields = getattr(event, "__dict__", None)
        if fields is None:  # a slotted dataclass
            fields = {name: getattr(event, name) for name in event.__dataclass_fields__}
        parts = []
        for name, value in fields.items():  # field names are identifiers: nothing to escape
            cls = type(value)
            if cls is str:
                text = _string(value)
            elif value is None:
                text = "null"
            elif cls is datetime:
                text = '{"$dt":"' + value.isoformat() + '"}'
            elif cls is bool:
                text = "true" if value else "false"
            elif cls is int or (cls is float and math.isfinite(value)):
                text = repr(value)
            elif name in OBJECT_FIELDS:
                text = self._object(value)
            else:
                text = _JSON(value)
            parts.append(f'"{name}":{text}')
        return "{" + ",".join(parts) + "}"

    def _object(self, value: Any) -> str:
        if value is None:
            return "null"
        name = getattr(getattr(value, "remote", value), "display_name", None)
        hit = self._cache.get(id(value))
        if hit is not None and hit[0] is value and hit[1] == name:
            return hit[2]
        if len(self._cache) >= self.max_cached:
            self._cache.clear()
        text = _JSON(value)
        self._cache[id(value)] = (value, name, text)  # holding the object keeps its id from being reused
        return text


@dataclass(frozen=True)
class EarlierRef:
    """An object with a URI (an endpoint) from a stored event: its URI and display name, nothing live."""

    uri: str
    display_name: str | None = None

    @property
    def name(self) -> str:
        """The display name, else the user part of the URI."""
        return self.display_name or self.uri.split(":", 1)[-1].split("@", 1)[0] or self.uri


@dataclass(frozen=True, eq=False)
class EarlierSession:
    """A session as a stored event remembers it: its id, the remote party and the local URI. It is a record of
    a conversation from an earlier run, so it cannot send, accept or end anything."""

    id: str
    remote: Any
    local_uri: str = ""
    is_conference: bool = False
    is_incoming: bool = False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"session {self.id} is a record from the history store (an earlier run), so it has no "
            f"{name!r}: start a new conversation with endpoint.sessions.create({self.remote.uri!r})"
        )

    def __repr__(self) -> str:
        return f"<EarlierSession {self.id} with {self.remote.uri}>"


def _uri_of(value: Any, what: str) -> str:
    uri = value.get("uri") if isinstance(value, dict) else None
    if not isinstance(uri, str):
        raise BadRecord(f"{what} without a URI")
    return uri


def decode_value(data: Any) -> Any:
    """The inverse of `encode_value`, with stand-ins (`Participant`, `EarlierRef`, `EarlierSession`) for live objects.
    BadRecord for a tagged value that is not what this module writes (a datetime without a time zone, a
    reference without a URI, ...): a row someone else wrote must not become an object that fails later."""
    if isinstance(data, list):
        return [decode_value(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "$dt" in data:
        text = data["$dt"]
        when = datetime.fromisoformat(text) if isinstance(text, str) and len(text) <= 64 else None
        if when is None or when.utcoffset() is None:
            raise BadRecord(f"not a UTC timestamp: {str(text)[:40]!r}")
        return when
    if "$enum" in data:
        cls = getattr(events, str(data["$enum"]), None)
        try:
            return cls(data["v"]) if isinstance(cls, type) and issubclass(cls, enum.Enum) else data.get("v")
        except ValueError:  # a state this version does not know: keep its value
            return data["v"]
    if "$ref" in data:
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise BadRecord("a display name that is not text")
        if data["$ref"] == "Participant":
            return Participant(_uri_of(data, "participant"), display_name=name, is_local=bool(data.get("local")))
        return EarlierRef(_uri_of(data, "reference"), name)
    if "$session" in data:
        remote = decode_value(data.get("remote")) or EarlierRef("")
        local = data.get("local", "")
        if (
            not isinstance(data["$session"], str)
            or not isinstance(getattr(remote, "uri", None), str)
            or not isinstance(local, str)
        ):
            raise BadRecord("a session without an id or a remote URI")
        return EarlierSession(data["$session"], remote, local, bool(data.get("conference")), bool(data.get("incoming")))
    return {k: decode_value(v) for k, v in data.items()}


_GENERIC: dict[tuple[str, tuple[str, ...]], type] = {}
MAX_GENERIC = 256  # event classes made up for stored types this version does not know (each is a new class)


def _is_uri_object(v: Any) -> bool:
    return isinstance(getattr(v, "uri", None), str)


_CHECKS: dict[str, Any] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "bool": lambda v: isinstance(v, bool),
    "datetime": lambda v: isinstance(v, datetime),  # decode_value made it, with a time zone
    "Participant": _is_uri_object,
    "Endpoint": _is_uri_object,
    "ImSession": lambda v: isinstance(v, EarlierSession),
}


@functools.cache
def _field_enums(cls: type) -> dict[str, Any]:
    """The fields of an event class, each with the Enum class its annotation names (or None): states are stored
    as their plain value and turned back into the enum here."""
    out = {}
    for f in dataclasses.fields(cls):
        named = getattr(events, f.type, None) if isinstance(f.type, str) else f.type
        out[f.name] = named if isinstance(named, type) and issubclass(named, enum.Enum) else None
    return out


@functools.cache
def _field_checks(cls: type) -> dict[str, Any]:
    """The fields of an event class, each with a test of what its annotation allows (`str`, `int | None`,
    'Participant', an enum, ...), so a stored row with a number where the text goes is refused here rather
    than breaking a DataFrame or the chat panel later."""
    out = {}
    for f in dataclasses.fields(cls):
        text = f.type.strip("'\"") if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        optional = text.endswith(" | None")
        base = text.removesuffix(" | None")
        kind = _field_enums(cls)[f.name]
        check = (lambda v, k=kind: isinstance(v, (k, str))) if kind is not None else _CHECKS.get(base, lambda v: True)
        out[f.name] = (lambda v, c=check: v is None or c(v)) if optional else check
    return out


def _as_enum(kind: Any, value: Any) -> Any:
    if kind is None or not isinstance(value, str):
        return value
    try:
        return kind(value)
    except ValueError:  # a state this version does not know: keep its value
        return value


def decode_event(type_name: str, fields_json: str) -> Any:
    """A stored event rebuilt as its event class (or, for a type or fields this version does not have, a frozen
    dataclass of the same name and fields, which the frames treat the same way). BadRecord (or the JSON
    decoder's ValueError) for a row that is neither: a field of the wrong type, names that cannot be fields."""
    data = json.loads(fields_json)
    if not isinstance(data, dict):
        raise BadRecord("event fields are not a JSON object")
    fields = {k: decode_value(v) for k, v in data.items()}
    cls = getattr(events, type_name, None)
    if isinstance(cls, type) and issubclass(cls, events.Event) and dataclasses.is_dataclass(cls):
        known = _field_enums(cls)
        checks = _field_checks(cls)
        values = {k: _as_enum(known[k], v) for k, v in fields.items() if k in known}
        wrong = next((k for k, v in values.items() if not checks[k](v)), None)
        if wrong is not None:
            raise BadRecord(f"{type_name}.{wrong} is a {type(values[wrong]).__name__}")
        try:
            return cls(**values)
        except TypeError:  # a required field this store does not have: fall through to the generic record
            pass
    if len(type_name) > 64 or not type_name.isidentifier() or keyword.iskeyword(type_name):
        raise BadRecord(f"event type {type_name[:40]!r} is not a name")
    if any(not k.isidentifier() or keyword.iskeyword(k) or k.startswith("__") for k in fields):
        raise BadRecord(f"{type_name} has a field that is not a name")
    if not isinstance(fields.get("timestamp"), datetime):
        raise BadRecord(f"{type_name} without a timestamp")
    key = (type_name, tuple(fields))
    generic = _GENERIC.get(key)
    if generic is None:
        if len(_GENERIC) >= MAX_GENERIC:
            raise BadRecord(f"more than {MAX_GENERIC} kinds of unknown events")
        generic = dataclasses.make_dataclass(type_name, [(k, Any, field(default=None)) for k in fields], frozen=True)
        _GENERIC[key] = generic
    return generic(**fields)


class Codec:
    """The `trace.store.EventCodec` of this package's events."""

    def encoder(self) -> Callable[[Any], str]:
        return EventEncoder()

    def decode(self, type_name: str, fields_json: str) -> Any:
        return decode_event(type_name, fields_json)


CODEC = Codec()
