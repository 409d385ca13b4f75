"""A PJSUA2 endpoint (pjsip's C stack, driven from Python) in a process of its own: the anchor a Python user would
pick instead of notebook_im for receiving instant messages.

    python bench/_pjsua2_proc.py PORT udp|tcp

It listens on 127.0.0.1:PORT with one local Account (sip:bob@127.0.0.1, no registration) whose
`onInstantMessage` counts the MESSAGEs; pjsip answers each 200 itself. As a Python program would use it: no
worker threads of pjsip's own (`threadCnt=0`, `mainThreadOnly=True`), events polled on the main thread with
`libHandleEvents`, the callbacks in Python. The command lines of _common.Child ("stats", "quit") are read by a
second thread, which only reads a counter.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import pjsua2 as pj
from _common import HOST, rss_bytes


class Bob(pj.Account):
    """The account whose callback counts what arrives (the work a Python receiver does per message)."""

    def __init__(self) -> None:
        super().__init__()
        self.received = 0

    def onInstantMessage(self, prm: pj.OnInstantMessageParam) -> None:  # noqa: N802 - pjsua2's name
        self.received += 1


def main() -> None:
    port, transport = int(sys.argv[1]), sys.argv[2]
    stdout = os.dup(1)
    os.dup2(2, 1)  # pjlib prints its start-up line on the C stdout, which carries our JSON lines: to stderr with it
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 0
    cfg.logConfig.consoleLevel = 0
    cfg.medConfig.noVad = True
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.port = port
    tcfg.boundAddress = HOST
    kind = pj.PJSIP_TRANSPORT_UDP if transport == "udp" else pj.PJSIP_TRANSPORT_TCP
    ep.transportCreate(kind, tcfg)
    ep.audDevManager().setNullDev()
    ep.libStart()
    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:bob@{HOST}"
    bob = Bob()
    bob.create(acfg)
    sys.stdout.flush()
    os.dup2(stdout, 1)

    stop = threading.Event()

    def commands() -> None:
        print(json.dumps({"ready": True, "port": port, "loop": "pjsip", "version": ep.libVersion().full}), flush=True)
        for line in sys.stdin:
            name = line.strip()
            if name == "quit":
                break
            answer = {"received": bob.received, "rss": rss_bytes()} if name == "stats" else {"error": name}
            print(json.dumps(answer), flush=True)
        stop.set()

    threading.Thread(target=commands, daemon=True).start()
    try:
        while not stop.is_set():
            ep.libHandleEvents(10)
    finally:
        bob.shutdown()
        ep.libDestroy()


if __name__ == "__main__":
    main()
