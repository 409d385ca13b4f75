"""The conference focus of the embedded server (RFC 4353 focus, RFC 4579 ad-hoc conferences, RFC 4575
conference state), for IM with three or more participants.

Wire flow (see docs/readme-conference.md):

- **Create**: INVITE `sip:conference-factory@<server>` (SDP `m=message`). The focus creates a conference and
  answers 200 with `Contact: <sip:conf-<id>@<server>>;isfocus` (RFC 4579 §5.4): the conference URI.
- **Join**: INVITE the conference URI (how SIPp or any other client joins). 200 + `;isfocus` Contact.
- **Invite others**: in-dialog REFER with `Refer-To: <invitee>` (RFC 3515 + `Refer-Sub: false`, RFC 4488).
  The focus dials out: INVITE to the invitee (only users registered with this server), From the conference
  URI, `Contact: <conf URI>;isfocus`, `Referred-By` the referrer (RFC 3892) and a `Replaces` header copied
  from the Refer-To URI (RFC 3891) when a two-party session is being escalated.
- **Relay**: each MESSAGE (text or RFC 3994 composing) from a participant is answered 200 by the focus and
  relayed in-dialog to every other connected participant, in the order received, one request at a time per
  receiver (CSeq order), wrapped in `message/cpim` (RFC 3862) whose `From:` is the original sender, for
  participants whose SDP `a=accept-types` lists message/cpim; others get the bare body.
- **Roster**: participants SUBSCRIBE to the conference URI with `Event: conference`; the focus answers
  200 and NOTIFYs `application/conference-info+xml`: the full state first (and on every refresh), then a
  partial document (version + 1) for each join, status change and departure.
- **Leave / vanish**: BYE removes a participant. A relayed MESSAGE, NOTIFY or the periodic OPTIONS probe
  that times out (or gets 481/408) removes the participant too (disconnection-method `failed`); the others
  are told. The conference ends when nobody is left. Every queue, table and timer is bounded.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import unquote

from ..errors import NO_ANSWER
from ..im import conference_info as ci
from ..im import cpim
from ..im import iscomposing as ic
from ..net.base import Target
from ..sip import sdp
from ..sip.dialog import Dialog
from ..sip.errors import LocalProtocolError, RemoteProtocolError
from ..sip.headers import Headers
from ..sip.message import Request, Response, make_response, new_call_id, new_tag, random_hex
from ..sip.transaction import make_cancel
from ..sip.uri import Address, SipUri, bracket
from ..core.stack import USER_AGENT, ServerHandle

if TYPE_CHECKING:  # pragma: no cover
    from .server import ProxyCore

log = logging.getLogger("notebook_im.focus")

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
    max_subscriptions: int = 200          # per conference
    max_queue: int = 10_000               # requests waiting for one participant; beyond, it is dropped as too slow
    max_expires: int = 3600               # SUBSCRIBE
    default_expires: int = 600
    probe_interval: float = 300.0         # in-dialog OPTIONS to every participant (finds crashed ones); 0 = off
    dial_timeout: float = 130.0           # CANCEL a dial-out nobody answers
    recent_ids: int = 4096                # per conference, for duplicate suppression of retried MESSAGEs


class DialogSender:
    """In-dialog requests of the focus to one peer, one at a time in FIFO order (the peer checks CSeq order),
    with a bounded queue. `on_failure(status, reason)` is called once if a request times out or gets 408/481."""

    def __init__(self, focus: "Focus", dialog: Dialog, target: Target, on_failure: Callable[[int, str], None],
                 contact: str) -> None:
        self.focus = focus
        self.dialog = dialog
        self.target = target
        self.on_failure = on_failure
        self.contact = contact
        self.queue: deque[tuple[str, bytes, str | None, dict[str, str]]] = deque()
        self.task: asyncio.Task | None = None
        self.closed = False
        self.sent = 0

    def push(self, method: str, body: bytes = b"", content_type: str | None = None,
             extra: dict[str, str] | None = None) -> bool:
        if self.closed:
            return False
        if len(self.queue) >= self.focus.limits.max_queue:
            self.close()
            self.on_failure(503, "too many requests waiting for this participant")
            return False
        self.queue.append((method, body, content_type, extra or {}))
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())
        return True

    def close(self) -> None:
        self.closed = True
        self.queue.clear()

    async def _run(self) -> None:
        core = self.focus.core
        while self.queue and not self.closed:
            method, body, ct, extra = self.queue.popleft()
            req = self.dialog.create_request(method, via=core.stack.via(self.target.transport), contact=self.contact,
                                             body=body, content_type=ct)
            req.headers.add("User-Agent", USER_AGENT)
            for k, v in extra.items():
                req.headers.add(k, v)
            try:
                resp = await core.stack.send_request(req, self.target).future
            except NO_ANSWER as exc:
                status, reason = exc.status, exc.reason
            except Exception as exc:  # noqa: BLE001 - the stack closed under us
                status, reason = 503, str(exc)
            else:
                status, reason = resp.status, resp.reason
            self.sent += 1
            if status in (408, 481, 503) and not self.closed:
                self.close()
                self.on_failure(status, reason)
                return


@dataclass
class Member:
    entity: str
    display_name: str | None
    joining: str                              # dialed-in, dialed-out, focus-owner
    status: str = "connected"                 # dialing-out, connected
    dialog: Dialog | None = None
    sender: DialogSender | None = None
    cpim: bool = False
    acked: bool = True
    invite_handle: Any = None                 # dial-out: the client transaction (for CANCEL)
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
    """One conference: members by entity, subscriptions by dialog id, the roster version."""

    def __init__(self, focus: "Focus", conf_id: str, uri: SipUri) -> None:
        self.focus = focus
        self.id = conf_id
        self.uri = uri                        # sip:conf-<id>@host:port
        self.members: "OrderedDict[str, Member]" = OrderedDict()
        self.subscriptions: dict[tuple[str, str, str], Subscription] = {}
        self.version = 0
        self.recent: "OrderedDict[str, None]" = OrderedDict()
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
        if transport == "tls" and self.focus.core.stack.transport.tls_server is not None:
            uri = SipUri(host=uri.host, user=uri.user, port=self.focus.core.stack.transport.tls_port, scheme=uri.scheme)
        if transport != "udp":
            uri = uri.with_params(transport=transport)
        return f"<{uri}>;isfocus"

    def seen(self, key: str) -> bool:
        if key in self.recent:
            return True
        self.recent[key] = None
        if len(self.recent) > self.focus.limits.recent_ids:
            self.recent.popitem(last=False)
        return False

    # -- roster documents ----------------------------------------------------------------------------
    def _user(self, m: Member, status: str | None = None, method: str | None = None, reason: str | None = None,
              state: str = "full") -> ci.UserInfo:
        ep = ci.EndpointInfo(entity=m.entity, status=status or m.status, joining_method=m.joining,
                             disconnection_method=method, disconnection_reason=reason, display_text=m.display_name)
        return ci.UserInfo(m.entity, state, m.display_name, (ep,))

    def full_document(self) -> bytes:
        users = tuple(self._user(m) for m in self.members.values())
        return ci.build(ci.ConferenceInfo(self.entity, self.version, "full", users, self.subject,
                                          self._connected_count(), not self.ended))

    def _connected_count(self) -> int:
        return sum(1 for m in self.members.values() if m.status == "connected")

    def announce(self, user: ci.UserInfo) -> None:
        """A partial document with one changed user, to every subscriber."""
        self.version += 1
        body = ci.build(ci.ConferenceInfo(self.entity, self.version, "partial", (user,), None,
                                          self._connected_count(), not self.ended))
        for sub in list(self.subscriptions.values()):
            self.focus.notify(self, sub, body)


class Focus:
    """The conference focus: owns conferences, answers the requests addressed to them, relays, notifies."""

    def __init__(self, core: "ProxyCore", limits: FocusLimits | None = None) -> None:
        self.core = core
        self.limits = limits or FocusLimits()
        self.conferences: dict[str, Conference] = {}
        # dialog id -> (conference, member entity or None, subscription or None)
        self.dialogs: dict[tuple[str, str, str], tuple[Conference, str | None, Subscription | None]] = {}
        self.stats = {"conferences_created": 0, "conferences_ended": 0, "relayed": 0, "notifies": 0,
                      "joins": 0, "leaves": 0, "failures": 0}

    # -- addressing ------------------------------------------------------------------------------------
    def wants(self, request: Request) -> bool:
        """Is this request for the focus (the factory, a conference, or one of our dialogs)?"""
        user = request.uri.user or ""
        if request.to.tag is not None:
            return self._dialog_key(request) in self.dialogs or (
                user.startswith(CONF_PREFIX) and self.core.is_us(request.uri))
        if user == FACTORY_USER:
            return True
        return user.startswith(CONF_PREFIX) and (user[len(CONF_PREFIX):] in self.conferences or self.core.is_us(request.uri))

    @staticmethod
    def _dialog_key(request: Request) -> tuple[str, str, str]:
        return (request.call_id, request.to.tag or "", request.from_.tag or "")

    def conference_uri(self, conf_id: str) -> SipUri:
        host = self.core.stack.host
        port = self.core.stack.port
        if self.core.stack.advertise is not None:
            host, port = self.core.stack.advertise
        return SipUri(host=bracket(host), user=CONF_PREFIX + conf_id, port=port)

    def _party_target(self, request: Request, handle: ServerHandle) -> Target | None:
        """Where the focus may send requests for the party that sent `request`: a contact registered with this
        server by its From user (ProxyCore.party_target). None: a stranger, answered 403 with no state kept,
        so that the focus never relays to an address a request merely names (an open relay otherwise)."""
        return self.core.party_target(request, handle.transport, handle.remote)

    def _refuse_stranger(self, handle: ServerHandle) -> None:
        self._reply(handle, 403, "Forbidden (only users registered with this server may use its conferences, "
                                 "from a Contact they registered)")

    # -- requests --------------------------------------------------------------------------------------
    def on_request(self, request: Request, handle: ServerHandle | None) -> None:
        method = request.method
        if handle is None:  # ACK for a 2xx
            entry = self.dialogs.get(self._dialog_key(request))
            if entry is not None and entry[1] is not None:
                m = entry[0].members.get(entry[1])
                if m is not None and not m.acked:
                    m.acked = True
            return
        if request.to.tag is not None:
            self._in_dialog(request, handle)
            return
        if method == "INVITE":
            self._invite(request, handle)
        elif method == "SUBSCRIBE":
            self._subscribe(request, handle)
        elif method == "OPTIONS":
            resp = make_response(request, 200, to_tag=new_tag())
            resp.headers.set("Allow", ALLOW)
            self.core.stack.respond(handle, resp)
        elif method == "MESSAGE":
            self.core.stack.respond(handle, make_response(request, 403, "Forbidden (join the conference with INVITE first)",
                                                    to_tag=new_tag()))
        else:
            resp = make_response(request, 405, to_tag=new_tag())
            resp.headers.set("Allow", ALLOW)
            self.core.stack.respond(handle, resp)

    def _reply(self, handle: ServerHandle, status: int, reason: str | None = None, *, tag: bool = True) -> None:
        self.core.stack.respond(handle, make_response(handle.request, status, reason, to_tag=new_tag() if tag else None))

    def _invite(self, request: Request, handle: ServerHandle) -> None:
        user = request.uri.user or ""
        if request.body:
            if request.content_type != "application/sdp":
                self._reply(handle, 415)
                return
            media = sdp.parse_message_media(request.body)  # 488 without m=message
            accepts = media.accept_types
        else:
            accepts = ()
        if not request.contacts:
            self._reply(handle, 400, "Bad Request (an INVITE needs a Contact)")
            return
        target = self._party_target(request, handle)
        if target is None:
            self._refuse_stranger(handle)
            return
        if user == FACTORY_USER:
            if len(self.conferences) >= self.limits.max_conferences:
                resp = make_response(request, 503, "Service Unavailable (too many conferences)", to_tag=new_tag())
                resp.headers.set("Retry-After", "30")
                self.core.stack.respond(handle, resp)
                return
            conf_id = random_hex(2 * 6)
            conf = Conference(self, conf_id, self.conference_uri(conf_id))
            subject = request.headers.get("Subject")
            conf.subject = subject.replace("\r", " ").replace("\n", " ")[:200] if subject else None
            self.conferences[conf_id] = conf
            self.stats["conferences_created"] += 1
            self._arm_probe(conf)
            joining = "focus-owner"
        else:
            conf = self.conferences.get(user[len(CONF_PREFIX):])
            if conf is None:
                self._reply(handle, 404, "Not Found (no such conference)")
                return
            joining = "dialed-in"
        if len(conf.members) >= self.limits.max_participants and entity_of(request.from_.uri) not in conf.members:
            self._reply(handle, 486, "Busy Here (the conference is full)")
            if not conf.members:
                self._end(conf)
            return
        local_tag = new_tag()
        dialog = Dialog.from_uas(request, local_tag)
        dialog.local_address = Address(conf.uri, "Conference")
        entity = entity_of(request.from_.uri)
        old = conf.members.get(entity)
        if old is not None:  # the same user joins again (a restarted client): the new dialog replaces the old
            self._drop_member(conf, old, announce=False, bye=True, end_if_empty=False)
        m = Member(entity, request.from_.display_name, joining, dialog=dialog,
                   cpim=cpim.CONTENT_TYPE in accepts or "*" in accepts, acked=False, server_handle=handle)
        m.sender = DialogSender(self, dialog, target,
                                lambda s, r, c=conf, e=entity: self._failed(c, e, s, r), conf.contact(handle.transport))
        conf.members[entity] = m
        self.dialogs[dialog.id] = (conf, entity, None)
        resp = make_response(request, 200, to_tag=local_tag, body=sdp.build(self.core.stack.host, self.core.stack.port, accept_types=ACCEPT_TYPES),
                             content_type="application/sdp")
        resp.headers.set("Contact", conf.contact(handle.transport))
        resp.headers.set("Allow", ALLOW)
        resp.headers.set("Supported", "replaces")
        self.core.stack.respond(handle, resp)
        self.core.stack.retransmit_2xx(handle, resp, lambda: m.acked or conf.members.get(m.entity) is not m,
                                       lambda: self._failed(conf, m.entity, 408, "no ACK for the 200 OK"))
        self.stats["joins"] += 1
        conf.announce(conf._user(m))

    def _in_dialog(self, request: Request, handle: ServerHandle) -> None:
        entry = self.dialogs.get(self._dialog_key(request))
        if entry is None:
            self._reply(handle, 481, tag=False)
            return
        conf, entity, sub = entry
        method = request.method
        if sub is not None:
            if method == "SUBSCRIBE":
                if not sub.dialog.accept_remote_cseq(request):
                    self._reply(handle, 500, "Server Internal Error (CSeq out of order)", tag=False)
                    return
                self._refresh_subscription(conf, sub, request, handle)
            else:
                self._reply(handle, 405 if method != "BYE" else 481, tag=False)
            return
        m = conf.members.get(entity or "")
        if m is None or m.dialog is None:
            self._reply(handle, 481, tag=False)
            return
        if not m.dialog.accept_remote_cseq(request):
            self._reply(handle, 500, "Server Internal Error (CSeq out of order)", tag=False)
            return
        if not m.acked:  # a request in the dialog shows the peer got our 200
            m.acked = True
        if method == "MESSAGE":
            self._reply(handle, self._relay(conf, m, request), tag=False)
        elif method == "BYE":
            self._reply(handle, 200, tag=False)
            self._drop_member(conf, m, method="departed")
        elif method == "REFER":
            self._refer(conf, m, request, handle)
        elif method == "INVITE":  # re-INVITE: answer with our SDP
            resp = make_response(request, 200, body=sdp.build(self.core.stack.host, self.core.stack.port, accept_types=ACCEPT_TYPES),
                                 content_type="application/sdp")
            resp.headers.set("Contact", conf.contact(handle.transport))
            self.core.stack.respond(handle, resp)
        elif method in ("OPTIONS", "INFO", "NOTIFY", "UPDATE"):
            resp = make_response(request, 200)
            if method == "OPTIONS":
                resp.headers.set("Allow", ALLOW)
            self.core.stack.respond(handle, resp)
        else:
            resp = make_response(request, 405)
            resp.headers.set("Allow", ALLOW)
            self.core.stack.respond(handle, resp)

    # -- relaying -----------------------------------------------------------------------------------------
    def _relay(self, conf: Conference, sender: Member, request: Request) -> int:
        ct_full = request.headers.get("Content-Type") or "text/plain"
        ct = (request.content_type or "text/plain").lower()
        if not (ct.startswith("text/") or ct == ic.CONTENT_TYPE):
            return 415
        msg_id = request.headers.get("Imdn-Message-ID")
        if msg_id and conf.seen(f"{sender.entity} {msg_id}"):
            return 200  # a retry of a message we relayed already
        msg_id = msg_id or random_hex(2 * 6)
        wrapped: bytes | None = None
        extra = {"Imdn-Message-ID": msg_id}
        for m in list(conf.members.values()):
            if m is sender or m.status != "connected" or m.sender is None:
                continue
            if m.cpim:
                if wrapped is None:
                    wrapped = cpim.wrap(sender.entity, conf.entity, request.body, ct_full, message_id=msg_id,
                                        display_name=sender.display_name)
                m.sender.push("MESSAGE", wrapped, cpim.CONTENT_TYPE, extra)
            else:
                m.sender.push("MESSAGE", request.body, ct_full, extra)
            self.stats["relayed"] += 1
            conf.relayed += 1
        return 200

    # -- invitations ----------------------------------------------------------------------------------------
    def _refer(self, conf: Conference, referrer: Member, request: Request, handle: ServerHandle) -> None:
        refer_to = request.headers.get("Refer-To")
        try:
            target = Address.parse(refer_to or "").uri
        except RemoteProtocolError:
            self._reply(handle, 400, "Bad Request (Refer-To is not a SIP address)", tag=False)
            return
        if target.scheme not in ("sip", "sips") or not target.user:
            self._reply(handle, 400, "Bad Request (Refer-To needs a SIP URI with a user)", tag=False)
            return
        entity = entity_of(target)
        aor = target.aor
        if self.core.is_us(target):
            aor = self.core.registrar.aor_for_user(target.user) or aor
        bindings = self.core.registrar.lookup(aor, time.monotonic())
        if not bindings:  # never an open relay: the focus dials out only to users registered here
            if aor in self.core.registrar.known:
                self._reply(handle, 480, "Temporarily Unavailable (not registered now)", tag=False)
            else:
                self._reply(handle, 404, "Not Found (no such user here)", tag=False)
            return
        if entity in conf.members:
            resp = make_response(request, 202)
            resp.headers.set("Refer-Sub", "false")
            self.core.stack.respond(handle, resp)
            return
        if len(conf.members) >= self.limits.max_participants:
            self._reply(handle, 486, "Busy Here (the conference is full)", tag=False)
            return
        resp = make_response(request, 202)
        no_sub = (request.headers.get("Refer-Sub") or "").strip().lower() == "false"
        if no_sub:
            resp.headers.set("Refer-Sub", "false")
        self.core.stack.respond(handle, resp)
        if not no_sub and referrer.sender is not None:  # RFC 3515 implicit subscription: end it at once
            referrer.sender.push("NOTIFY", b"SIP/2.0 100 Trying\r\n", "message/sipfrag;version=2.0",
                                 {"Event": "refer", "Subscription-State": "terminated;reason=noresource"})
        replaces = None
        for part in target.headers.split("&") if target.headers else []:
            name, _, value = part.partition("=")
            if name.lower() == "replaces":
                replaces = unquote(value)
        m = Member(entity, None, "dialed-out", status="dialing-out")
        conf.members[entity] = m
        conf.announce(conf._user(m))
        asyncio.ensure_future(self._dial_out(conf, m, target, bindings[0], referrer, replaces))

    async def _dial_out(self, conf: Conference, m: Member, target: SipUri, binding: Any, referrer: Member,
                        replaces: str | None) -> None:
        core = self.core
        dest = core.binding_target(binding)
        h = Headers()
        h.add("Via", core.stack.via(dest.transport))
        h.add("Max-Forwards", "70")
        h.add("From", f'"Conference" <{conf.uri}>;tag={new_tag()}')
        h.add("To", f"<{entity_of(target)}>")
        h.add("Call-ID", new_call_id(core.stack.host))
        h.add("CSeq", "1 INVITE")
        h.add("Contact", conf.contact(dest.transport))
        ref_name = f'"{referrer.display_name}" ' if referrer.display_name else ""
        h.add("Referred-By", f"{ref_name}<{referrer.entity}>")
        if replaces:
            h.add("Replaces", replaces)
        if conf.subject:
            h.add("Subject", conf.subject)
        h.add("Allow", ALLOW)
        h.add("Supported", "replaces")
        h.add("User-Agent", USER_AGENT)
        h.add("Content-Type", "application/sdp")
        invite = Request("INVITE", binding.contact, h, sdp.build(core.stack.host, core.stack.port, accept_types=ACCEPT_TYPES))
        handle = core.stack.send_request(invite, dest)
        m.invite_handle = handle
        loop = asyncio.get_running_loop()
        cancel_timer = loop.call_later(self.limits.dial_timeout, lambda: self._cancel_dial(handle))
        try:
            resp = await handle.future
        except NO_ANSWER as exc:
            resp = Response(exc.status, exc.reason)
        finally:
            cancel_timer.cancel()
            m.invite_handle = None
        if conf.members.get(m.entity) is not m or conf.ended:
            if 200 <= resp.status < 300:  # the conference ended (or they were dropped) while ringing
                self.core.stack.ack_and_bye(invite, resp, dest)
            return
        if not 200 <= resp.status < 300:
            method = "busy" if resp.status in (486, 600) else "failed"
            self._drop_member(conf, m, method=method, reason=f"{resp.status} {resp.reason}")
            return
        try:
            dialog = Dialog.from_uac(invite, resp)
        except LocalProtocolError:
            self._drop_member(conf, m, method="failed", reason="bad 200 OK (no Contact or To tag)")
            return
        ack = dialog.create_request("ACK", via=core.stack.via(dest.transport), cseq=1)
        ack_bytes = bytes(ack)
        core.stack.send_bytes(ack_bytes, dest)
        handle.ack = ack_bytes
        accepts: tuple[str, ...] = ()
        if resp.body:
            try:
                accepts = sdp.parse_message_media(resp.body).accept_types
            except RemoteProtocolError:
                accepts = ()
        m.dialog = dialog
        m.cpim = cpim.CONTENT_TYPE in accepts or "*" in accepts
        m.display_name = next((a.display_name for a in (resp.contacts[:1] + [resp.to]) if a.display_name), None)
        m.sender = DialogSender(self, dialog, dest, lambda s, r, c=conf, e=m.entity: self._failed(c, e, s, r),
                                conf.contact(dest.transport))
        m.status = "connected"
        self.dialogs[dialog.id] = (conf, m.entity, None)
        self.stats["joins"] += 1
        conf.announce(conf._user(m))

    def _cancel_dial(self, handle: Any) -> None:
        if not handle.future.done():
            self.core.stack.send_request(make_cancel(handle.txn.request), handle.target)

    # -- subscriptions --------------------------------------------------------------------------------------
    def _subscribe(self, request: Request, handle: ServerHandle) -> None:
        user = request.uri.user or ""
        conf = self.conferences.get(user[len(CONF_PREFIX):])
        if conf is None:
            self._reply(handle, 404, "Not Found (no such conference)")
            return
        event = (request.headers.get("Event") or "").split(";")[0].strip().lower()
        if event != ci.EVENT:
            resp = make_response(request, 489, "Bad Event", to_tag=new_tag())
            resp.headers.set("Allow-Events", ci.EVENT)
            self.core.stack.respond(handle, resp)
            return
        entity = entity_of(request.from_.uri)
        if entity not in conf.members:
            self._reply(handle, 403, "Forbidden (only participants may subscribe to the roster)")
            return
        if len(conf.subscriptions) >= self.limits.max_subscriptions:
            self._reply(handle, 503, "Service Unavailable (too many subscriptions)")
            return
        if not request.contacts:
            self._reply(handle, 400, "Bad Request (a SUBSCRIBE needs a Contact)")
            return
        target = self._party_target(request, handle)
        if target is None:
            self._refuse_stranger(handle)
            return
        expires = self._expires(request)
        local_tag = new_tag()
        dialog = Dialog.from_uas(request, local_tag)
        dialog.local_address = Address(conf.uri, "Conference")
        key = dialog.id
        sub = Subscription(entity, dialog, None, time.monotonic() + expires)  # type: ignore[arg-type]
        sub.sender = DialogSender(self, dialog, target, lambda s, r, c=conf, k=key: self._subscription_failed(c, k, s, r),
                                  conf.contact(handle.transport))
        resp = make_response(request, 200, to_tag=local_tag)
        resp.headers.set("Expires", str(expires))
        resp.headers.set("Contact", conf.contact(handle.transport))
        self.core.stack.respond(handle, resp)
        if expires == 0:  # a fetch: one NOTIFY, terminated
            self.notify(conf, sub, conf.full_document(), terminated="timeout")
            return
        conf.subscriptions[key] = sub
        self.dialogs[key] = (conf, None, sub)
        self._arm_expiry(conf, sub, expires)
        self.notify(conf, sub, conf.full_document())

    def _expires(self, request: Request) -> int:
        e = request.expires
        if e is None:
            e = self.limits.default_expires
        return max(0, min(e, self.limits.max_expires))

    def _refresh_subscription(self, conf: Conference, sub: Subscription, request: Request, handle: ServerHandle) -> None:
        expires = self._expires(request)
        resp = make_response(request, 200)
        resp.headers.set("Expires", str(expires))
        resp.headers.set("Contact", conf.contact(handle.transport))
        self.core.stack.respond(handle, resp)
        if expires == 0:
            self._end_subscription(conf, sub, "timeout")
            return
        sub.expires_at = time.monotonic() + expires
        self._arm_expiry(conf, sub, expires)
        self.notify(conf, sub, conf.full_document())

    def _arm_expiry(self, conf: Conference, sub: Subscription, expires: float) -> None:
        if sub.timer is not None:
            sub.timer.cancel()
        sub.timer = asyncio.get_running_loop().call_later(expires, lambda: self._end_subscription(conf, sub, "timeout"))

    def notify(self, conf: Conference, sub: Subscription, body: bytes, terminated: str | None = None) -> None:
        if terminated:
            state = f"terminated;reason={terminated}"
        else:
            state = f"active;expires={max(1, int(sub.expires_at - time.monotonic()))}"
        self.stats["notifies"] += 1
        sub.sender.push("NOTIFY", body, ci.CONTENT_TYPE, {"Event": ci.EVENT, "Subscription-State": state})

    def _end_subscription(self, conf: Conference, sub: Subscription, reason: str) -> None:
        key = sub.dialog.id
        if conf.subscriptions.pop(key, None) is None:
            return
        self.dialogs.pop(key, None)
        if sub.timer is not None:
            sub.timer.cancel()
        self.notify(conf, sub, conf.full_document(), terminated=reason)

    def _subscription_failed(self, conf: Conference, key: tuple[str, str, str], status: int, reason: str) -> None:
        sub = conf.subscriptions.pop(key, None)
        self.dialogs.pop(key, None)
        if sub is None:
            return
        if sub.timer is not None:
            sub.timer.cancel()
        m = conf.members.get(sub.entity)
        if m is not None and status in (408, 503):  # the subscriber vanished: so did the participant
            self._failed(conf, m.entity, status, reason)

    # -- leaving ---------------------------------------------------------------------------------------------
    def _failed(self, conf: Conference, entity: str, status: int, reason: str) -> None:
        m = conf.members.get(entity)
        if m is None:
            return
        self.stats["failures"] += 1
        log.info("conference %s: %s dropped (%s %s)", conf.id, entity, status, reason)
        self._drop_member(conf, m, method="failed", reason=f"{status} {reason}", bye=status != 481)

    def _drop_member(self, conf: Conference, m: Member, *, method: str = "departed", reason: str | None = None,
                     announce: bool = True, bye: bool = False, end_if_empty: bool = True) -> None:
        if conf.members.get(m.entity) is not m:
            return
        del conf.members[m.entity]
        self.stats["leaves"] += 1
        if m.sender is not None:
            m.sender.close()
        if m.dialog is not None:
            self.dialogs.pop(m.dialog.id, None)
            if bye and m.status == "connected":  # best effort: tell a participant we drop
                target = m.sender.target if m.sender is not None else None
                if target is not None:
                    req = m.dialog.create_request("BYE", via=self.core.stack.via(target.transport))
                    self.core.stack.send_request(req, target)
        if m.invite_handle is not None:
            self._cancel_dial(m.invite_handle)
        for key, sub in list(conf.subscriptions.items()):
            if sub.entity == m.entity:
                self._end_subscription(conf, sub, "noresource")
        if announce:
            conf.announce(conf._user(m, status="disconnected", method=method, reason=reason))
        if not conf.members and end_if_empty:
            self._end(conf)

    def _end(self, conf: Conference) -> None:
        if conf.ended:
            return
        conf.ended = True
        for m in list(conf.members.values()):
            self._drop_member(conf, m, announce=False, bye=True)
        for sub in list(conf.subscriptions.values()):
            self._end_subscription(conf, sub, "noresource")
        if conf.probe is not None:
            conf.probe.cancel()
        self.conferences.pop(conf.id, None)
        self.stats["conferences_ended"] += 1

    def _arm_probe(self, conf: Conference) -> None:
        if self.limits.probe_interval <= 0:
            return

        def probe() -> None:
            if conf.ended or self.core.stack.closed:
                return
            for m in list(conf.members.values()):
                if m.status == "connected" and m.sender is not None and not m.sender.queue:
                    m.sender.push("OPTIONS")
            conf.probe = asyncio.get_running_loop().call_later(self.limits.probe_interval, probe)
        conf.probe = asyncio.get_running_loop().call_later(self.limits.probe_interval, probe)

    def close(self) -> None:
        for conf in list(self.conferences.values()):
            conf.ended = True
            if conf.probe is not None:
                conf.probe.cancel()
            for sub in conf.subscriptions.values():
                if sub.timer is not None:
                    sub.timer.cancel()
                sub.sender.close()
            for m in conf.members.values():
                if m.sender is not None:
                    m.sender.close()
        self.conferences.clear()
        self.dialogs.clear()

    def snapshot(self) -> dict[str, list[str]]:
        """Conference URI -> entities of its participants (tests, notebooks)."""
        return {str(c.uri): [f"{m.entity} ({m.status})" for m in c.members.values()] for c in self.conferences.values()}
