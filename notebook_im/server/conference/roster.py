"""The roster of a conference as a subscription (RFC 4575 over RFC 6665): participants SUBSCRIBE to the
conference URI with `Event: conference`; the focus answers 200 and NOTIFYs `application/conference-info+xml`,
the full state first (and on every refresh), then a partial document (version + 1) for each join, status change
and departure. Only participants may subscribe; subscriptions per conference and their expiry are bounded."""

from __future__ import annotations

import asyncio
import time

from ...core.stack import ServerHandle
from ...im import conference_info as ci
from ...sip.dialog import Dialog
from ...sip.message import Request, new_tag
from ...sip.uri import Address
from .host import FocusParts
from .sender import DialogSender
from .state import Conference, Subscription, entity_of


class Roster:
    """The roster subscriptions of every conference of one focus."""

    def __init__(self, focus: FocusParts) -> None:
        self.focus = focus

    def subscribe(self, conf: Conference, request: Request, handle: ServerHandle) -> None:
        """A SUBSCRIBE to `conf` (out of dialog): 489 for another event, 403 for non-participants, 503 when full."""
        focus, stack = self.focus, self.focus.host.stack
        event = (request.headers.get("Event") or "").split(";")[0].strip().lower()
        if event != ci.EVENT:
            stack.reply(handle, 489, "Bad Event", headers={"Allow-Events": ci.EVENT})
            return
        entity = entity_of(request.from_.uri)
        if entity not in conf.members:
            stack.reply(handle, 403, "Forbidden (only participants may subscribe to the roster)")
            return
        if len(conf.subscriptions) >= focus.limits.max_subscriptions:
            stack.reply(handle, 503, "Service Unavailable (too many subscriptions)")
            return
        if not request.contacts:
            stack.reply(handle, 400, "Bad Request (a SUBSCRIBE needs a Contact)")
            return
        target = focus.host.party_target(request, handle.transport, handle.remote)
        if target is None:
            focus.refuse_stranger(handle)
            return
        expires = self._expires(request)
        local_tag = new_tag()
        dialog = Dialog.from_uas(request, local_tag)
        dialog.local_address = Address(conf.uri, "Conference")
        key = dialog.id
        sender = DialogSender(
            stack,
            dialog,
            target,
            lambda s, r, c=conf, k=key: self._failed(c, k, s, r),
            conf.contact(handle.transport),
            max_queue=focus.limits.max_queue,
        )
        sub = Subscription(entity, dialog, sender, time.monotonic() + expires)
        stack.reply(
            handle, 200, tag=local_tag, headers={"Expires": str(expires), "Contact": conf.contact(handle.transport)}
        )
        if expires == 0:  # a fetch: one NOTIFY, terminated
            self.notify(sub, conf.full_document(), terminated="timeout")
            return
        conf.subscriptions[key] = sub
        focus.dialogs[key] = (conf, None, sub)
        self._arm_expiry(conf, sub, expires)
        self.notify(sub, conf.full_document())

    def refresh(self, conf: Conference, sub: Subscription, request: Request, handle: ServerHandle) -> None:
        """A SUBSCRIBE in the subscription's dialog: refresh (full state again), or end it (Expires: 0)."""
        if not sub.dialog.accept_remote_cseq(request):
            self.focus.host.stack.reply(handle, 500, "Server Internal Error (CSeq out of order)", tag=False)
            return
        expires = self._expires(request)
        self.focus.host.stack.reply(
            handle, 200, tag=False, headers={"Expires": str(expires), "Contact": conf.contact(handle.transport)}
        )
        if expires == 0:
            self.end(conf, sub, "timeout")
            return
        sub.expires_at = time.monotonic() + expires
        self._arm_expiry(conf, sub, expires)
        self.notify(sub, conf.full_document())

    def announce(self, conf: Conference, user: ci.UserInfo) -> None:
        """A partial document with one changed user, to every subscriber of `conf`."""
        body = conf.partial_document(user)
        for sub in list(conf.subscriptions.values()):
            self.notify(sub, body)

    def notify(self, sub: Subscription, body: bytes, terminated: str | None = None) -> None:
        if terminated:
            state = f"terminated;reason={terminated}"
        else:
            state = f"active;expires={max(1, int(sub.expires_at - time.monotonic()))}"
        self.focus.stats["notifies"] += 1
        sub.sender.push("NOTIFY", body, ci.CONTENT_TYPE, {"Event": ci.EVENT, "Subscription-State": state})

    def end(self, conf: Conference, sub: Subscription, reason: str) -> None:
        """End a subscription with a final, terminated NOTIFY."""
        key = sub.dialog.id
        if conf.subscriptions.pop(key, None) is None:
            return
        self.focus.dialogs.pop(key, None)
        if sub.timer is not None:
            sub.timer.cancel()
        self.notify(sub, conf.full_document(), terminated=reason)

    def close(self, conf: Conference) -> None:
        """The focus is closing: stop every timer and queue of `conf`'s subscriptions, without notifying."""
        for sub in conf.subscriptions.values():
            if sub.timer is not None:
                sub.timer.cancel()
            sub.sender.close()

    def _expires(self, request: Request) -> int:
        e = request.expires
        limits = self.focus.limits
        if e is None:
            e = limits.default_expires
        return max(0, min(e, limits.max_expires))

    def _arm_expiry(self, conf: Conference, sub: Subscription, expires: float) -> None:
        if sub.timer is not None:
            sub.timer.cancel()
        sub.timer = asyncio.get_running_loop().call_later(expires, lambda: self.end(conf, sub, "timeout"))

    def _failed(self, conf: Conference, key: tuple[str, str, str], status: int, reason: str) -> None:
        sub = conf.subscriptions.pop(key, None)
        self.focus.dialogs.pop(key, None)
        if sub is None:
            return
        if sub.timer is not None:
            sub.timer.cancel()
        m = conf.members.get(sub.entity)
        if m is not None and status in (408, 503):  # the subscriber vanished: so did the participant
            self.focus.failed(conf, m.entity, status, reason)
