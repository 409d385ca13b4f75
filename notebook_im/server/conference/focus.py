"""The focus: which requests are its own, creating and joining conferences, the in-dialog requests of their
participants, relaying their messages, and dropping participants who leave or vanish.

Wire flow (see docs/conferences.md):

- **Create**: INVITE `sip:conference-factory@<server>` (SDP `m=message`). The focus creates a conference and
  answers 200 with `Contact: <sip:conf-<id>@<server>>;isfocus` (RFC 4579 §5.4): the conference URI.
- **Join**: INVITE the conference URI (how SIPp or any other client joins). 200 + `;isfocus` Contact.
  Creating, joining and subscribing take a user registered with the server, at a contact they registered
  (with `users=`, authenticated too); anybody else gets 403 and leaves no state.
- **Invite others**: in-dialog REFER (dialout.py).
- **Relay**: each MESSAGE (text or RFC 3994 composing) from a participant is answered 200 by the focus and
  relayed in-dialog to every other connected participant, in the order received, one request at a time per
  receiver (sender.py), wrapped in `message/cpim` (RFC 3862) whose `From:` is the original sender, for
  participants whose SDP `a=accept-types` lists message/cpim; others get the bare body.
- **Roster**: SUBSCRIBE/NOTIFY of `Event: conference` (roster.py).
- **Leave / vanish**: BYE removes a participant. A relayed MESSAGE, NOTIFY or the periodic OPTIONS probe that
  times out (or gets 481/408) removes the participant too (disconnection-method `failed`); the others are
  told. The conference ends when nobody is left. Every queue, table and timer is bounded.
"""

from __future__ import annotations

import asyncio
import logging

from ...core.stack import ServerHandle, reason_phrase
from ...im import cpim
from ...im import iscomposing as ic
from ...sip import coding, sdp
from ...sip.dialog import Dialog
from ...sip.errors import RemoteProtocolError
from ...sip.message import Request, make_response, new_tag, random_hex
from ...sip.uri import Address, SipUri, bracket
from .dialout import DialOut
from .host import FocusHost
from .roster import Roster
from .sender import DialogSender
from .state import (
    ACCEPT_TYPES,
    ALLOW,
    CONF_PREFIX,
    FACTORY_USER,
    Conference,
    FocusLimits,
    Member,
    Subscription,
    entity_of,
)

log = logging.getLogger("notebook_im.focus")

DialogEntry = tuple[Conference, "str | None", "Subscription | None"]


