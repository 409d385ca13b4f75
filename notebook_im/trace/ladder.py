"""Ladder (sequence) diagrams of SIP traffic: participants as columns, one arrow per message on the wire.

    trace.ladder()                              # the whole trace, inline SVG in Jupyter
    trace.ladder(call_id="...")                 # one Call-ID; also session=, dialog_id=, owner=
    trace.ladder(exclude=["REGISTER"])          # or methods=[...], since=/until=, where=callable(row)
    Ladder.from_frame(read_pcap(p).sip(), names={"127.0.0.1:5060": "kamailio"}).to_mermaid()

This module does not import pandas: a `Ladder` is a list of arrows that grows with `add_record()` /
`extend_records()` (SIP records as `Trace.sip_records()` returns them) and renders on demand, so a live
widget can keep one Ladder, feed it new records and re-render. `render_svg(records)` is the one-call form
that `notebook_im.widgets.ladder_view.LadderView` picks up.

Labels: a request by its method; a MESSAGE also by what it carries: the first words of its text, or its kind
when it carries no text to read: "MESSAGE (composing: active)" / "(composing: idle)" for an RFC 3994
indication, "MESSAGE (receipt: delivered)" / "(receipt: displayed)" for an RFC 5438 notification (bare, or
wrapped in message/cpim as it usually is; a conference's message/cpim shows the text inside). A response by
"status reason".

Columns: a message's owner (the endpoint that recorded it) is its own column; the other side is the
owner of that address if one in the trace uses it, otherwise the address ("host:port"), or the name given
in `names=`. A message recorded by both its sender and its receiver is drawn once. Marked: a
retransmission (the same bytes again between the same two columns) is dashed and labelled "(retransmission)";
a failure (final status >= 300) is red and has class "failure"; provisional responses are grey.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..record.extract import extract

COLOURS = {"request": "#2563eb", "provisional": "#6b7280", "success": "#16a34a", "failure": "#dc2626"}
LANE_W, ROW_H, TOP, LEFT = 190, 28, 52, 78
COMPOSING = b"application/im-iscomposing+xml"
IMDN = b"message/imdn+xml"
CPIM = b"message/cpim"


@dataclass
class Arrow:
    """One SIP message as drawn: from column `src` to column `dst`."""

    ts: float
    src: str  # address "host:port" of the sender
    dst: str  # address of the receiver
    owner: str  # who recorded it ("" if nobody, e.g. a pcap)
    direction: str  # "out", "in" or "" (unknown)
    method: str | None
    status: int | None
    reason: str = ""
    call_id: str | None = None
    preview: str = ""  # a few words of a MESSAGE body
    key: bytes = b""  # the raw bytes (to spot retransmissions and double recordings)
    retransmission: bool = False  # set at layout time
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if self.status is None:
            return "request"
        if self.status < 200:
            return "provisional"
        return "success" if self.status < 300 else "failure"

    @property
    def label(self) -> str:
        if self.status is None:
            text = self.method or "?"
            if self.preview:
                text += f" {self.preview}"
        else:
            text = f"{self.status} {self.reason}".strip()
        return text + (" (retransmission)" if self.retransmission else "")


def _addr(a: Any) -> str:
    if isinstance(a, str):
        return a
    if not a:
        return ""
    host, port = a[0], a[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _visible(text: str) -> str:
    """Text a peer chose (a reason phrase, a body) without the control and format characters that would reorder
    or hide the labels around it in a diagram (bidi overrides and isolates, zero-width characters)."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf"))


def _content_type(head: bytes) -> bytes:
    """The media type of a Content-Type header (also the compact `c:`) in `head`, lower-cased, or b''."""
    for line in head.split(b"\n"):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() in (b"content-type", b"c"):
            return value.split(b";", 1)[0].strip().lower()
    return b""


def _unwrap_cpim(body: bytes) -> tuple[bytes, bytes]:
    """(inner content type, inner body) of a message/cpim body (RFC 3862: CPIM headers, a blank line, MIME
    headers, a blank line, the content); (b'', b'') if it is not one."""
    sep = b"\r\n\r\n" if b"\r\n\r\n" in body else b"\n\n"
    _cpim_headers, _, rest = body.partition(sep)
    mime, found, inner = rest.partition(sep)
    if not found:
        return b"", b""
    return _content_type(mime), inner


