"""Exceptions of the public API. Each message says what happened and, where it can, what to do."""

from __future__ import annotations

from .sip.errors import LocalProtocolError, NotebookImError, ProtocolError, RemoteProtocolError, SipError

# The tree (every class is a NotebookImError; `except nim.NotebookImError` catches them all):
#   ProtocolError -> LocalProtocolError, RemoteProtocolError   (SIP itself was violated, by us or by the peer)
#   RequestFailed        a final error response came back (its status and reason say which)
#   TransactionTimeout   no final response came in time
#   TransportError       the request could not be sent at all (connection refused, TLS check failed)
#   MessageTooLarge      a text that cannot fit in one SIP message (also a ValueError: a wrong argument)
#   ConferenceRequired, InvalidState   the call does not fit the object's kind or state
#   DeadlockError (runtime), HistoryError (trace.store)


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


class TransportError(NotebookImError):
    """The request could not be delivered at all: connection refused, TLS verification failed, ...
    (RFC 3261 §8.1.3.1 treats it like a 503: `status` is 503)."""

    def __init__(self, method: str, target: str = "", detail: str = "") -> None:
        self.method = method
        self.target = target
        self.status = 503
        self.reason = detail or "Service Unavailable"
        where = f" to {target}" if target else ""
        super().__init__(f"{method}{where} failed: {self.reason}")


# what "the request got no answer" means to the code that retries or gives up: silence, or no way to send
NO_ANSWER = (TransactionTimeout, TransportError)


class MessageTooLarge(NotebookImError, ValueError):
    """A message too large to send: a text over what one SIP MESSAGE holds (raised by `send()` before anything
    goes on the wire), or a request too large for UDP (RFC 3261 §18.1.1: over 1300 bytes) that could not go over
    TCP either. The text says the size and the limit; send a shorter message, or over TCP to a peer that
    listens on it. `status` is 513."""

    def __init__(self, method: str, target: str = "", detail: str = "") -> None:
        self.method = method
        self.target = target
        self.status = 513
        self.reason = detail or "Message Too Large"
        super().__init__(f"{method}{' to ' + target if target else ''} failed: {self.reason}")


class ConferenceRequired(NotebookImError):
    """A peer-to-peer IM session has exactly two parties; three or more need a conference."""


class InvalidState(NotebookImError):
    """The object is not in a state that allows this call (for example sending on a terminated session)."""


__all__ = [
    "ConferenceRequired",
    "InvalidState",
    "LocalProtocolError",
    "MessageTooLarge",
    "NO_ANSWER",
    "NotebookImError",
    "ProtocolError",
    "RemoteProtocolError",
    "RequestFailed",
    "SipError",
    "TransactionTimeout",
    "TransportError",
]
