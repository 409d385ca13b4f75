"""RFC 4575 conference state: the `application/conference-info+xml` document and a roster view.

Sans-IO. The focus builds documents with `build()` (a full one for a new subscriber, partial ones with
only the users that changed afterwards, `version` counting up by one per document). A subscriber feeds
every NOTIFY body to `RosterView.apply()`, which merges partial documents into the roster it keeps and
returns what changed (`Joined`, `Left`, `StatusChanged`); a document whose version does not follow the
last one (a NOTIFY lost for good, or reordered) sets `needs_full`, and the subscriber should refresh its
subscription to get the full state again (RFC 4575 §4.1).

Only what an IM conference needs of the schema: conference-description (subject), conference-state
(user-count, active), and users with their display-text and endpoints (status, joining-method,
disconnection-method and -info reason). Unknown elements are ignored, as §5 asks.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace

from ..sip.errors import RemoteProtocolError
from .xmldoc import ascii_int, escape, parse_untrusted

CONTENT_TYPE = "application/conference-info+xml"
EVENT = "conference"
NS = "urn:ietf:params:xml:ns:conference-info"
MAX_DOCUMENT = 256 * 1024
MAX_USERS = 1000
MAX_VERSION = 2**32 - 1

# endpoint <status> values of RFC 4575 §5.7.2
STATUSES = (
    "pending",
    "dialing-out",
    "dialing-in",
    "alerting",
    "on-hold",
    "connected",
    "muted-via-focus",
    "disconnecting",
    "disconnected",
)
ELEMENT_STATES = ("full", "partial", "deleted")


@dataclass(frozen=True)
class EndpointInfo:
    entity: str
    status: str = "connected"
    state: str = "full"
    display_text: str | None = None
    joining_method: str | None = None  # dialed-in, dialed-out, focus-owner
    disconnection_method: str | None = None  # departed, booted, failed, busy
    disconnection_reason: str | None = None  # <disconnection-info><reason>, e.g. "486 Busy Here"


@dataclass(frozen=True)
class UserInfo:
    entity: str
    state: str = "full"  # full, partial or deleted
    display_text: str | None = None
    endpoints: tuple[EndpointInfo, ...] = ()

    @property
    def status(self) -> str:
        """The user's status: that of its first endpoint ("disconnected" without any)."""
        return self.endpoints[0].status if self.endpoints else "disconnected"


@dataclass(frozen=True)
class ConferenceInfo:
    entity: str
    version: int
    state: str = "full"  # full or partial
    users: tuple[UserInfo, ...] = ()
    subject: str | None = None
    user_count: int | None = None
    active: bool | None = None


_esc = escape  # display names and entities are chosen by participants (see xmldoc.escape)


def build(info: ConferenceInfo) -> bytes:
    """The XML document of `info`."""
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<conference-info xmlns="{NS}" entity="{_esc(info.entity)}" state="{info.state}" version="{int(info.version)}">\n',
    ]
    if info.subject is not None:
        out.append(
            f"  <conference-description>\n    <subject>{_esc(info.subject)}</subject>\n  </conference-description>\n"
        )
    if info.user_count is not None or info.active is not None:
        out.append("  <conference-state>\n")
        if info.user_count is not None:
            out.append(f"    <user-count>{int(info.user_count)}</user-count>\n")
        if info.active is not None:
            out.append(f"    <active>{'true' if info.active else 'false'}</active>\n")
        out.append("  </conference-state>\n")
    out.append("  <users>\n")
    for u in info.users:
        out.append(f'    <user entity="{_esc(u.entity)}" state="{u.state}">\n')
        if u.display_text:
            out.append(f"      <display-text>{_esc(u.display_text)}</display-text>\n")
        for e in u.endpoints:
            out.append(f'      <endpoint entity="{_esc(e.entity)}" state="{e.state}">\n')
            if e.display_text:
                out.append(f"        <display-text>{_esc(e.display_text)}</display-text>\n")
            out.append(f"        <status>{e.status}</status>\n")
            if e.joining_method:
                out.append(f"        <joining-method>{e.joining_method}</joining-method>\n")
            if e.disconnection_method:
                out.append(f"        <disconnection-method>{e.disconnection_method}</disconnection-method>\n")
            if e.disconnection_reason:
                out.append(
                    f"        <disconnection-info>\n          <reason>{_esc(e.disconnection_reason)}</reason>\n"
                    "        </disconnection-info>\n"
                )
            out.append(
                '        <media id="1">\n          <type>message</type>\n          <status>sendrecv</status>\n'
                "        </media>\n"
            )
            out.append("      </endpoint>\n")
        out.append("    </user>\n")
    out.append("  </users>\n</conference-info>\n")
    return "".join(out).encode("utf-8")


