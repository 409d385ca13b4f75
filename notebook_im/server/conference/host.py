"""What the focus needs of the server it runs in (the proxy implements it; the focus never imports the proxy)."""
from __future__ import annotations

from typing import Protocol

from ...core.stack import SipStack
from ...net.base import Target
from ...sip.message import Request
from ...sip.uri import SipUri
from ..registrar import Binding, Registrar


class FocusHost(Protocol):
    stack: SipStack
    registrar: Registrar

    def is_us(self, uri: SipUri) -> bool:
        """Does `uri` name this server (host and port, or the advertised address)?"""

    def party_target(self, request: Request, transport: str, remote: tuple[str, int]) -> Target | None:
        """Where the sender of `request` may be reached: one of its user's registered contacts, or None."""

    def binding_target(self, binding: Binding) -> Target:
        """Where a registered device is reached."""
