"""Errors of the SIP layer, split the way h11 splits them, and the root of every error notebook_im raises.

`LocalProtocolError` means *we* were asked to do something the protocol forbids (a bug in the caller);
`RemoteProtocolError` means the *peer* sent something invalid. The latter carries the status code a
server should answer with (400 unless a more precise code applies) and, when the start line and the
headers needed to build a response were readable, the partially parsed request, so the stack can
answer "400 Bad Request" with a reason instead of silently dropping it.

`NotebookImError` is defined here, in the lowest layer, so that the errors of every layer (this one
included) can derive from it: `except nim.NotebookImError` catches whatever the library raises on purpose.
"""

from __future__ import annotations

from typing import Any


class NotebookImError(Exception):
    """Base class of every error notebook_im raises on purpose."""


class ProtocolError(NotebookImError):
    """A SIP protocol error, ours (LocalProtocolError) or the peer's (RemoteProtocolError)."""


SipError = ProtocolError  # the name this class had before; kept for code that catches it


class LocalProtocolError(ProtocolError):
    """The local side tried to do something SIP does not allow."""


class RemoteProtocolError(ProtocolError):
    """The remote side sent bytes that are not valid SIP.

    `status_code` is the response a UAS or proxy should send (when one can be sent at all);
    `message` is the partially parsed message, or None when even the start line was unreadable.
    """

    def __init__(self, reason: str, status_code: int = 400, message: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code
        self.message = message
