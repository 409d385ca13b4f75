"""The embedded SIP server: registrar + stateful proxy on loopback (`notebook-im serve`)."""
from .server import Server

__all__ = ["Server"]
