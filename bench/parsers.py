"""Parsing: messages per second on a fixed corpus, notebook_im against the other maintained Python SIP parsers,
all in the same process and the same run.

The corpus: tests/corpus/valid/*.sip (the hostile-input corpus's valid half: compact forms, folding, IPv6,
escapes, odd but legal values) plus a typical SIPp pager MESSAGE and its 200 OK. Each library parses each
message and reads what a SIP stack needs from every message: method or status, Call-ID, CSeq, From tag and
the top Via's branch. As on the wire, no two messages share a Call-ID, a branch or a tag: each corpus
message is used in VARIANTS copies whose Call-ID, branch and tag values carry a copy number, so a parser's
caches (notebook_im keeps 4,096 parsed URIs and addresses) cannot turn the benchmark into a cache
lookup; values that recur on the wire (URIs, display names) still recur. A message counts only if every library parses it and reads all five (the others
stumble over some legal messages); how many that leaves is printed. pyVoIP parses no MESSAGE requests
(only INVITE, ACK, BYE, CANCEL and responses), which would leave almost nothing in common, so it is measured
apart, on the messages it can parse, against notebook_im on that same subset.

Each library runs in rounds of about a second, interleaved (notebook_im, sipmessage, sippy, notebook_im, ...),
and keeps its best round: the machine is shared and noisy, and the best round is the one least disturbed.
"""

from __future__ import annotations

import gc
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import REPO, Context, Row, ratio, yes_no

CORPUS_DIR = REPO / "tests" / "corpus" / "valid"
SIPP_MESSAGE = (
    b"MESSAGE sip:bob@127.0.0.1:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-21519-1-0;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "SIPp" <sip:sipp@127.0.0.1:5061>;tag=21519SIPpTag001\r\n'
    b"To: <sip:bob@127.0.0.1:5070>\r\n"
    b"Call-ID: 1-21519@127.0.0.1\r\n"
    b"CSeq: 1 MESSAGE\r\n"
    b"User-Agent: SIPp\r\n"
    b"Content-Type: text/plain;charset=UTF-8\r\n"
    b"Content-Length: 17\r\n\r\n"
    b"pager message 1\r\n"
)
SIPP_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-21519-1-0;rport=5061;received=127.0.0.1\r\n"
    b'From: "SIPp" <sip:sipp@127.0.0.1:5061>;tag=21519SIPpTag001\r\n'
    b"To: <sip:bob@127.0.0.1:5070>;tag=8a3bd1c2\r\n"
    b"Call-ID: 1-21519@127.0.0.1\r\n"
    b"CSeq: 1 MESSAGE\r\n"
    b"Server: notebook_im\r\n"
    b"Content-Length: 0\r\n\r\n"
)

VARIANTS = 200  # 200 copies of ~30 messages: more distinct values than any cache here keeps
UNIQUE = (
    re.compile(rb"(branch=)([^;,\s]+)", re.I),
    re.compile(rb"(;\s*tag\s*=\s*)([^;,\s>]+)", re.I),
    re.compile(rb"(^(?:call-id|i)[ \t]*:[ \t]*)(\S+)", re.I | re.M),
)
Fields = tuple[Any, str, int, str, str, str]  # method or status, Call-ID, CSeq number, CSeq method, From tag, branch


def corpus() -> list[tuple[str, bytes]]:
    """(name, bytes) of every message of the fixed corpus."""
    items = [(p.stem, p.read_bytes()) for p in sorted(CORPUS_DIR.glob("*.sip"))]
    return items + [("sipp-message", SIPP_MESSAGE), ("sipp-200-ok", SIPP_200)]


def variant(data: bytes, k: int) -> bytes:
    """Copy k of a message: "-vK" appended to every branch, tag and Call-ID value of its head (body untouched)."""
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    cut = min(ends) if ends else len(data)
    head, rest = data[:cut], data[cut:]
    for pattern in UNIQUE:
        head = pattern.sub(lambda m: m.group(1) + m.group(2) + b"-v%d" % k, head)
    return head + rest


def notebook_im_reader(pure: bool = False) -> Callable[[bytes], Fields]:
    """notebook_im.sip.parser.parse_message and the Message accessors (compiled when installed so, unless pure)."""
    if pure:
        from support.puresip import pure_sip_modules

        modules = pure_sip_modules()
        parser, message = modules["parser"], modules["message"]
        parse_message, Request = parser.parse_message, message.Request  # noqa: N806 - the class, by its name
    else:
        from notebook_im.sip.message import Request
        from notebook_im.sip.parser import parse_message

    def read(data: bytes) -> Fields:
        m = parse_message(data)
        cseq = m.cseq
        return (
            m.method if isinstance(m, Request) else m.status,
            m.call_id,
            cseq.number,
            cseq.method,
            m.from_.tag,
            m.top_via.branch,
        )

    return read


