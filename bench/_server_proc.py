"""The embedded server (registrar + proxy, no users: no authentication) in a process of its own.

    python bench/_server_proc.py PORT [--workers N] [--stateful]

Used by the relay ladder (SIPp -> server -> SIPp) and the scale benchmark (10,000 users and sessions). Its own
process gives it a core of its own and lets the harness read its memory alone. Speaks JSON lines on
stdin/stdout (see _common.Child): "stats" -> RSS, Python's allocated memory blocks (which, unlike RSS, drop when
objects are freed), number of registered addresses of record, SIP messages in the server's trace, server stats;
"gc" -> the same after a full garbage collection.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from _common import HOST, loop_kind, rss_bytes, serve_commands

import notebook_im as nim


def main() -> None:
    """Start the server, answer commands until stdin closes."""
    args = sys.argv[1:]
    workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
    server = nim.Server(HOST, int(args[0]), workers=workers, stateless="--stateful" not in args)
    server.start().result(30)

    def stats() -> dict[str, Any]:
        return {
            "rss": rss_bytes(),
            "blocks": sys.getallocatedblocks(),
            "registered": len(server.registrations),
            "trace": len(server.trace),
            "stats": server.stats,
        }

    def collected() -> dict[str, Any]:
        gc.collect()
        return stats()

    try:
        serve_commands(
            {"ready": True, "port": server.port, "loop": loop_kind(), **stats()}, {"stats": stats, "gc": collected}
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
