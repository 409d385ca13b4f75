"""What a conference is: its members and roster subscriptions, the roster documents (RFC 4575) built from
them, and the limits that bound every table and queue of the focus."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...core.stack import ServerHandle
from ...im import conference_info as ci
from ...im import cpim
from ...sip import sdp
from ...sip.dialog import Dialog
from ...sip.uri import SipUri

if TYPE_CHECKING:  # pragma: no cover
    from .sender import DialogSender

FACTORY_USER = "conference-factory"
CONF_PREFIX = "conf-"
ACCEPT_TYPES = sdp.ACCEPT_TYPES + (cpim.CONTENT_TYPE,)
ALLOW = "INVITE, ACK, CANCEL, BYE, MESSAGE, OPTIONS, SUBSCRIBE, NOTIFY, REFER"


def entity_of(uri: SipUri) -> str:
    """A participant's identity in the roster: scheme, user, host and port, no parameters or headers."""
    return str(SipUri(host=uri.host, user=uri.user, port=uri.port, scheme=uri.scheme))


@dataclass
class FocusLimits:
    max_conferences: int = 1000
    max_participants: int = 100
    max_subscriptions: int = 200  # per conference
    max_queue: int = 10_000  # requests waiting for one participant; beyond, it is dropped as too slow
    max_expires: int = 3600  # SUBSCRIBE
    default_expires: int = 600
    probe_interval: float = 300.0  # in-dialog OPTIONS to every participant (finds crashed ones); 0 = off
    dial_timeout: float = 130.0  # CANCEL a dial-out nobody answers
    recent_ids: int = 4096  # per conference, for duplicate suppression of retried MESSAGEs


@dataclass
class Member:
    entity: str
    display_name: str | None
    joining: str  # dialed-in, dialed-out, focus-owner
    status: str = "connected"  # dialing-out, connected
    dialog: Dialog | None = None
    sender: DialogSender | None = None
    cpim: bool = False
    acked: bool = True
    invite_handle: Any = None  # dial-out: the client transaction (for CANCEL)
    server_handle: ServerHandle | None = None
    joined_at: float = field(default_factory=time.monotonic)


@dataclass
class Subscription:
    entity: str
    dialog: Dialog
    sender: DialogSender
    expires_at: float
    timer: asyncio.TimerHandle | None = None


class Conference:
    """One conference: members by entity, subscriptions by dialog id, the roster version. `tls_port` is the
    focus's TLS port (0 without TLS): a participant on TLS gets the conference URI on that port."""

    def __init__(self, conf_id: str, uri: SipUri, *, recent_ids: int, tls_port: int = 0) -> None:
        self.id = conf_id
        self.uri = uri  # sip:conf-<id>@host:port
        self.members: OrderedDict[str, Member] = OrderedDict()
        self.subscriptions: dict[tuple[str, str, str], Subscription] = {}
        self.version = 0
        self.recent: OrderedDict[str, None] = OrderedDict()
        self.recent_ids = recent_ids
        self.tls_port = tls_port
        self.created_at = time.monotonic()
        self.relayed = 0
        self.ended = False
        self.probe: asyncio.TimerHandle | None = None
        self.subject: str | None = None

    @property
    def entity(self) -> str:
        return str(self.uri)

    def contact(self, transport: str = "udp") -> str:
        """The focus's Contact for a participant on `transport` (the conference URI, `;isfocus`, RFC 4579)."""
        uri = self.uri
        if transport == "tls" and self.tls_port:
            uri = SipUri(host=uri.host, user=uri.user, port=self.tls_port, scheme=uri.scheme)
        if transport != "udp":
            uri = uri.with_params(transport=transport)
        return f"<{uri}>;isfocus"

    def seen(self, key: str) -> bool:
        """Was a message with this key (sender and message id) relayed already? Remembers it if not."""
        if key in self.recent:
            return True
        self.recent[key] = None
        if len(self.recent) > self.recent_ids:
            self.recent.popitem(last=False)
        return False

    # -- roster documents ----------------------------------------------------------------------------
    def user_info(
        self,
        m: Member,
        status: str | None = None,
        method: str | None = None,
        reason: str | None = None,
        state: str = "full",
    ) -> ci.UserInfo:
        ep = ci.EndpointInfo(
            entity=m.entity,
            status=status or m.status,
            joining_method=m.joining,
            disconnection_method=method,
            disconnection_reason=reason,
            display_text=m.display_name,
        )
        return ci.UserInfo(m.entity, state, m.display_name, (ep,))

    def full_document(self) -> bytes:
        users = tuple(self.user_info(m) for m in self.members.values())
        return ci.build(
            ci.ConferenceInfo(
                self.entity, self.version, "full", users, self.subject, self.connected_count(), not self.ended
            )
        )

    def partial_document(self, user: ci.UserInfo) -> bytes:
        """The next version of the roster with one changed user (RFC 4575 §4.6 partial notification)."""
        self.version += 1
        return ci.build(
            ci.ConferenceInfo(
                self.entity, self.version, "partial", (user,), None, self.connected_count(), not self.ended
            )
        )

    def connected_count(self) -> int:
        return sum(1 for m in self.members.values() if m.status == "connected")
