"""asyncio transports (UDP, TCP, TLS) that carry the sans-IO SIP core's bytes, and lab tools to impair them."""

from .impairment import Impairment
from .transport import Target, TransportLayer

__all__ = ["Impairment", "Target", "TransportLayer"]
