"""A notebook run the crash test kills: chats through the embedded server with a history store, printing the
number of each message whose send completed (its 200 OK arrived), until it is SIGKILLed.

    python tests/history/chatter.py STORE PAUSE [MAX_MESSAGES]

PAUSE is the time between messages in seconds (0: a tight loop).
"""

from __future__ import annotations

import sys
import time

import notebook_im as nim


def main() -> None:
    path, pause = sys.argv[1], float(sys.argv[2])
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 5000  # bounded even if nobody kills it
    server = nim.Server().start().result(10)
    platform = nim.Platform("crash", history=path)
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    bob.sessions.on_incoming(lambda incoming: incoming.accept())
    session = alice.sessions.create("sip:bob@example.test").result(10)
    print("ready", flush=True)
    for i in range(limit):
        session.send(f"line {i}").result(10)
        print(i, flush=True)
        if pause:
            time.sleep(pause)
    platform.shutdown()
    server.stop()


if __name__ == "__main__":
    main()
