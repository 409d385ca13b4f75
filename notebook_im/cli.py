"""`notebook-im`: run the embedded server, or watch two users chat over real SIP on loopback.

notebook-im serve [--host H] [--port P] [--users FILE] [--tls-cert PEM --tls-key PEM] [--offline-store FILE]
                  [--workers N]
                                           registrar + proxy until Ctrl-C
notebook-im demo [--transport udp|tcp]     server + alice + bob, a short conversation, the transcript
notebook-im chat                           the same two users, you type as alice (bob echoes)
notebook-im import-pcap FILE... --to DIR   stream captures into a Parquet dataset (nim.open_traces(DIR))
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence

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
    try:
        server = Server(
            host=args.host,
            port=args.port,
            users=users,
            realm=args.realm,
            tls=tls,
            tls_port=args.tls_port,
            offline_store=args.offline_store,
            workers=args.workers,
        )
    except (ValueError, TypeError) as exc:  # a wrong option: say which, without a traceback
        print(f"notebook-im serve: {exc}", file=sys.stderr)
        return 2
    server.start().result(30)
    extra = f", TLS on {server.tls_uri}" if server.tls_uri else ""
    auth = f", digest authentication for {len(users)} users (realm {args.realm!r})" if users else ""
    stop = threading.Event()
    # our own handlers for both: a shell starts a background job (`notebook-im serve &`) with SIGINT ignored, and
    # Python then never turns it into KeyboardInterrupt, so Ctrl-C (or kill -INT) would not stop the server.
    # Installed before "listening" is printed: whoever waits for that line may signal at once
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    procs = f", {args.workers} processes on UDP" if args.workers > 1 else ""
    print(
        f"notebook_im server listening on {server.uri} (UDP and TCP{extra}){auth}{procs}. Ctrl-C to stop.", flush=True
    )
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
        alice = platform.endpoint(
            "sip:alice@example.test", server=server, transport=args.transport, display_name="Alice"
        ).result(10)
        bob = platform.endpoint(
            "sip:bob@example.test", server=server, transport=args.transport, display_name="Bob"
        ).result(10)
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
            ep.on(
                nim.ComposingChanged,
                lambda e, n=name: line(
                    f"{_now()}  {n:8} sees {e.participant.name} {'typing…' if e.composing else 'stopped typing'}"
                ),
            )
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
            line(
                f"{_now()}  {who:8} {text!r}  [{delivered.status} {delivered.reason}, {delivered.latency * 1000:.1f} ms]"
            )
        pager = alice.send_message("sip:bob@example.test", "(a pager-mode MESSAGE, outside the session)").result(10)
        line(f"{_now()}  alice    pager MESSAGE [{pager.status} {pager.reason}]")
        alice_session.terminate().result(10)
        time.sleep(0.1)
        line(f"{_now()}  session  ended by alice (BYE), bob's side: {sessions['bob'].state.value}")
        print("\nTranscript (from bob's session.messages):")
        for m in sessions["bob"].messages:
            print(f"  {m.timestamp.astimezone().strftime('%H:%M:%S.%f')[:-3]}  {m.sender:24} {m.status:9} {m.text}")
        print(
            f"\n{len(platform.trace)} SIP messages recorded in platform.trace, "
            f"{len(server.trace)} seen by the server; dropped: {platform.trace.drop_count}"
        )
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


class _Progress:
    """A one-line progress bar on stderr (redrawn at most 10 times a second; nothing when stderr is not a terminal
    unless asked), with the bytes done, the rate and the time left."""

    def __init__(self, stream, force: bool = False) -> None:
        self.stream = stream
        self.enabled = force or stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-6)
        rate = done / elapsed
        frac = min(done / total, 1.0) if total else 1.0
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        left = (total - done) / rate if rate > 0 and total > done else 0.0
        self.stream.write(
            f"\r[{bar}] {frac * 100:5.1f}%  {done / 1e6:,.0f}/{total / 1e6:,.0f} MB  "
            f"{rate / 1e6:,.0f} MB/s  {left:,.0f} s left "
        )
        self.stream.flush()
        self.drawn = True

    def end(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _import_pcap(args: argparse.Namespace) -> int:
    from .trace.dataset import DatasetError, import_captures

    progress = _Progress(sys.stderr, force=args.progress)
    try:
        result = import_captures(
            args.files,
            args.to,
            local=args.local or None,
            owner=args.owner,
            memory=args.memory,
            progress=None if args.quiet else progress,
        )
    except (DatasetError, ValueError, TypeError, FileNotFoundError) as exc:
        progress.end()
        print(f"notebook-im import-pcap: {exc}", file=sys.stderr)
        return 2
    progress.end()
    s = result.stats
    print(
        f"{result.rows:,} SIP messages from {s.packets:,} packets in {s.files} file(s) -> {result.path} "
        f"({len(result.files)} Parquet file(s), {result.seconds:.1f} s)"
    )
    skipped = {
        k: v
        for k, v in s.as_dict().items()
        if v
        and k
        in (
            "files_skipped",
            "files_truncated",
            "files_corrupt",
            "non_ip",
            "other_ip",
            "non_sip_udp",
            "fragments_skipped",
            "truncated_packets",
            "malformed_packets",
            "unsupported_linktype",
            "tcp_streams_ignored",
            "tcp_gaps",
            "tcp_bad_messages",
            "tcp_flows_evicted",
            "tcp_incomplete_bytes",
        )
    }
    if skipped:
        print("skipped and counted: " + ", ".join(f"{k}={v:,}" for k, v in skipped.items()))
    print(f"query it: nim.open_traces({str(result.path)!r})")
    return 0


def _now() -> str:
    return time.strftime("%H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="notebook-im", description="SIP instant messaging at home in Jupyter")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the embedded registrar + proxy until Ctrl-C")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=5060, help="UDP and TCP port (default 5060; 0 picks a free one)")
    p.add_argument(
        "--users", metavar="FILE", help="require digest authentication for the users in FILE ('user:password' lines)"
    )
    p.add_argument("--realm", default="notebook_im", help="digest realm (default notebook_im)")
    p.add_argument("--tls-cert", metavar="PEM", help="certificate chain for a TLS listener")
    p.add_argument("--tls-key", metavar="PEM", help="private key for the TLS listener")
    p.add_argument("--tls-port", type=int, default=0, help="TLS port (default: a free one)")
    p.add_argument(
        "--offline-store",
        metavar="FILE",
        help="keep the messages for offline users in this SQLite file (they survive a restart)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N processes on the UDP port, one per core (default 1; not with --users): see docs/server.md",
    )
    p.set_defaults(func=_serve)
    p = sub.add_parser("demo", help="two users chat over real SIP on loopback; prints the transcript")
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    p.add_argument("--pause", type=float, default=0.3, help="seconds of 'typing' before each message")
    p.set_defaults(func=_demo)
    p = sub.add_parser("chat", help="type as alice to bob (an echo bot) in the terminal")
    p.set_defaults(func=_chat)
    p = sub.add_parser(
        "import-pcap",
        help="stream pcap/pcapng captures (gzip too) into a Parquet dataset",
        description="Read captures (files, or directories of rotated captures, in time order) and write "
        "their SIP messages into a Parquet dataset partitioned by date and hour, with "
        "memory bounded whatever their size. Query it with nim.open_traces(DIR).",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng files (.gz too), or directories of them")
    p.add_argument(
        "--to", required=True, metavar="DIR", help="the dataset directory: new, empty, or a dataset to add to"
    )
    p.add_argument(
        "--local",
        action="append",
        metavar="ADDR",
        help="our side, for the direction column: host or host:port (repeatable)",
    )
    p.add_argument("--owner", help="the owner column (default: pcap:<file or directory name>)")
    p.add_argument("--memory", default="512MiB", help="peak memory budget, e.g. 256MiB or 1GiB (default 512MiB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--progress", action="store_true", help="draw the progress bar even when stderr is not a terminal")
    p.set_defaults(func=_import_pcap)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
