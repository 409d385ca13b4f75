"""Sans-IO SIP: bytes in, events and bytes out.

Nothing in this package opens a socket, touches asyncio or reads the clock: time is passed in by the
caller. That keeps every state machine testable with plain unit tests (the h11/h2 model).
"""

from .errors import LocalProtocolError, RemoteProtocolError, SipError
from .message import Message, Request, Response
from .parser import StreamFramer, parse_message
from .uri import Address, SipUri, Via

__all__ = [
    "Address",
    "LocalProtocolError",
    "Message",
    "RemoteProtocolError",
    "Request",
    "Response",
    "SipError",
    "SipUri",
    "StreamFramer",
    "Via",
    "parse_message",
]
