"""Parallel forking (RFC 3261 §16.7), sans-IO: the response context of one request that a proxy forwarded
to several devices of the same user (several bindings of one address of record).

A user signed in from a laptop and a phone should get a pager-mode MESSAGE on both, and an INVITE should
ring both; the first device to answer wins and the others stop ringing. The proxy sends the request on
every branch at once, and this module decides, response by response, what goes upstream:

- provisional responses (but 100) are relayed until a final response has been sent (§16.7 step 5);
- the first 2xx is relayed at once; for an INVITE the branches still pending are CANCELled with
  `Reason: SIP;cause=200;text="Call completed elsewhere"` (RFC 3326), so the losing device can tell its
  user "answered elsewhere" rather than show a missed call (§16.7 step 10);
- a 6xx on an INVITE cancels the other branches (step 5) and is the answer (step 6);
- when every branch has failed, the best response goes upstream (§16.7.6): a 6xx if any, else one of the
  lowest class (3xx < 4xx < 5xx), preferring answers that tell the caller how to retry (401, 407, 415, 420,
  484), then real answers over a timeout; a 503 becomes 500 (step 6: the 503 was about the device, not
  about us); the challenges of every 401/407 are collected into the chosen one (step 7).

Deviation, written down: a second 2xx to an INVITE (two devices answered at the same moment) is not relayed
upstream. §16.7 wants it forwarded and the caller to ACK and BYE it, but many user agents (ours included)
keep only the first dialog; so the proxy ends the extra dialog itself (`EndBranch`: ACK, then BYE with the
same Reason). The caller sees one answer and the second device hears "answered elsewhere".

The context only counts branches and looks at responses; sending, timers and CANCELs are the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sip.message import Response
from ..sip.reason import COMPLETED_ELSEWHERE, Reason

# 4xx answers that tell the caller how to resubmit (§16.7.6): preferred when a 4xx is chosen
RESUBMIT_HINTS = (401, 407, 415, 420, 484)


@dataclass(frozen=True)
class Relay:
    """Send `response` upstream now (it still carries the proxy's Via: the caller strips it)."""

    response: Response


@dataclass(frozen=True)
class CancelBranches:
    """CANCEL these pending INVITE branches; put `reason` in a Reason header (None: no header)."""

    branches: tuple[int, ...]
    reason: Reason | None


@dataclass(frozen=True)
class EndBranch:
    """A 2xx came on `branch` after another branch had won: ACK it and BYE it (with `reason`)."""

    branch: int
    response: Response
    reason: Reason


class ResponseContext:
    """What to do with each response of a request forked on `branches` branches (branch = index 0..n-1)."""

    def __init__(self, method: str, branches: int) -> None:
        if branches < 1:
            raise ValueError("a forked request needs at least one branch")
        self.method = method
        self.branches = branches
        self.final_sent: Response | None = None  # what went upstream as the final answer
        self._finished = [False] * branches  # a final response (or a timeout) came on the branch
        self._cancelled = [False] * branches  # a CANCEL was asked for on the branch
        self._responses: list[Response] = []  # the non-2xx finals, for §16.7.6

    @property
    def done(self) -> bool:
        """Every branch has its final response and the upstream has its answer."""
        return self.final_sent is not None and all(self._finished)

    def pending(self) -> tuple[int, ...]:
        """Branches without a final response yet."""
        return tuple(i for i, f in enumerate(self._finished) if not f)

    def provisional(self, branch: int, response: Response) -> list:
        """A 1xx on `branch`: relay it (but 100, which is hop-by-hop) while no final answer went upstream."""
        if response.status == 100 or self.final_sent is not None:
            return []
        return [Relay(response)]

    def final(self, branch: int, response: Response) -> list:
        """A final response (or a synthesized 408 for a branch that timed out) on `branch`."""
        if self._finished[branch]:
            return []
        self._finished[branch] = True
        invite = self.method == "INVITE"
        if 200 <= response.status < 300:
            if self.final_sent is None:
                self.final_sent = response
                actions: list = [Relay(response)]
                if invite:
                    actions += self._cancel(COMPLETED_ELSEWHERE)
                return actions
            if invite and 200 <= self.final_sent.status < 300:
                return [EndBranch(branch, response, COMPLETED_ELSEWHERE)]
            return []
        if self.final_sent is not None:
            return []
        self._responses.append(response)
        actions = []
        if invite and response.status >= 600:
            actions += self._cancel(Reason("SIP", response.status, response.reason))
        if all(self._finished):
            self.final_sent = self.best()
            actions.append(Relay(self.final_sent))
        return actions

    def cancel(self, reason: Reason | None = None) -> list:
        """The upstream CANCELled the request: CANCEL every pending branch (their 487s then make the answer)."""
        return self._cancel(reason)

    def _cancel(self, reason: Reason | None) -> list:
        if self.method != "INVITE":
            return []  # CANCEL has no effect on a non-INVITE request (RFC 3261 §9.1): not sent
        todo = tuple(i for i in self.pending() if not self._cancelled[i])
        for i in todo:
            self._cancelled[i] = True
        return [CancelBranches(todo, reason)] if todo else []

    def best(self) -> Response:
        """The response to send upstream when no branch succeeded (§16.7.6, steps 6 and 7)."""
        responses = self._responses
        if not responses:
            raise ValueError("no final response on any branch yet")
        pool = [r for r in responses if r.status >= 600]
        if not pool:
            lowest = min(r.status // 100 for r in responses)
            pool = [r for r in responses if r.status // 100 == lowest]
        chosen = min(pool, key=lambda r: (r.status not in RESUBMIT_HINTS, r.status == 408, r.status))
        out = chosen.copy()
        if out.status == 503:
            out.status, out.reason = 500, f"Server Internal Error (the device answered 503 {chosen.reason})"
        if out.status in (401, 407):
            for header in ("WWW-Authenticate", "Proxy-Authenticate"):
                values = [v for r in responses if r.status in (401, 407) for v in r.headers.get_all(header)]
                if values:
                    out.headers.set_all(header, list(dict.fromkeys(values)))
        return out
