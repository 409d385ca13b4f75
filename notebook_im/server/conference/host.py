"""The interfaces between the parts of the conference focus and around it, so that imports only go downward:
`FocusHost` is what the focus needs of the server it runs in (the proxy implements it; the focus never imports
the proxy); `FocusParts` is what the roster and dial-out components need of the focus that owns them (the
focus implements it and imports them, not the other way round)."""

from __future__ import annotations

from typing import Any, Protocol

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


class FocusParts(Protocol):
    """What the focus's components (roster.py, dialout.py) use of the focus."""

    host: FocusHost
    limits: Any  # state.FocusLimits
    stats: dict[str, int]
    dialogs: dict[tuple[str, str, str], Any]
    roster: Any  # roster.Roster (announces roster changes)

    def failed(self, conf: Any, entity: str, status: int, reason: str) -> None:
        """A participant stopped answering: drop them."""

    def drop_member(
        self,
        conf: Any,
        m: Any,
        *,
        method: str = "departed",
        reason: str | None = None,
        announce: bool = True,
        bye: bool = False,
        end_if_empty: bool = True,
    ) -> None: ...

    def refuse_stranger(self, handle: Any) -> None: ...
