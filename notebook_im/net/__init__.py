"""asyncio transports (UDP, TCP) that carry the sans-IO SIP core's bytes."""
from .transport import Target, TransportLayer

__all__ = ["Target", "TransportLayer"]