def sipmessage_reader() -> Callable[[bytes], Fields]:
    """sipmessage (Spacinov, pure Python): Message.parse and its typed properties."""
    from sipmessage import Message, Request

    def read(data: bytes) -> Fields:
        m = Message.parse(data)
        cseq = m.cseq
        return (
            m.method if isinstance(m, Request) else m.code,
            m.call_id,
            cseq.sequence,
            cseq.method,
            m.from_address.parameters.get("tag"),
            m.via[0].parameters.get("branch"),
        )

    return read


def sippy_reader() -> Callable[[bytes], Fields]:
    """sippy (the B2BUA's SIP stack): SipRequest/SipResponse from the decoded datagram, as its transaction
    manager does, and the header bodies (parsed on first access)."""
    from sippy.SipRequest import SipRequest
    from sippy.SipResponse import SipResponse

    def read(data: bytes) -> Fields:
        text = data.decode()
        if text.startswith("SIP/2.0 "):
            m: Any = SipResponse(text)
            first: Any = m.getSCode()[0]
        else:
            m = SipRequest(text)
            first = m.getMethod()
        num, method = m.getHFBody("cseq").getCSeq()
        return (
            first,
            m.getHFBody("call-id").body,
            num,
            method,
            m.getHFBody("from").getTag(),
            m.getHFBody("via").getBranch(),
        )

    return read


def pyvoip_reader() -> Callable[[bytes], Fields]:
    """pyVoIP 1.6: SIPMessage (parses in its constructor)."""
    import pyVoIP.VoIP  # noqa: F401 - pyVoIP.SIP alone fails on a circular import; its package order works
    from pyVoIP.SIP import SIPMessage, SIPMessageType

    def read(data: bytes) -> Fields:
        m = SIPMessage(data)
        cseq = m.headers["CSeq"]
        first = int(m.status) if m.type == SIPMessageType.RESPONSE else m.method
        return (
            first,
            m.headers["Call-ID"],
            int(cseq["check"]),
            cseq["method"],
            m.headers["From"]["tag"],
            m.headers["Via"][0]["branch"],
        )

    return read


LIBRARIES: dict[str, tuple[str, Callable[[], Callable[[bytes], Fields]]]] = {
    "notebook_im": ("notebook_im", notebook_im_reader),
    "notebook_im pure": ("notebook_im", lambda: notebook_im_reader(pure=True)),
    "sipmessage": ("sipmessage", sipmessage_reader),
    "sippy": ("sippy", sippy_reader),
    "pyVoIP": ("pyVoIP", pyvoip_reader),
}


