"""Inviting someone into a conference (RFC 4579 §5.5): a participant sends an in-dialog REFER with the invitee in
`Refer-To` (and `Refer-Sub: false`, RFC 4488); the focus answers 202 and sends the INVITE itself, From the
conference URI, `Contact: <conf URI>;isfocus`, `Referred-By` the referrer (RFC 3892), and a `Replaces` copied
from the Refer-To URI (RFC 3891) when a two-party session is being escalated. Never an open relay: the focus
dials out only to users registered with its server (404/480 on the REFER otherwise), at a contact they
registered. A dial-out nobody answers is CANCELled after `FocusLimits.dial_timeout`."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import unquote

from ...core.stack import USER_AGENT, ClientHandle, ServerHandle
from ...errors import NO_ANSWER
from ...im import cpim
from ...sip import sdp
from ...sip.dialog import Dialog
from ...sip.errors import LocalProtocolError, RemoteProtocolError
from ...sip.message import Request, Response, make_request, new_call_id, new_tag
from ...sip.transaction import make_cancel
from ...sip.uri import Address, SipUri
from ..registrar import Binding
from .host import FocusParts
from .sender import DialogSender
from .state import ACCEPT_TYPES, ALLOW, Conference, Member, entity_of


class DialOut:
    """The REFERs of one focus's participants and the INVITEs it sends for them."""

    def __init__(self, focus: FocusParts) -> None:
        self.focus = focus

    def refer(self, conf: Conference, referrer: Member, request: Request, handle: ServerHandle) -> None:
        focus = self.focus
        host, stack = focus.host, focus.host.stack
        try:
            target = Address.parse(request.headers.get("Refer-To") or "").uri
        except RemoteProtocolError:
            stack.reply(handle, 400, "Bad Request (Refer-To is not a SIP address)", tag=False)
            return
        if target.scheme not in ("sip", "sips") or not target.user:
            stack.reply(handle, 400, "Bad Request (Refer-To needs a SIP URI with a user)", tag=False)
            return
        entity = entity_of(target)
        aor = target.aor
        if host.is_us(target):
            aor = host.registrar.aor_for_user(target.user) or aor
        bindings = host.registrar.lookup(aor, time.monotonic())
        if not bindings:  # never an open relay: the focus dials out only to users registered here
            if aor in host.registrar.known:
                stack.reply(handle, 480, "Temporarily Unavailable (not registered now)", tag=False)
            else:
                stack.reply(handle, 404, "Not Found (no such user here)", tag=False)
            return
        if entity in conf.members:
            stack.reply(handle, 202, tag=False, headers={"Refer-Sub": "false"})
            return
        if len(conf.members) >= focus.limits.max_participants:
            stack.reply(handle, 486, "Busy Here (the conference is full)", tag=False)
            return
        no_sub = (request.headers.get("Refer-Sub") or "").strip().lower() == "false"
        stack.reply(handle, 202, tag=False, headers={"Refer-Sub": "false"} if no_sub else None)
        if not no_sub and referrer.sender is not None:  # RFC 3515 implicit subscription: end it at once
            referrer.sender.push(
                "NOTIFY",
                b"SIP/2.0 100 Trying\r\n",
                "message/sipfrag;version=2.0",
                {"Event": "refer", "Subscription-State": "terminated;reason=noresource"},
            )
        replaces = None
        for part in target.headers.split("&") if target.headers else []:
            name, _, value = part.partition("=")
            if name.lower() == "replaces":
                replaces = unquote(value)
        m = Member(entity, None, "dialed-out", status="dialing-out")
        conf.members[entity] = m
        focus.roster.announce(conf, conf.user_info(m))
        asyncio.ensure_future(self._dial(conf, m, target, bindings[0], referrer, replaces))

    async def _dial(
        self, conf: Conference, m: Member, target: SipUri, binding: Binding, referrer: Member, replaces: str | None
    ) -> None:
        focus = self.focus
        stack = focus.host.stack
        dest = focus.host.binding_target(binding)
        headers: list[tuple[str, str]] = []
        ref_name = f'"{referrer.display_name}" ' if referrer.display_name else ""
        headers.append(("Referred-By", f"{ref_name}<{referrer.entity}>"))
        if replaces:
            headers.append(("Replaces", replaces))
        if conf.subject:
            headers.append(("Subject", conf.subject))
        headers += [("Allow", ALLOW), ("Supported", "replaces"), ("User-Agent", USER_AGENT)]
        invite = make_request(
            "INVITE",
            binding.contact,
            via=stack.via(dest.transport),
            from_=f'"Conference" <{conf.uri}>;tag={new_tag()}',
            to=f"<{entity_of(target)}>",
            call_id=new_call_id(stack.host),
            cseq=1,
            contact=conf.contact(dest.transport),
            headers=headers,
            body=sdp.build(stack.host, stack.port, accept_types=ACCEPT_TYPES),
            content_type="application/sdp",
        )
        handle = stack.send_request(invite, dest)
        m.invite_handle = handle
        cancel_timer = asyncio.get_running_loop().call_later(focus.limits.dial_timeout, lambda: self.cancel(handle))
        try:
            resp = await handle.future
        except NO_ANSWER as exc:
            resp = Response(exc.status, exc.reason)
        finally:
            cancel_timer.cancel()
            m.invite_handle = None
        if conf.members.get(m.entity) is not m or conf.ended:
            if 200 <= resp.status < 300:  # the conference ended (or they were dropped) while ringing
                stack.ack_and_bye(invite, resp, dest)
            return
        if not 200 <= resp.status < 300:
            method = "busy" if resp.status in (486, 600) else "failed"
            focus.drop_member(conf, m, method=method, reason=f"{resp.status} {resp.reason}")
            return
        try:
            dialog = Dialog.from_uac(invite, resp)
        except (LocalProtocolError, RemoteProtocolError):
            focus.drop_member(conf, m, method="failed", reason="bad 200 OK (no Contact or To tag)")
            return
        ack_bytes = bytes(dialog.create_request("ACK", via=stack.via(dest.transport), cseq=1))
        stack.send_bytes(ack_bytes, dest)
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
        m.sender = DialogSender(
            stack,
            dialog,
            dest,
            lambda s, r, c=conf, e=m.entity: focus.failed(c, e, s, r),
            conf.contact(dest.transport),
            max_queue=focus.limits.max_queue,
        )
        m.status = "connected"
        focus.dialogs[dialog.id] = (conf, m.entity, None)
        focus.stats["joins"] += 1
        focus.roster.announce(conf, conf.user_info(m))

    def cancel(self, handle: Any) -> None:
        """CANCEL a dial-out that is still ringing."""
        if isinstance(handle, ClientHandle) and not handle.future.done():
            self.focus.host.stack.send_request(make_cancel(handle.txn.request), handle.target)
