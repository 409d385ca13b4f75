"""Exceptions of the public API. Each message says what happened and, where it can, what to do."""
from __future__ import annotations

from .sip.errors import LocalProtocolError, RemoteProtocolError, SipError


class NotebookImError(Exception):
    """Base class of notebook_im's API errors."""


class RequestFailed(NotebookImError):
    """A SIP request got a final error response (3xx-6xx); `status` and `reason` say which."""

    def __init__(self, method: str, status: int, reason: str, target: str = "") -> None:
        self.method = method
        self.status = status
        self.reason = reason
        self.target = target
        where = f" to {target}" if target else ""
        super().__init__(f"{method}{where} failed: {status} {reason}")


class TransactionTimeout(NotebookImError):
    """No final response arrived before the transaction timer (B or F, 32 s by default) fired."""

    def __init__(self, method: str, target: str = "", detail: str = "") -> None:
        self.method = method
        self.target = target
        self.status = 408
        self.reason = detail or "Request Timeout"
        where = f" to {target}" if target else ""
        super().__init__(f"{method}{where} timed out: {self.reason}")


class TransportError(TransactionTimeout):
    """The request could not be delivered at all: connection refused, TLS verification failed, ...
    (RFC 3261 §8.1.3.1 treats it like a 503). A subclass of TransactionTimeout, which it ends the same way."""

    def __init__(self, method: str, target: str = "", detail: str = "") -> None:
        super().__init__(method, target, detail)
        self.status = 503
        self.args = (f"{method}{' to ' + target if target else ''} failed: {detail}",)


class MessageTooLarge(TransportError):
    """A request too large for UDP (RFC 3261 §18.1.1: over 1300 bytes, within 200 bytes of a 1500-byte MTU)
    could not go over TCP either (connection refused). The text says both; send over TCP (`transport="tcp"`)
    to a peer that listens on it, or send a shorter message."""


class ConferenceRequired(NotebookImError):
    """A peer-to-peer IM session has exactly two parties; three or more need a conference."""


class InvalidState(NotebookImError):
    """The object is not in a state that allows this call (for example sending on a terminated session)."""


__all__ = [
    "ConferenceRequired", "InvalidState", "LocalProtocolError", "MessageTooLarge", "NotebookImError", "RemoteProtocolError",
    "RequestFailed", "SipError", "TransactionTimeout", "TransportError",
]