def version(module: str) -> str:
    """The installed version of a distribution (or '?')."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v(module)
    except PackageNotFoundError:
        return "?"


def parses(read: Callable[[bytes], Fields], data: bytes) -> bool:
    """True if the library parses the message and reads all five fields (a non-empty From tag and branch)."""
    try:
        fields = read(data)
    except Exception:  # noqa: BLE001 - any failure means "cannot parse this one"
        return False
    return all(f not in (None, "") for f in fields)


def rate(read: Callable[[bytes], Fields], messages: list[bytes], seconds: float) -> float:
    """Messages per second over whole passes of `messages` for about `seconds`."""
    n, t0 = 0, time.perf_counter()
    while True:
        for data in messages:
            read(data)
        n += len(messages)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n / elapsed


def best_rates(
    readers: dict[str, Callable[[bytes], Fields]], messages: list[bytes], rounds: int, seconds: float
) -> dict[str, float]:
    """Interleaved rounds, best round per library."""
    best = {name: 0.0 for name in readers}
    for _ in range(rounds):
        for name, read in readers.items():
            gc.collect()
            best[name] = max(best[name], rate(read, messages, seconds))
    return best


def run(ctx: Context) -> None:
    """bench/run --only parse"""
    extra = os.environ.get("BENCH_EXTRA_PATH")  # sippy lives apart (see bench/run), appended after everything else
    if extra and extra not in sys.path:
        sys.path.append(extra)
    readers: dict[str, Callable[[bytes], Fields]] = {}
    for name, (_dist, make) in LIBRARIES.items():
        try:
            readers[name] = make()
        except ImportError as exc:
            ctx.note(f"{name} is not installed ({exc}); `bench/run` installs it (pip install -e '.[bench]')")
    copies = VARIANTS  # also with --quick: fewer copies would fit in the caches and flatter a caching parser
    items = corpus()
    variants = {n: [variant(data, k) for k in range(copies)] for n, data in items}
    ok = {
        name: {n for n, data in items if parses(read, data) and all(parses(read, v) for v in variants[n])}
        for name, read in readers.items()
    }
    for name, names in ok.items():
        missed = sorted(n for n, _ in items if n not in names)
        if missed:
            ctx.note(f"{name} cannot parse {len(missed)} of {len(items)} corpus messages: {', '.join(missed)}")
    rounds, seconds = (1, 0.2) if ctx.quick else (3, 1.0)
    import notebook_im.sip as sip

    compiled = all(sip.COMPILED.values())
    if not compiled:  # one and the same code: measuring it twice says nothing
        readers.pop("notebook_im pure", None)
        ctx.note("notebook_im's SIP core is not compiled here (pure Python): see setup.py")
    main_libs = [n for n in readers if n != "pyVoIP"]
    common = set.intersection(*(ok[n] for n in main_libs))
    messages = [variants[n][k] for k in range(copies) for n, _ in items if n in common]
    ctx.log(
        f"{len(common)} of {len(items)} corpus messages parsed by all of {', '.join(main_libs)}, {copies} copies each"
    )
    for name in main_libs[1:]:
        differ = [n for n, data in items if n in common and readers[name](data) != readers[main_libs[0]](data)]
        if differ:
            ctx.note(f"{name} reads other field values than {main_libs[0]} from: {', '.join(differ)}")
    best = best_rates({n: readers[n] for n in main_libs}, messages, rounds, seconds)
    others = {n: r for n, r in best.items() if not n.startswith("notebook_im")}
    fastest = max(others, key=others.get) if others else None
    corpus_note = f"{len(common)} of {len(items)} corpus messages parsed by all, x{copies} unique copies"
    for name in others:
        ctx.emit(
            Row(ctx.name, f"{name} {version(LIBRARIES[name][0])} ({corpus_note})", others[name], "msg/s", goal="anchor")
        )
    nim_rate = best["notebook_im"]
    r = ratio(nim_rate, others[fastest]) if fastest else None
    if "notebook_im pure" in best:
        ctx.emit(
            Row(
                ctx.name,
                f"notebook_im parse_message + 5 fields, pure Python ({corpus_note})",
                best["notebook_im pure"],
                "msg/s",
                anchor=f"fastest other: {fastest}" if fastest else "no other parser installed",
                anchor_value=others[fastest] if fastest else None,
                ratio=ratio(best["notebook_im pure"], others[fastest]) if fastest else None,
            )
        )
    ctx.emit(
        Row(
            ctx.name,
            f"notebook_im parse_message + 5 fields, {'compiled (mypyc)' if compiled else 'pure Python'} ({corpus_note})",
            nim_rate,
            "msg/s",
            anchor=f"fastest other: {fastest}" if fastest else "no other parser installed",
            anchor_value=others[fastest] if fastest else None,
            ratio=r,
            goal=">= 2x the fastest other",
            met=yes_no(r is not None and r >= 2),
        )
    )
    if "pyVoIP" in readers and ok["pyVoIP"]:
        names = [n for n, _ in items if n in ok["pyVoIP"] and n in ok["notebook_im"]]
        subset = [variants[n][k] for k in range(copies) for n in names]
        pair = best_rates({"notebook_im": readers["notebook_im"], "pyVoIP": readers["pyVoIP"]}, subset, rounds, seconds)
        mode = "compiled" if compiled else "pure Python"
        label = f"the {len(names)} corpus messages pyVoIP parses (INVITE/ACK/BYE/CANCEL, responses), x{copies}"
        ctx.emit(Row(ctx.name, f"pyVoIP {version('pyVoIP')} ({label})", pair["pyVoIP"], "msg/s", goal="anchor"))
        rv = ratio(pair["notebook_im"], pair["pyVoIP"])
        ctx.emit(
            Row(
                ctx.name,
                f"notebook_im ({mode}) on pyVoIP's {len(names)} messages, x{copies}",
                pair["notebook_im"],
                "msg/s",
                anchor="pyVoIP",
                anchor_value=pair["pyVoIP"],
                ratio=rv,
                goal=">= 2x",
                met=yes_no(rv is not None and rv >= 2),
            )
        )


def _main() -> None:  # pragma: no cover - a quick look without the harness: python bench/parsers.py
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="bench_parse_"))
    run(Context("parse", work / "rows.jsonl", work, "--quick" in sys.argv, time.monotonic() + 120))


if __name__ == "__main__":
    _main()
