"""The embedded SIP server: registrar + stateful proxy + conference focus, on loopback (`notebook-im serve`)."""

from .conference import FocusLimits
from .offline import OfflineLimits
from .server import Server

__all__ = ["FocusLimits", "OfflineLimits", "Server"]