def parse(body: bytes) -> ConferenceInfo:
    """Parse a conference-info document; RemoteProtocolError (400) for anything that is not a valid one."""
    root = parse_untrusted(body, limit=MAX_DOCUMENT, what="conference-info")
    if _local(root.tag) != "conference-info":
        raise RemoteProtocolError(f"unexpected root element {root.tag!r}")
    entity = root.get("entity")
    version = ascii_int(root.get("version"))  # xs:unsignedInt (RFC 4575 §5.1): ASCII digits, at most 2**32 - 1
    if not entity or version is None or version > MAX_VERSION:
        raise RemoteProtocolError("conference-info needs entity and a numeric version")
    state = root.get("state", "full")
    if state not in ("full", "partial"):
        raise RemoteProtocolError(f"conference-info state must be full or partial, not {state!r}")
    subject = _text(_child(_child(root, "conference-description"), "subject"))
    cs = _child(root, "conference-state")
    count_text = _text(_child(cs, "user-count"))
    active_text = _text(_child(cs, "active"))
    users: list[UserInfo] = []
    users_el = _child(root, "users")
    for u in users_el if users_el is not None else []:
        if _local(u.tag) != "user":
            continue
        if len(users) >= MAX_USERS:
            raise RemoteProtocolError("conference-info lists too many users", 413)
        u_entity = u.get("entity")
        if not u_entity:
            raise RemoteProtocolError("a conference-info user needs an entity")
        u_state = u.get("state", "full")
        if u_state not in ELEMENT_STATES:
            raise RemoteProtocolError(f"bad user state {u_state!r}")
        endpoints = []
        for e in u:
            if _local(e.tag) != "endpoint":
                continue
            e_state = e.get("state", "full")
            if e_state not in ELEMENT_STATES:
                raise RemoteProtocolError(f"bad endpoint state {e_state!r}")
            status = _text(_child(e, "status")) or ("disconnected" if e_state == "deleted" else "connected")
            if status not in STATUSES:
                raise RemoteProtocolError(f"unknown endpoint status {status!r}")
            endpoints.append(
                EndpointInfo(
                    entity=e.get("entity") or u_entity,
                    status=status,
                    state=e_state,
                    display_text=_text(_child(e, "display-text")),
                    joining_method=_text(_child(e, "joining-method")),
                    disconnection_method=_text(_child(e, "disconnection-method")),
                    disconnection_reason=_text(_child(_child(e, "disconnection-info"), "reason")),
                )
            )
        users.append(UserInfo(u_entity, u_state, _text(_child(u, "display-text")), tuple(endpoints)))
    return ConferenceInfo(
        entity,
        version,
        state,
        tuple(users),
        subject,
        ascii_int(count_text),
        None if active_text is None else active_text.lower() == "true",
    )


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el: ET.Element | None, name: str) -> ET.Element | None:
    if el is None:
        return None
    for c in el:
        if _local(c.tag) == name:
            return c
    return None


def _text(el: ET.Element | None) -> str | None:
    return el.text.strip() if el is not None and el.text and el.text.strip() else None


# --- the subscriber's view ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Joined:
    user: UserInfo


@dataclass(frozen=True)
class Left:
    user: UserInfo  # its last known state (status, disconnection method and reason)


@dataclass(frozen=True)
class StatusChanged:
    user: UserInfo
    previous: str


Change = Joined | Left | StatusChanged


@dataclass
class RosterView:
    """The roster as a subscriber sees it, merged from full and partial documents (RFC 4575 §4.6)."""

    users: dict[str, UserInfo] = field(default_factory=dict)
    version: int | None = None
    needs_full: bool = False
    subject: str | None = None

    def apply(self, info: ConferenceInfo) -> list[Change]:
        if info.state == "partial":
            if self.version is None or info.version <= self.version:
                return []  # before the full state, or old news: ignore
            if info.version != self.version + 1:
                self.needs_full = True  # a gap: merge what we have, and ask for the full state
        elif self.version is not None and info.version < self.version:
            return []
        changes: list[Change] = []
        if info.subject is not None:
            self.subject = info.subject
        if info.state == "full":
            self.needs_full = False
            seen = {u.entity for u in info.users if u.state != "deleted"}
            for entity in [e for e in self.users if e not in seen]:
                changes.append(Left(self.users.pop(entity)))
        for u in info.users:
            old = self.users.get(u.entity)
            if u.state == "deleted" or u.status == "disconnected":
                if old is not None:
                    del self.users[u.entity]
                    gone = u if u.endpoints else replace(old, state="deleted")
                    changes.append(Left(replace(gone, display_text=gone.display_text or old.display_text)))
                continue
            merged = u
            if old is not None and u.state == "partial":
                merged = replace(
                    u, display_text=u.display_text or old.display_text, endpoints=u.endpoints or old.endpoints
                )
            self.users[u.entity] = merged
            if old is None:
                changes.append(Joined(merged))
            elif old.status != merged.status:
                changes.append(StatusChanged(merged, old.status))
        self.version = info.version if self.version is None else max(self.version, info.version)
        return changes
