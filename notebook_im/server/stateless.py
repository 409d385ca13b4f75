"""The proxy's stateless fast path (RFC 3261 §16.11) for the common case of a chat server: a pager MESSAGE (or
an OPTIONS ping) to a user with one device reachable over UDP, and the non-INVITE requests of a dialog, came in
over UDP to a server without `users=`.

Such a request is forwarded as the stateful proxy would forward it (the device's Contact as Request-URI,
Max-Forwards decremented, our Via on top), but no server or client transaction is made: retransmissions are
forwarded again and absorbed by the device's own transaction, and the response is relayed by popping our Via
and sending it to the next one (§16.11, §18.2.2). That halves the work of a relay. What the stateful path
decides itself, it still decides: a request for an offline user, a user with several devices (forking), the
conference focus, an INVITE or REGISTER, a stream transport, `users=` (a retransmission would look like a
replayed nonce), Max-Forwards exhausted; those are offered to the transaction layer as before.

Our branch is a keyed hash of the upstream Via as we forwarded it (its branch, sent-by, received, rport): the
same for every retransmission (§16.11 asks that), different for every transaction, and a proof on the way back.
A response is relayed only if the branch of its top Via is the hash of the Via below it under this server's
secret, so nobody can make the server send a response to an address of their choosing (a reflection) by
forging one; a forged or stale response is dropped and counted.

A device that stops answering is still noticed: for an initial request the relay remembers (bounded, by branch)
when the device must have answered by (`ProxyCore.device_timeout`), the request's bytes, and how many copies of
it the device was sent. If nothing at all came back from its address by then, and it was sent the copies a
stateful relay would have sent it (else it gets more time: see `_expire`), its binding is marked dead, exactly
as the stateful path marks it, and the request goes to the stateful path as if it had just come
(`SipStack.adopt`): the user is offline now, so a pager MESSAGE is kept and answered 202 at the same moment a
stateful relay would have answered it, and the sender's later retransmissions are absorbed by that transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol

from ..core.targets import target_of
from ..net.base import Addr, Target
from ..sip.message import BRANCH_MAGIC, Request, Response
from ..sip.uri import Address, SipUri, Via
from .registrar import Binding

if TYPE_CHECKING:
    from ..core.stack import SipStack
    from .auth import Authenticator
    from .registrar import Registrar


class _Focus(Protocol):
    def wants(self, request: Request) -> bool: ...


class RelayHost(Protocol):
    """What the relay needs of the proxy it serves (`server/proxy.ProxyCore`, which imports this module)."""

    stack: SipStack
    registrar: Registrar
    auth: Authenticator | None
    focus: _Focus
    device_timeout: float | None

    def is_us(self, uri: SipUri) -> bool: ...

    def past_us(self, routes: list[str]) -> list[str]: ...

    def aor_of(self, uri: SipUri) -> str: ...

    def binding_target(self, binding: Binding) -> Target: ...


log = logging.getLogger("notebook_im.server")

MARK = BRANCH_MAGIC + "sl"  # our stateless branches: z9hG4bKsl + process index + t|u + the keyed hash
LARGE_BODY = 32_768  # bytes of body beyond which the stateless path declines (see ProxyCore's 513)
# a device is judged dead only once it left COPIES copies of a request unanswered (what a stateful relay sends
# it within device_timeout = 8 T1: at 0, T1, 3 T1 and 7 T1), or once PATIENCE device_timeouts passed since the
# first copy (a sender that does not retransmit)
COPIES = 4
PATIENCE = 4
MAX_WORKERS = 16  # processes of one server (workers.py): the branch names its process with one hex digit
# initial requests taken statelessly; in a dialog, these and the other requests that make no dialog of their own
INITIAL = frozenset({"MESSAGE", "OPTIONS"})
IN_DIALOG = frozenset({"MESSAGE", "OPTIONS", "INFO", "NOTIFY", "BYE", "UPDATE"})


class Plan(NamedTuple):
    """Where `StatelessRelay.plan` decided a request goes: its target, the Request-URI to give it (None: as it
    is), the Route set to leave on it (None: as it is), and the device to time out (initial requests only)."""

    target: Target
    uri: SipUri | None
    routes: list[str] | None
    binding: Binding | None


class StatelessRelay:
    """The fast path of one `ProxyCore` (see the module docstring). `offer` is the stack's `stateless` hook;
    `response` is tried first for a response that matched no client transaction. A server with worker
    processes (workers.py) runs one in each of them, all with one key; `index` says which process made a branch,
    and `answered(index, branch)` is told when another process relays the answer to a request this one timed."""

    def __init__(self, core: RelayHost, *, key: bytes | None = None, index: int = 0) -> None:
        self.core = core
        self.enabled = True
        self.key = key or secrets.token_bytes(32)
        self.index = index
        self.answered: Callable[[int, str], None] | None = None
        # (insertion order is deadline order, one device_timeout for all, so the sweep reads from the front)
        # branch -> (loop time the device must have answered by, its binding, its address, the request as it came
        # and from where: handed back to the stateful path if the device turns out dead; when it was first relayed
        # and how many copies the device has been sent since)
        self._pending: dict[str, tuple[float, Binding, Addr, bytes, Addr, float, int]] = {}
        # beyond this many unanswered requests (a few KiB of bytes each), the stateful path and its flood limits
        self.max_pending = 10_000
        self.max_pending_bytes = 16 * 1024 * 1024  # and beyond this many bytes of them (large bodies)
        self._pending_bytes = 0
        # what takes a request back whose device died: the stack, as if it had just come (the main process), or
        # the main process (a worker hands it over)
        self.adopt: Callable[[bytes, Addr], None] = lambda data, remote: core.stack.adopt(data, "udp", remote)
        self._sweep: asyncio.TimerHandle | None = None
        self.stats = {"relayed": 0, "responses": 0, "forged": 0}

    # -- requests ---------------------------------------------------------------------------------------------
    def offer(self, request: Request, transport: str, remote: Addr, data: bytes) -> bool:
        """Forward `request` (which came as `data` from `remote`) statelessly if it is the common case; False
        leaves it to the stateful proxy."""
        plan = self.plan(request, transport)
        if plan is None:
            return False
        self.forward(request, plan, data, remote)
        return True

    def plan(self, request: Request, transport: str) -> Plan | None:
        """Where `request` goes if it is the fast path's to relay, else None. Changes nothing: a request it
        declines goes to the stateful proxy (or, in a worker, to the main process) as it came."""
        core = self.core
        method = request.method
        if not self.enabled or transport != "udp" or core.auth is not None or method not in IN_DIALOG:
            return None
        mf = request.max_forwards
        if mf is not None and mf <= 0:  # the stateful path answers 483
            return None
        if len(request.body) > LARGE_BODY:  # the stateful path answers 513 if it would not fit a datagram
            return None
        upstream = request.top_via.branch
        if not upstream or not upstream.startswith(BRANCH_MAGIC) or core.focus.wants(request):
            return None
        if request.to.tag is None:
            if method not in INITIAL or not request.uri.user:
                return None
            bindings = core.registrar.live(core.aor_of(request.uri), time.monotonic())
            if len(bindings) != 1:  # offline (the store decides) or several devices (a fork)
                return None
            binding = bindings[0]
            target = core.binding_target(binding)
            if target.transport != "udp" or (
                core.device_timeout
                and (len(self._pending) >= self.max_pending or self._pending_bytes >= self.max_pending_bytes)
            ):
                return None
            # an initial request's preloaded Route is dropped (proxy.py)
            return Plan(target, binding.contact, [] if "route" in request.headers else None, binding)
        received = request.headers.get_all("Route")
        routes = core.past_us(received)
        next_hop = Address.parse(routes[0]).uri if routes else request.uri
        found = core.registrar.find_contact(next_hop.host.strip("[]"), next_hop.port, time.monotonic())
        if found is None:  # the stateful path answers 404 / 481
            return None
        try:
            target = core.binding_target(found) if not routes else target_of(next_hop)
        except OSError:  # a host name not resolved yet: the stateful path answers it
            return None
        if target.transport != "udp":
            return None
        # in a dialog, the stateful path does not time devices out either
        return Plan(target, None, routes if len(routes) != len(received) else None, None)

    def forward(self, request: Request, plan: Plan, data: bytes, remote: Addr) -> None:
        """Send `request` on as `plan` says (§16.6 steps 6-8 without the transaction: §16.11)."""
        core = self.core
        stack = core.stack
        timeout = core.device_timeout
        tracked = plan.binding is not None and bool(timeout)
        branch = self.branch_for(request.top_via, tracked, self.index)
        if plan.uri is not None:
            request.uri = plan.uri
        if plan.routes is not None:
            request.headers.set_all("Route", plan.routes)
        mf = request.max_forwards
        request.headers.set("Max-Forwards", str((mf if mf is not None else 70) - 1))
        request.headers.prepend("Via", stack.via("udp", branch))
        stack.send_stateless(request, plan.target)
        self.stats["relayed"] += 1
        loop = stack.loop
        if tracked and plan.binding is not None and loop is not None:
            pending = self._pending
            entry = pending.get(branch)
            if entry is None:
                now = loop.time()
                pending[branch] = (now + (timeout or 0.0), plan.binding, plan.target.addr, data, remote, now, 1)
                self._pending_bytes += len(data)
                if self._sweep is None:
                    self._sweep = loop.call_later(min(timeout or 0.25, 0.25), self._expire)
            else:  # the sender's retransmission: one more chance the device had (same place in the order)
                pending[branch] = entry[:6] + (entry[6] + 1,)

    def branch_for(self, upstream: Via, tracked: bool, index: int) -> str:
        """Our branch for a request whose top Via (as we forward it, with received/rport) is `upstream`: the
        index of the process that relays it, whether it timed the device, and the keyed hash of all of that."""
        p = upstream.params
        head = f"{MARK}{index:x}{'t' if tracked else 'u'}"
        text = (
            f"{head}\n{p.get('branch')}\n{upstream.transport}\n{upstream.host}\n{upstream.port}\n"
            f"{p.get('received')}\n{p.get('rport')}"
        )
        digest = hashlib.blake2b(text.encode("utf-8", "surrogateescape"), key=self.key, digest_size=12)
        return head + digest.hexdigest()

    # -- responses --------------------------------------------------------------------------------------------
    def response(self, response: Response, transport: str) -> bool:
        """Relay a response to a request we forwarded statelessly: True if it was ours (relayed or, forged,
        dropped), False if it is not a response to the fast path at all."""
        branch = response.top_via.branch
        if not branch or not branch.startswith(MARK):
            return False
        stack = self.core.stack
        ours = response.headers.pop_first("Via")
        upstream: Via | None = None
        try:
            upstream = response.top_via if "via" in response.headers else None
        except Exception:  # noqa: BLE001 - a malformed Via below ours: not a response we can relay
            upstream = None
        made = _made(branch)
        if (
            transport != "udp"
            or upstream is None
            or made is None
            or not hmac.compare_digest(branch, self.branch_for(upstream, made[1], made[0]))
        ):
            self.stats["forged"] += 1
            stack.dropped(
                bytes(response), transport, None, f"response with a stateless branch we did not make ({ours})"
            )
            return True
        if made[1]:  # a timed request: the device answered, it is alive
            if made[0] == self.index:
                self.device_answered(branch)
            elif self.answered is not None:  # timed by another process of this server: tell it
                self.answered(made[0], branch)
        self.stats["responses"] += 1
        host, port = upstream.response_address()
        stack.send_stateless(response, Target("udp", host, port))
        return True

    # -- devices that do not answer -------------------------------------------------------------------------
    def device_answered(self, branch: str) -> None:
        """The answer to the request relayed with `branch` came: its device is not timed any more."""
        if self._pending:
            gone = self._pending.pop(branch, None)
            if gone is not None:
                self._pending_bytes -= len(gone[3])

    def _expire(self) -> None:
        """Mark dead the bindings of devices that left a request unanswered past its deadline, unless their
        address was heard from meanwhile (alive on a lossy path: the sender's retransmissions will get through).

        A stateful relay sends the device its own copies (at 0, T1, 3 T1, 7 T1: four within 8 T1); here the
        device only gets the sender's, and on a lossy path the first copy relayed may be the sender's fourth,
        with the next ones T2 apart. So a device is judged only once it was sent as many copies as a stateful
        relay would have sent it (`COPIES`), or once `PATIENCE` deadlines passed (a sender that does not
        retransmit): otherwise a live device whose answers to one late request were lost would be taken for dead."""
        stack = self.core.stack
        loop = stack.loop
        self._sweep = None
        if loop is None or stack.closed:
            self._pending.clear()
            self._pending_bytes = 0
            return
        now = loop.time()
        timeout = self.core.device_timeout or 0.0
        pending = self._pending
        while pending:
            branch, entry = next(iter(pending.items()))
            deadline, binding, addr, data, remote, first, copies = entry
            if deadline > now:
                break
            del pending[branch]
            # alive if anything came from its address since the request was first relayed: the sweep may run up
            # to 0.25 s after the deadline, so "heard within the last timeout" would take a device that answered
            # everything and then fell quiet for a moment for dead
            heard = stack.heard_from(addr)
            alive = heard is not None and heard >= first
            if not alive and copies < COPIES and timeout > 0 and now - first < PATIENCE * timeout:
                # not enough chances yet: wait one more device_timeout (the latest deadline of all: to the end)
                pending[branch] = (now + timeout, *entry[1:])
                continue
            self._pending_bytes -= len(data)  # the entry leaves the table
            if alive:
                continue
            if not binding.dead:
                self.core.registrar.mark_dead(binding)
                log.info("server: %s:%s did not answer within %g s: offline until it registers again", *addr, timeout)
            # the request goes to the stateful path now, which finds the user offline (a pager MESSAGE is kept,
            # 202) and answers the sender at once, as a stateful relay would have after device_timeout
            self.adopt(data, remote)
        if pending:
            self._sweep = loop.call_later(0.25, self._expire)

    def close(self) -> None:
        """Forget the pending deadlines (the server stops)."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._pending.clear()
        self._pending_bytes = 0

    @property
    def pending(self) -> int:
        """Initial requests relayed statelessly whose device has not answered yet."""
        return len(self._pending)


def _made(branch: str) -> tuple[int, bool] | None:
    """(the index of the process that made a stateless branch, whether it timed the device), or None."""
    n = len(MARK)
    if len(branch) < n + 2 or branch[n + 1] not in "tu":
        return None
    try:
        return int(branch[n], 16), branch[n + 1] == "t"
    except ValueError:
        return None
