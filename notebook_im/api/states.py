"""The states of endpoints, sessions and participants (UCCAPI's state enumerations), at the bottom of the API
layer: the events carry them, the participants and sessions hold them."""

from __future__ import annotations

import enum


class ParticipantState(str, enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTING = "disconnecting"
    DISCONNECTED = "disconnected"


class SessionState(str, enum.Enum):
    """A session moves through the same five states as its participants (UCCAPI's session states)."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTING = "disconnecting"
    DISCONNECTED = "disconnected"


class EndpointState(str, enum.Enum):
    DISABLED = "disabled"
    ENABLING = "enabling"
    ENABLED = "enabled"
    RECONNECTING = "reconnecting"  # the registration failed or lapsed; retrying with backoff
    DISABLING = "disabling"