class Focus:
    """The conference focus: owns the conferences, answers the requests addressed to them, relays, notifies."""

    def __init__(self, host: FocusHost, limits: FocusLimits | None = None) -> None:
        self.host = host
        self.limits = limits or FocusLimits()
        self.conferences: dict[str, Conference] = {}
        # dialog id -> (conference, member entity or None, subscription or None)
        self.dialogs: dict[tuple[str, str, str], DialogEntry] = {}
        self.stats = {
            "conferences_created": 0,
            "conferences_ended": 0,
            "relayed": 0,
            "notifies": 0,
            "joins": 0,
            "leaves": 0,
            "failures": 0,
        }
        self.roster = Roster(self)
        self.dialout = DialOut(self)

    # -- addressing ------------------------------------------------------------------------------------
    def wants(self, request: Request) -> bool:
        """Is this request for the focus (the factory, a conference, or one of our dialogs)?"""
        user = request.uri.user or ""
        if request.to.tag is not None:
            return self._dialog_key(request) in self.dialogs or (
                user.startswith(CONF_PREFIX) and self.host.is_us(request.uri)
            )
        if user == FACTORY_USER:
            return True
        return user.startswith(CONF_PREFIX) and (
            user[len(CONF_PREFIX) :] in self.conferences or self.host.is_us(request.uri)
        )

    @staticmethod
    def _dialog_key(request: Request) -> tuple[str, str, str]:
        return (request.call_id, request.to.tag or "", request.from_.tag or "")

    def conference_uri(self, conf_id: str) -> SipUri:
        stack = self.host.stack
        host, port = stack.host, stack.port
        if stack.advertise is not None:
            host, port = stack.advertise
        return SipUri(host=bracket(host), user=CONF_PREFIX + conf_id, port=port)

    def refuse_stranger(self, handle: ServerHandle) -> None:
        self.host.stack.reply(
            handle,
            403,
            "Forbidden (only users registered with this server may use its "
            "conferences, from a Contact they registered)",
        )

    def _conference_of(self, request: Request) -> Conference | None:
        user = request.uri.user or ""
        return self.conferences.get(user[len(CONF_PREFIX) :])

    # -- requests --------------------------------------------------------------------------------------
    def on_request(self, request: Request, handle: ServerHandle | None) -> None:
        method = request.method
        stack = self.host.stack
        if handle is None:  # ACK for a 2xx
            entry = self.dialogs.get(self._dialog_key(request))
            if entry is not None and entry[1] is not None:
                m = entry[0].members.get(entry[1])
                if m is not None and not m.acked:
                    m.acked = True
            return
        if request.body and "content-encoding" in request.headers.fields:
            # the focus reads and re-wraps what members send it, as a user agent does: a compressed body is
            # undone first (it used to be relayed compressed without its Content-Encoding, as garbage text)
            try:
                coding.decode(request)
            except RemoteProtocolError as exc:
                extra = {"Accept-Encoding": coding.ACCEPT_ENCODING} if exc.status_code == 415 else None
                stack.reply(handle, exc.status_code, reason_phrase(exc), tag=request.to.tag is None, headers=extra)
                return
        if request.to.tag is not None:
            self._in_dialog(request, handle)
            return
        if method == "INVITE":
            self._invite(request, handle)
        elif method == "SUBSCRIBE":
            conf = self._conference_of(request)
            if conf is None:
                stack.reply(handle, 404, "Not Found (no such conference)")
            else:
                self.roster.subscribe(conf, request, handle)
        elif method == "OPTIONS":
            stack.reply(handle, 200, headers={"Allow": ALLOW})
        elif method == "MESSAGE":
            stack.reply(handle, 403, "Forbidden (join the conference with INVITE first)")
        else:
            stack.reply(handle, 405, headers={"Allow": ALLOW})

    def _invite(self, request: Request, handle: ServerHandle) -> None:
        stack = self.host.stack
        user = request.uri.user or ""
        if request.body:
            if request.content_type != "application/sdp":
                stack.reply(handle, 415)
                return
            accepts = sdp.parse_message_media(request.body).accept_types  # 488 without m=message
        else:
            accepts = ()
        if not request.contacts:
            stack.reply(handle, 400, "Bad Request (an INVITE needs a Contact)")
            return
        target = self.host.party_target(request, handle.transport, handle.remote)
        if target is None:  # a stranger: no conference is created, nothing is kept
            self.refuse_stranger(handle)
            return
        if user == FACTORY_USER:
            if len(self.conferences) >= self.limits.max_conferences:
                stack.reply(handle, 503, "Service Unavailable (too many conferences)", headers={"Retry-After": "30"})
                return
            conf_id = random_hex(2 * 6)
            transport = stack.transport
            conf = Conference(
                conf_id,
                self.conference_uri(conf_id),
                recent_ids=self.limits.recent_ids,
                tls_port=transport.tls_port if transport.tls_server is not None else 0,
            )
            subject = request.headers.get("Subject")
            conf.subject = subject.replace("\r", " ").replace("\n", " ")[:200] if subject else None
            self.conferences[conf_id] = conf
            self.stats["conferences_created"] += 1
            self._arm_probe(conf)
            joining = "focus-owner"
        else:
            found = self._conference_of(request)
            if found is None:
                stack.reply(handle, 404, "Not Found (no such conference)")
                return
            conf, joining = found, "dialed-in"
        entity = entity_of(request.from_.uri)
        if len(conf.members) >= self.limits.max_participants and entity not in conf.members:
            stack.reply(handle, 486, "Busy Here (the conference is full)")
            if not conf.members:
                self.end(conf)
            return
        local_tag = new_tag()
        dialog = Dialog.from_uas(request, local_tag)
        dialog.local_address = Address(conf.uri, "Conference")
        old = conf.members.get(entity)
        if old is not None:  # the same user joins again (a restarted client): the new dialog replaces the old
            self.drop_member(conf, old, announce=False, bye=True, end_if_empty=False)
        m = Member(
            entity,
            request.from_.display_name,
            joining,
            dialog=dialog,
            cpim=cpim.CONTENT_TYPE in accepts or "*" in accepts,
            acked=False,
            server_handle=handle,
        )
        m.sender = DialogSender(
            stack,
            dialog,
            target,
            lambda s, r, c=conf, e=entity: self.failed(c, e, s, r),
            conf.contact(handle.transport),
            max_queue=self.limits.max_queue,
        )
        conf.members[entity] = m
        self.dialogs[dialog.id] = (conf, entity, None)
        resp = make_response(
            request,
            200,
            to_tag=local_tag,
            body=sdp.build(stack.host, stack.port, accept_types=ACCEPT_TYPES),
            content_type="application/sdp",
        )
        resp.headers.set("Contact", conf.contact(handle.transport))
        resp.headers.set("Allow", ALLOW)
        resp.headers.set("Supported", "replaces")
        stack.respond(handle, resp)
        stack.retransmit_2xx(
            handle,
            resp,
            lambda: m.acked or conf.members.get(m.entity) is not m,
            lambda: self.failed(conf, m.entity, 408, "no ACK for the 200 OK"),
        )
        self.stats["joins"] += 1
        self.roster.announce(conf, conf.user_info(m))

    def _in_dialog(self, request: Request, handle: ServerHandle) -> None:
        stack = self.host.stack
        entry = self.dialogs.get(self._dialog_key(request))
        if entry is None:
            stack.reply(handle, 481, tag=False)
            return
        conf, entity, sub = entry
        method = request.method
        if sub is not None:
            if method == "SUBSCRIBE":
                self.roster.refresh(conf, sub, request, handle)
            else:
                stack.reply(handle, 405 if method != "BYE" else 481, tag=False)
            return
        m = conf.members.get(entity or "")
        if m is None or m.dialog is None:
            stack.reply(handle, 481, tag=False)
            return
        if not m.dialog.accept_remote_cseq(request):
            stack.reply(handle, 500, "Server Internal Error (CSeq out of order)", tag=False)
            return
        if not m.acked:  # a request in the dialog shows the peer got our 200
            m.acked = True
        if method == "MESSAGE":
            stack.reply(handle, self._relay(conf, m, request), tag=False)
        elif method == "BYE":
            stack.reply(handle, 200, tag=False)
            self.drop_member(conf, m, method="departed")
        elif method == "REFER":
            self.dialout.refer(conf, m, request, handle)
        elif method == "INVITE":  # re-INVITE: answer with our SDP
            resp = make_response(
                request,
                200,
                body=sdp.build(stack.host, stack.port, accept_types=ACCEPT_TYPES),
                content_type="application/sdp",
            )
            resp.headers.set("Contact", conf.contact(handle.transport))
            stack.respond(handle, resp)
        elif method in ("OPTIONS", "INFO", "NOTIFY", "UPDATE"):
            stack.reply(handle, 200, tag=False, headers={"Allow": ALLOW} if method == "OPTIONS" else None)
        else:
            stack.reply(handle, 405, tag=False, headers={"Allow": ALLOW})

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
                    wrapped = cpim.wrap(
                        sender.entity,
                        conf.entity,
                        request.body,
                        ct_full,
                        message_id=msg_id,
                        display_name=sender.display_name,
                    )
                m.sender.push("MESSAGE", wrapped, cpim.CONTENT_TYPE, extra)
            else:
                m.sender.push("MESSAGE", request.body, ct_full, extra)
            self.stats["relayed"] += 1
            conf.relayed += 1
        return 200

    # -- leaving ---------------------------------------------------------------------------------------------
    def failed(self, conf: Conference, entity: str, status: int, reason: str) -> None:
        """A participant stopped answering (a relayed request timed out, or got 408/481/503): drop them."""
        m = conf.members.get(entity)
        if m is None:
            return
        self.stats["failures"] += 1
        log.info("conference %s: %s dropped (%s %s)", conf.id, entity, status, reason)
        self.drop_member(conf, m, method="failed", reason=f"{status} {reason}", bye=status != 481)

    def drop_member(
        self,
        conf: Conference,
        m: Member,
        *,
        method: str = "departed",
        reason: str | None = None,
        announce: bool = True,
        bye: bool = False,
        end_if_empty: bool = True,
    ) -> None:
        if conf.members.get(m.entity) is not m:
            return
        del conf.members[m.entity]
        self.stats["leaves"] += 1
        stack = self.host.stack
        if m.sender is not None:
            m.sender.close()
        if m.dialog is not None:
            self.dialogs.pop(m.dialog.id, None)
            if bye and m.status == "connected":  # best effort: tell a participant we drop
                target = m.sender.target if m.sender is not None else None
                if target is not None:
                    stack.send_request(m.dialog.create_request("BYE", via=stack.via(target.transport)), target)
        if m.invite_handle is not None:
            self.dialout.cancel(m.invite_handle)
        for sub in list(conf.subscriptions.values()):
            if sub.entity == m.entity:
                self.roster.end(conf, sub, "noresource")
        if announce:
            self.roster.announce(conf, conf.user_info(m, status="disconnected", method=method, reason=reason))
        if not conf.members and end_if_empty:
            self.end(conf)

    def end(self, conf: Conference) -> None:
        if conf.ended:
            return
        conf.ended = True
        for m in list(conf.members.values()):
            self.drop_member(conf, m, announce=False, bye=True)
        for sub in list(conf.subscriptions.values()):
            self.roster.end(conf, sub, "noresource")
        if conf.probe is not None:
            conf.probe.cancel()
        self.conferences.pop(conf.id, None)
        self.stats["conferences_ended"] += 1

    def _arm_probe(self, conf: Conference) -> None:
        if self.limits.probe_interval <= 0:
            return

        def probe() -> None:
            if conf.ended or self.host.stack.closed:
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
            self.roster.close(conf)
            for m in conf.members.values():
                if m.sender is not None:
                    m.sender.close()
        self.conferences.clear()
        self.dialogs.clear()

    def snapshot(self) -> dict[str, list[str]]:
        """Conference URI -> entities of its participants (tests, notebooks)."""
        return {str(c.uri): [f"{m.entity} ({m.status})" for m in c.members.values()] for c in self.conferences.values()}
