"""What the stack reports about the messages it sends and receives: a sink, so that the stack does not import
the trace (the recorder in trace/ implements it; anything with these two methods will do)."""

from __future__ import annotations

from typing import Any, Protocol


class TraceSink(Protocol):
    def record_sip(
        self,
        direction: str,
        transport: str,
        local: tuple[str, int],
        remote: tuple[str, int] | None,
        raw: bytes,
        owner: str,
        *,
        message: Any = None,
    ) -> None:
        """One SIP message on the wire ("in" or "out"); `message` is its parse when the caller has it."""

    def record_drop(self, transport: str, remote: tuple[str, int] | None, reason: str, raw: bytes, owner: str) -> None:
        """Bytes that were dropped (not SIP, or not answerable), and why."""


class NullSink:
    """A sink that keeps nothing (a stack nobody traces)."""

    def record_sip(self, *args: Any, **kwargs: Any) -> None:
        return None

    def record_drop(self, *args: Any, **kwargs: Any) -> None:
        return None
