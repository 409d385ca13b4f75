"""A party of an IM session (UCCAPI `IUccSessionParticipant`)."""

from __future__ import annotations

from typing import Any

from .states import ParticipantState


class Participant:
    """One party: its URI, display name and connection state. Compare participants by URI. `session` is the
    ImSession it belongs to (None for a pager-mode sender)."""

    def __init__(
        self,
        uri: str,
        *,
        display_name: str | None = None,
        is_local: bool = False,
        session: Any = None,
        state: ParticipantState = ParticipantState.IDLE,
    ) -> None:
        self.uri = uri
        self.display_name = display_name
        self.is_local = is_local
        self.session = session
        self.state = state
        self.composing = False

    @property
    def name(self) -> str:
        """What a chat panel shows: the display name, else the user part of the URI."""
        if self.display_name:
            return self.display_name
        user = self.uri.split(":", 1)[-1].split("@", 1)[0]
        return user or self.uri

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Participant) and other.uri == self.uri and other.session is self.session

    def __hash__(self) -> int:
        return hash((self.uri, id(self.session)))

    def __repr__(self) -> str:
        local = " local" if self.is_local else ""
        return f"<Participant {self.uri}{local} {self.state.value}>"