_IMDN_STATUS = re.compile(
    rb"<(?:\w+:)?(delivery|display|processing)-notification\b[^>]*>\s*<(?:\w+:)?status\b[^>]*>"
    rb"\s*<(?:\w+:)?([A-Za-z-]+)"
)
_COMPOSING_STATE = re.compile(rb"<(?:\w+:)?state\b[^>]*>\s*([A-Za-z]+)\s*<")


def _kind_label(content_type: bytes, body: bytes) -> str | None:
    """The label of a MESSAGE that carries no text to show: "(receipt: delivered)" for an RFC 5438 notification,
    "(composing: active)" / "(composing: idle)" for an RFC 3994 indication; None for anything else."""
    if content_type == COMPOSING:
        m = _COMPOSING_STATE.search(body)
        state = m.group(1).decode("ascii").lower() if m else ""
        return f"(composing: {state})" if state in ("active", "idle") else "(composing)"
    if content_type == IMDN:
        m = _IMDN_STATUS.search(body)
        return f"(receipt: {m.group(2).decode('ascii').lower()})" if m else "(receipt)"
    return None


def _preview(raw: bytes, limit: int = 24) -> str:
    """What a MESSAGE arrow says after the method: its kind for composing indications and receipts (bare or in
    message/cpim), otherwise the first words of its text (of the text inside a message/cpim wrapper)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    content_type = _content_type(head)
    if content_type == CPIM:
        inner_type, inner = _unwrap_cpim(body)
        if inner_type:
            content_type, body = inner_type, inner
    kind = _kind_label(content_type, body)
    if kind is not None:
        return kind
    text = _visible(body.decode("utf-8", "replace").replace("\r\n", " ").replace("\n", " ")).strip()
    if not text:
        return ""
    return f'"{text[: limit - 1]}…"' if len(text) > limit else f'"{text}"'


def arrow_from_raw(ts: float, direction: str, local: Any, remote: Any, raw: bytes, owner: str) -> Arrow:
    """An Arrow from the fields of one recorded SIP message (see `Trace.record_sip`)."""
    method, status, call_id, _cseq, _cm, _ft, _tt, _branch, _size = extract(raw)
    local_s, remote_s = _addr(local), _addr(remote)
    src, dst = (local_s, remote_s) if direction == "out" else (remote_s, local_s)
    reason = ""
    if status is not None:
        reason = _visible(raw.split(b"\r\n", 1)[0][12:].decode("utf-8", "replace")).strip()
    preview = _preview(raw) if method == "MESSAGE" else ""
    return Arrow(ts, src, dst, owner or "", direction or "", method, status, reason, call_id, preview, raw)


class Ladder:
    """A ladder diagram: `.add_record()`/`.extend_records()` to grow it, `.to_svg()`, `.to_mermaid()`,
    `.filter(...)`; shows inline in Jupyter (`_repr_svg_`, `_repr_html_`)."""

    def __init__(
        self,
        arrows: Iterable[Arrow] = (),
        *,
        names: dict[str, str] | None = None,
        max_rows: int | None = 500,
        title: str | None = None,
    ) -> None:
        self.arrows: list[Arrow] = list(arrows)
        self.names = dict(names or {})
        self.max_rows = max_rows
        self.title = title

    # -- building ------------------------------------------------------------------------------------------
    def add(self, arrow: Arrow) -> Ladder:
        self.arrows.append(arrow)
        return self

    def add_record(self, record: Any) -> Ladder:
        """Add one SIP record (anything with timestamp, direction, local, remote, raw, owner)."""
        self.arrows.append(
            arrow_from_raw(record.timestamp, record.direction, record.local, record.remote, record.raw, record.owner)
        )
        return self

    def extend_records(self, records: Iterable[Any]) -> Ladder:
        for record in records:
            self.add_record(record)
        return self

    @classmethod
    def from_records(cls, records: Iterable[Any], **kwargs: Any) -> Ladder:
        return cls(**kwargs).extend_records(records)

    @classmethod
    def from_frame(
        cls,
        frame: Any,
        *,
        call_id: str | None = None,
        dialog_id: str | None = None,
        session: Any = None,
        owner: str | None = None,
        methods: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        since: Any = None,
        until: Any = None,
        where: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> Ladder:
        """A ladder of the rows of a `sip()` frame, filtered: `call_id`, `dialog_id`, `session` (an
        ImSession: its Call-ID), `owner`, `methods` to keep / `exclude` (by method, responses follow their
        CSeq method), `since`/`until` timestamps, `where` (a function of the frame returning a mask)."""
        df = frame
        if session is not None:
            dialog = getattr(session, "dialog", None)
            call_id = getattr(dialog, "call_id", None) if dialog is not None else getattr(session, "call_id", None)
            if call_id is None:
                df = df.iloc[0:0]
        if call_id is not None:
            df = df[df["call_id"] == call_id]
        if dialog_id is not None:
            df = df[df["call_id"] == dialog_id.split(";")[0]]
        if owner is not None:
            df = df[df["owner"] == owner]
        if methods is not None:
            df = df[df["method"].isin(list(methods))]
        if exclude is not None:
            df = df[~df["method"].isin(list(exclude))]
        if since is not None:
            df = df[df["timestamp"] >= _ts(since)]
        if until is not None:
            df = df[df["timestamp"] <= _ts(until)]
        if where is not None:
            df = df[where(df)]
        ts = df["timestamp"].astype("int64").to_numpy() / 1e9 if len(df) else []
        arrows = []
        for i, (direction, src, dst, raw, own) in enumerate(
            zip(
                df["direction"].astype(object),
                df["src"].astype(object),
                df["dst"].astype(object),
                df["raw"].astype(object),
                df["owner"].astype(object),
            )
        ):
            raw_b = raw.encode("utf-8") if isinstance(raw, str) else b""
            d = direction if isinstance(direction, str) else ""
            local, remote = (src, dst) if d == "out" else (dst, src)
            arrows.append(arrow_from_raw(float(ts[i]), d, local, remote, raw_b, own if isinstance(own, str) else ""))
        return cls(arrows, **kwargs)

    def filter(
        self,
        predicate: Callable[[Arrow], bool] | None = None,
        *,
        call_id: str | None = None,
        methods: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> Ladder:
        """A new Ladder with only the arrows that pass (a predicate on `Arrow`, and/or the keywords)."""
        keep = []
        for a in self.arrows:
            m = a.method if a.method else None
            if call_id is not None and a.call_id != call_id:
                continue
            if methods is not None and m not in methods and not (a.status is not None and _cseq_method(a) in methods):
                continue
            if exclude is not None and (m in exclude or (a.status is not None and _cseq_method(a) in exclude)):
                continue
            if predicate is not None and not predicate(a):
                continue
            keep.append(a)
        return Ladder(keep, names=self.names, max_rows=self.max_rows, title=self.title)

    # -- layout ----------------------------------------------------------------------------------------------
    def layout(self) -> tuple[list[str], list[tuple[Arrow, int, int]]]:
        """(column names, [(arrow, from column, to column)]) after merging double recordings and marking
        retransmissions; the newest `max_rows` arrows."""
        arrows = sorted(self.arrows, key=lambda a: a.ts)
        owner_of: dict[str, str] = {}
        for a in arrows:
            if a.owner and a.direction in ("out", "in"):
                owner_of.setdefault(a.src if a.direction == "out" else a.dst, a.owner)

        def column(addr: str, arrow: Arrow, own_side: bool) -> str:
            if own_side and arrow.owner:
                return arrow.owner
            if addr in self.names:
                return self.names[addr]
            return owner_of.get(addr, addr)

        columns: list[str] = []
        position: dict[str, int] = {}
        drawn: list[tuple[Arrow, int, int]] = []
        seen: set = set()
        occurrences: dict[tuple, int] = {}
        for a in arrows:
            src = column(a.src, a, a.direction == "out")
            dst = column(a.dst, a, a.direction == "in")
            occ_key = (src, dst, a.key, a.direction)
            occ = occurrences.get(occ_key, 0)
            occurrences[occ_key] = occ + 1
            wire_key = (src, dst, a.key, occ)
            if wire_key in seen:
                continue  # the same message on the wire, recorded by its other end
            seen.add(wire_key)
            shown = Arrow(**{**a.__dict__, "retransmission": occ > 0})
            for name in (src, dst):
                if name not in position:
                    position[name] = len(columns)
                    columns.append(name)
            drawn.append((shown, position[src], position[dst]))
        if self.max_rows is not None and len(drawn) > self.max_rows:
            drawn = drawn[-self.max_rows :]
        return columns, drawn

    # -- output ----------------------------------------------------------------------------------------------
    def to_svg(self) -> str:
        columns, drawn = self.layout()
        if not columns:
            return (
                '<svg xmlns="http://www.w3.org/2000/svg" width="320" height="40" class="nim-ladder">'
                '<text x="10" y="24" font-family="sans-serif" font-size="13" fill="#6b7280">'
                "No SIP messages.</text></svg>"
            )
        width = LEFT + LANE_W * len(columns)
        height = TOP + ROW_H * (len(drawn) + 1)
        x = [LEFT + LANE_W * i + LANE_W // 2 for i in range(len(columns))]
        out = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="nim-ladder" '
            f'font-family="-apple-system, Segoe UI, Roboto, sans-serif" font-size="12">',
            "<defs>"
            + "".join(
                f'<marker id="nim-ladder-{k}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
                f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{c}"/></marker>'
                for k, c in COLOURS.items()
            )
            + "</defs>",
        ]
        if self.title:
            out.append(f'<text x="6" y="14" font-weight="600">{html.escape(self.title)}</text>')
        for i, name in enumerate(columns):
            out.append(
                f'<g class="participant"><text x="{x[i]}" y="{TOP - 18}" text-anchor="middle" '
                f'font-weight="600">{html.escape(name)}</text>'
                f'<line x1="{x[i]}" y1="{TOP - 10}" x2="{x[i]}" y2="{height - 4}" stroke="#cbd5e1" '
                f'stroke-width="2"/></g>'
            )
        t0 = drawn[0][0].ts if drawn else 0.0
        for n, (a, i, j) in enumerate(drawn):
            y = TOP + ROW_H * (n + 1) - 6
            colour = COLOURS[a.kind]
            classes = f"arrow {a.kind}" + (" retransmission" if a.retransmission else "")
            dash = ' stroke-dasharray="5 4"' if a.retransmission or a.kind == "provisional" else ""
            label = html.escape(a.label)
            out.append(
                f'<g class="{classes}" data-src="{html.escape(columns[i])}" data-dst="{html.escape(columns[j])}"'
                f' data-call-id="{html.escape(a.call_id or "")}">'
                f"<title>{html.escape(a.call_id or '')}</title>"
                f'<text x="6" y="{y + 4}" fill="#6b7280" font-size="10.5">+{a.ts - t0:.3f}s</text>'
            )
            if i == j:
                out.append(
                    f'<path d="M{x[i]},{y - 8} h30 v10 h-30" fill="none" stroke="{colour}"'
                    f' marker-end="url(#nim-ladder-{a.kind})"/>'
                )
            else:
                out.append(
                    f'<line x1="{x[i]}" y1="{y}" x2="{x[j]}" y2="{y}" stroke="{colour}" stroke-width="1.6"'
                    f'{dash} marker-end="url(#nim-ladder-{a.kind})"/>'
                )
            out.append(
                f'<text class="label" x="{(x[i] + x[j]) / 2}" y="{y - 5}" text-anchor="middle" '
                f'fill="{colour}">{label}</text></g>'
            )
        out.append("</svg>")
        return "".join(out)

    def to_mermaid(self) -> str:
        """Mermaid `sequenceDiagram` text (requests solid, responses dotted, failures with a cross)."""
        columns, drawn = self.layout()
        lines = ["sequenceDiagram"]
        for i, name in enumerate(columns):
            lines.append(f"    participant P{i} as {_mermaid_text(name)}")
        for a, i, j in drawn:
            if a.kind == "request":
                arrow = "->>"
            elif a.kind == "failure":
                arrow = "--x"
            else:
                arrow = "-->>"
            lines.append(f"    P{i}{arrow}P{j}: {_mermaid_text(a.label)}")
        return "\n".join(lines) + "\n"

    def _repr_svg_(self) -> str:
        return self.to_svg()

    def _repr_html_(self) -> str:
        return f'<div class="nim-ladder-wrap" style="overflow:auto">{self.to_svg()}</div>'

    def __len__(self) -> int:
        return len(self.arrows)

    def __repr__(self) -> str:
        columns, drawn = self.layout()
        return f"<Ladder {len(drawn)} arrows between {len(columns)} participants>"


def _cseq_method(a: Arrow) -> str | None:
    _m, _s, _cid, _cseq, cm, *_ = extract(a.key)
    return cm


def _mermaid_text(text: str) -> str:
    return text.replace("#", "#35;").replace(";", "#59;").replace("\n", " ")


def _ts(value: Any) -> Any:
    import pandas as pd

    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts


def render_svg(records: Sequence[Any], *, max_rows: int = 300) -> str:
    """A ladder diagram of SIP records (`Trace.sip_records()`) as SVG: the renderer LadderView shares."""
    return Ladder.from_records(records, max_rows=max_rows).to_svg()
