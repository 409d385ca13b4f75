"""The in-dialog requests of the focus to one participant: sent one at a time in FIFO order (the participant
checks CSeq order, RFC 3261 §12.2.2, and a chat must not arrive shuffled), from a bounded queue (a participant
that cannot keep up is dropped rather than let memory grow)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from ...core.stack import USER_AGENT, SipStack
from ...errors import NO_ANSWER
from ...net.base import Target
from ...sip.dialog import Dialog


class DialogSender:
    """`push(method, body, content_type, headers)` queues a request; `on_failure(status, reason)` is called once
    if one times out or gets 408/481/503 (the participant is gone), or the queue overflows."""

    def __init__(
        self,
        stack: SipStack,
        dialog: Dialog,
        target: Target,
        on_failure: Callable[[int, str], None],
        contact: str,
        *,
        max_queue: int,
    ) -> None:
        self.stack = stack
        self.dialog = dialog
        self.target = target
        self.on_failure = on_failure
        self.contact = contact
        self.max_queue = max_queue
        self.queue: deque[tuple[str, bytes, str | None, dict[str, str]]] = deque()
        self.task: asyncio.Task | None = None
        self.closed = False
        self.sent = 0

    def push(
        self, method: str, body: bytes = b"", content_type: str | None = None, extra: dict[str, str] | None = None
    ) -> bool:
        if self.closed:
            return False
        if len(self.queue) >= self.max_queue:
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
        stack = self.stack
        while self.queue and not self.closed:
            method, body, ct, extra = self.queue.popleft()
            req = self.dialog.create_request(
                method, via=stack.via(self.target.transport), contact=self.contact, body=body, content_type=ct
            )
            req.headers.add("User-Agent", USER_AGENT)
            for k, v in extra.items():
                req.headers.add(k, v)
            try:
                resp = await stack.send_request(req, self.target).future
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
