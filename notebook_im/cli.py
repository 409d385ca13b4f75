"""`notebook-im`: run the embedded server, or watch two users chat over real SIP on loopback.

    notebook-im serve [--host H] [--port P] [--users FILE] [--tls-cert PEM --tls-key PEM] [--offline-store FILE]
                                               registrar + proxy until Ctrl-C
    notebook-im demo [--transport udp|tcp]     server + alice + bob, a short conversation, the transcript
    notebook-im chat                           the same two users, you type as alice (bob echoes)
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Sequence

CONVERSATION = [
    ("alice", "Hi Bob! Are you there?"),
    ("bob", "Hi Alice, yes. What's up?"),
    ("alice", "Trying notebook_im: this chat is real SIP on loopback."),
    ("bob", "Nice. I see your typing notifications too (RFC 3994)."),
    ("alice", "And every message is recorded in platform.trace. Bye!"),
]


def _serve(args: argparse.Namespace) -> int:
    from .server import Server

    users = None
    if args.users:
        from .server.auth import load_users_file
        users = load_users_file(args.users)
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    server = Server(host=args.host, port=args.port, users=users, realm=args.realm, tls=tls, tls_port=args.tls_port,
                    offline_store=args.offline_store)
    server.start().result(10)
    extra = f", TLS on {server.tls_uri}" if server.tls_uri else ""
    auth = f", digest authentication for {len(users)} users (realm {args.realm!r})" if users else ""
    stop = threading.Event()
    # our own handlers for both: a shell starts a background job (`notebook-im serve &`) with SIGINT ignored, and
    # Python then never turns it into KeyboardInterrupt, so Ctrl-C (or kill -INT) would not stop the server.
    # Installed before "listening" is printed: whoever waits for that line may signal at once
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"notebook_im server listening on {server.uri} (UDP and TCP{extra}){auth}. Ctrl-C to stop.", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    server.stop()
    print("stopped", flush=True)
    return 0


def _demo(args: argparse.Namespace) -> int:
    import notebook_im as nim

    with nim.Server() as server, nim.Platform("demo") as platform:
        print(f"server   {server.uri}")
        alice = platform.endpoint("sip:alice@example.test", server=server, transport=args.transport, display_name="Alice").result(10)
        bob = platform.endpoint("sip:bob@example.test", server=server, transport=args.transport, display_name="Bob").result(10)
        print(f"alice    registered, contact {alice.contact}")
        print(f"bob      registered, contact {bob.contact}\n")
        transcript: list[str] = []
        lock = threading.Lock()

        def line(text: str) -> None:
            with lock:
                transcript.append(text)
                print(text, flush=True)

        bob_sessions: list[nim.ImSession] = []

        def on_incoming(inc: nim.IncomingSession) -> None:
            line(f"{_now()}  bob      <- invitation from {inc.inviter.uri}, accepting")
            bob_sessions.append(inc.session)
            inc.accept()

        bob.sessions.on_incoming(on_incoming)
        for ep, name in ((alice, "alice"), (bob, "bob")):
            ep.on(nim.ComposingChanged, lambda e, n=name: line(f"{_now()}  {n:8} sees {e.participant.name} "
                                                               f"{'typing…' if e.composing else 'stopped typing'}"))
        alice_session = alice.sessions.create("sip:bob@example.test").result(10)
        deadline = time.monotonic() + 5
        while not bob_sessions or bob_sessions[0].state is not nim.SessionState.CONNECTED:
            if time.monotonic() > deadline:
                print("bob's side did not connect", file=sys.stderr)
                return 1
            time.sleep(0.01)
        sessions = {"alice": alice_session, "bob": bob_sessions[0]}
        line(f"{_now()}  session  connected (INVITE m=message / 200 OK / ACK)\n")
        for who, text in CONVERSATION:
            session = sessions[who]
            session.start_composing().result(10)
            time.sleep(args.pause)
            delivered = session.send(text).result(10)
            line(f"{_now()}  {who:8} {text!r}  [{delivered.status} {delivered.reason}, {delivered.latency * 1000:.1f} ms]")
        pager = alice.send_message("sip:bob@example.test", "(a pager-mode MESSAGE, outside the session)").result(10)
        line(f"{_now()}  alice    pager MESSAGE [{pager.status} {pager.reason}]")
        alice_session.terminate().result(10)
        time.sleep(0.1)
        line(f"{_now()}  session  ended by alice (BYE), bob's side: {sessions['bob'].state.value}")
        print("\nTranscript (from bob's session.messages):")
        for m in sessions["bob"].messages:
            print(f"  {m.timestamp.astimezone().strftime('%H:%M:%S.%f')[:-3]}  {m.sender:24} {m.status:9} {m.text}")
        print(f"\n{len(platform.trace)} SIP messages recorded in platform.trace, "
              f"{len(server.trace)} seen by the server; dropped: {platform.trace.drop_count}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    import notebook_im as nim

    with nim.Server() as server, nim.Platform("chat") as platform:
        alice = platform.endpoint("sip:alice@example.test", server=server, display_name="Alice").result(10)
        bob = platform.endpoint("sip:bob@example.test", server=server, display_name="Bob").result(10)

        def on_incoming(inc: nim.IncomingSession) -> None:
            inc.accept()
            inc.session.on(nim.MessageReceived, lambda e: inc.session.send(f"echo: {e.text}"))

        bob.sessions.on_incoming(on_incoming)
        session = alice.sessions.create("sip:bob@example.test").result(10)
        session.on(nim.MessageReceived, lambda e: print(f"\r{e.participant.name}: {e.text}\n> ", end="", flush=True))
        print(f"Chatting as alice with bob (an echo bot) via {server.uri}. Empty line or Ctrl-D quits.")
        try:
            while True:
                text = input("> ")
                if not text:
                    break
                session.send(text).result(10)
        except (EOFError, KeyboardInterrupt):
            pass
        session.terminate().result(10)
    return 0


def _now() -> str:
    return time.strftime("%H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="notebook-im", description="SIP instant messaging at home in Jupyter")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the embedded registrar + proxy until Ctrl-C")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=5060, help="UDP and TCP port (default 5060; 0 picks a free one)")
    p.add_argument("--users", metavar="FILE", help="require digest authentication for the users in FILE ('user:password' lines)")
    p.add_argument("--realm", default="notebook_im", help="digest realm (default notebook_im)")
    p.add_argument("--tls-cert", metavar="PEM", help="certificate chain for a TLS listener")
    p.add_argument("--tls-key", metavar="PEM", help="private key for the TLS listener")
    p.add_argument("--tls-port", type=int, default=0, help="TLS port (default: a free one)")
    p.add_argument("--offline-store", metavar="FILE", help="keep the messages for offline users in this SQLite file "
                                                             "(they survive a restart)")
    p.set_defaults(func=_serve)
    p = sub.add_parser("demo", help="two users chat over real SIP on loopback; prints the transcript")
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    p.add_argument("--pause", type=float, default=0.3, help="seconds of 'typing' before each message")
    p.set_defaults(func=_demo)
    p = sub.add_parser("chat", help="type as alice to bob (an echo bot) in the terminal")
    p.set_defaults(func=_chat)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
