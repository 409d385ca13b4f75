"""A notebook_im endpoint with no server, in a process of its own, for the SIPp throughput ladder.

    python bench/_endpoint_proc.py PORT udp|tcp

It listens as sip:bob@127.0.0.1 on 127.0.0.1:PORT, answers every pager MESSAGE 200 (what the library does) and
counts MessageReceived. Its own process gives its loop thread a core of its own, as SIPp's UAS has one.
Speaks JSON lines on stdin/stdout (see _common.Child): "stats" -> received count, endpoint stats, loop, RSS.
NOTEBOOK_IM_LOOP (asyncio|uvloop), set by the harness, picks the event loop if notebook_im honours it; the
"loop" field says which one really runs.
"""

from __future__ import annotations

import sys

from _common import HOST, loop_kind, rss_bytes, serve_commands

import notebook_im as nim


def main() -> None:
    """Enable the endpoint, count messages, answer commands until stdin closes."""
    port, transport = int(sys.argv[1]), sys.argv[2]
    platform = nim.Platform("bench-endpoint")
    endpoint = platform.endpoint(f"sip:bob@{HOST}", local_port=port, transport=transport).result(15)
    received = [0]

    def count(_event: nim.MessageReceived) -> None:
        received[0] += 1

    endpoint.on(nim.MessageReceived, count)
    try:
        serve_commands(
            {"ready": True, "port": endpoint.local_address[1], "loop": loop_kind()},
            {"stats": lambda: {"received": received[0], "stats": endpoint.stats, "rss": rss_bytes()}},
        )
    finally:
        platform.shutdown(5)


if __name__ == "__main__":
    main()
