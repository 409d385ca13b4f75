"""The trace as pandas DataFrames, each with a fixed, documented schema (column order and dtypes).

    SIP_SCHEMA       one row per SIP message on the wire          trace.sip()
    MESSAGES_SCHEMA  one row per IM message sent or received       trace.messages()
    EVENTS_SCHEMA    one row per API event                         trace.events()
    DROPS_SCHEMA     one row per dropped datagram / stream chunk   trace.drops_frame()

Conventions (DESIGN.md §4): timestamps are tz-aware UTC (`datetime64[ns, UTC]`), method / direction /
transport / mode / status words are categoricals with fixed categories, free text is the pandas `string`
dtype, status codes are nullable integers (`Int16`), and an empty frame has the same columns and dtypes.

The SIP frame is built column-wise with pyarrow (strings, dictionary encoding, element-wise joins) from the
recorder's columns; the header fields were already pulled out of the raw bytes (extract.py), so building a
1,000,000-row frame costs about a second (bench/trace_frames.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:  # pragma: no cover
    from ..record.recorder import SipSnapshot, Trace

UTC_NS = pd.DatetimeTZDtype("ns", "UTC")
STRING = pd.StringDtype()

DIRECTIONS = ["in", "out"]
TRANSPORTS = ["udp", "tcp", "tls", "ws", "wss", "sctp"]
METHODS = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "MESSAGE",
    "OPTIONS",
    "REGISTER",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "REFER",
    "INFO",
    "PRACK",
    "UPDATE",
]
MODES = ["session", "pager"]
MESSAGE_STATUSES = ["delivered", "failed", "received"]
MESSAGE_STATES = ["sending", "sent", "delivered", "displayed", "failed"]  # RFC 5438 receipts, sent messages
EVENT_TYPES = [
    "EndpointStateChanged",
    "IncomingSession",
    "SessionStateChanged",
    "ParticipantAdded",
    "ParticipantRemoved",
    "ParticipantStateChanged",
    "ComposingChanged",
    "MessageReceived",
    "MessageSending",
    "MessageDelivered",
    "MessageFailed",
    "SessionTerminated",
    "MessageDeliveryNotified",
    "MessageDisplayed",
    "SessionModeChanged",
]


def _cat(categories: Sequence[str]) -> pd.CategoricalDtype:
    return pd.CategoricalDtype(list(categories))


# column -> dtype. Categoricals whose categories depend on the data (owner, addresses) are "category";
# method keeps the standard methods first and appends any other method found.
SIP_SCHEMA: dict[str, Any] = {
    "timestamp": UTC_NS,  # when the message was sent or received (UTC)
    "owner": "category",  # the endpoint URI / "server" / pcap file that recorded it
    "direction": _cat(DIRECTIONS),  # "out" sent by owner, "in" received by owner; NA in a pcap without `local=`
    "transport": _cat(TRANSPORTS),
    "src": "category",  # "host:port" ("[v6]:port") of the sender
    "dst": "category",  # "host:port" of the receiver
    "method": _cat(METHODS),  # request method; for a response the method of its CSeq
    "status": "Int16",  # response status code; NA for a request
    "call_id": STRING,
    "cseq": "Int64",
    "from_tag": STRING,
    "to_tag": STRING,
    "branch": STRING,  # branch of the top Via
    "transaction_id": STRING,  # branch:method (ACK and CANCEL belong with their INVITE's branch)
    "dialog_id": STRING,  # call_id;tag;tag (tags sorted, so both sides agree); NA before the To tag
    "body_size": "int64",
    "raw": STRING,  # the message as sent/received, credentials redacted at record time
}

MESSAGES_SCHEMA: dict[str, Any] = {
    "owner": STRING,  # the endpoint that sent or received it
    "session_id": STRING,  # ImSession.id (from events) or Call-ID (from SIP); NA for pager messages outside a session
    "direction": _cat(DIRECTIONS),
    "sender": STRING,
    "recipient": STRING,
    "text": STRING,
    "content_type": STRING,
    "mode": _cat(MODES),
    "sent_at": UTC_NS,  # when it was sent (NaT for a received message known only from events)
    "delivered_at": UTC_NS,  # final 2xx (sent) or arrival (received); NaT if it failed
    "status": _cat(MESSAGE_STATUSES),  # the SIP outcome: delivered (2xx) / failed, or received
    "state": _cat(MESSAGE_STATES),  # sent messages: sending/sent/delivered/displayed/failed (receipts); NA if received
    "sip_status": "Int16",  # final SIP status of the MESSAGE; NA for received messages from events
    "latency": "float64",  # seconds from send to final response
    "message_id": STRING,
    "call_id": STRING,  # the Call-ID of the MESSAGE that carried it (events and SIP alike)
    "reason": STRING,
}

EVENTS_SCHEMA: dict[str, Any] = {
    "timestamp": UTC_NS,
    "owner": STRING,  # the endpoint URI the event was raised on
    "type": _cat(EVENT_TYPES),
    "session_id": STRING,
    "participant": STRING,  # participant / inviter URI (for message events: the remote party)
    "state": STRING,  # new state (state changes), "composing"/"idle", or NA
    "status": "Int16",
    "reason": STRING,
    "text": STRING,
    "message_id": STRING,
    "detail": STRING,  # all fields of the event as JSON
}

DROPS_SCHEMA: dict[str, Any] = {
    "timestamp": UTC_NS,
    "owner": STRING,
    "transport": _cat(TRANSPORTS),
    "remote": STRING,
    "reason": STRING,
    "size": "int64",
    "raw": STRING,
}

SCHEMAS = {"sip": SIP_SCHEMA, "messages": MESSAGES_SCHEMA, "events": EVENTS_SCHEMA, "drops": DROPS_SCHEMA}


def empty(schema: dict[str, Any]) -> pd.DataFrame:
    """A zero-row frame with the columns and dtypes of `schema`."""
    return pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in schema.items()})


def conform(df: pd.DataFrame, schema: dict[str, Any]) -> pd.DataFrame:
    """Reorder/cast `df` to `schema` (missing columns become NA); used for frames read back from CSV."""
    out = {}
    for name, dtype in schema.items():
        col = df[name] if name in df else pd.Series([pd.NA] * len(df), index=df.index, dtype=object)
        if isinstance(dtype, pd.DatetimeTZDtype):
            col = pd.to_datetime(col, utc=True).astype(UTC_NS)
        elif dtype == "category" and not isinstance(col.dtype, pd.CategoricalDtype):
            col = col.astype(STRING).astype("category")
        elif isinstance(dtype, pd.CategoricalDtype) and col.dtype != dtype:
            extra = sorted(set(col.dropna().astype(str)) - set(dtype.categories))
            col = col.astype(object).astype(pd.CategoricalDtype(list(dtype.categories) + extra))
        elif col.dtype != dtype:
            col = col.astype(dtype)
        out[name] = col
    return pd.DataFrame(out, index=df.index)


# -- helpers ----------------------------------------------------------------------------------------------
def _from_bytes(values: Sequence[Any], *, empty_is_null: bool) -> pa.Array:
    """A pyarrow string array straight from a list of bytes (None allowed): one join, one offsets array,
    no per-object conversion (which is ~10x slower for a million small objects). Non-UTF-8 input is
    decoded with replacement characters."""
    n = len(values)
    if n and None in values:
        values = [b"" if v is None else v for v in values]
        empty_is_null = True
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = b"".join(values)
    large = offsets[-1] >= 2**31 - 1
    validity = None
    if empty_is_null:
        present = lengths > 0
        if not present.all():
            validity = pa.array(present).buffers()[1]
    typ = pa.large_string() if large else pa.string()
    arr = pa.Array.from_buffers(
        typ, n, [validity, pa.py_buffer(offsets if large else offsets.astype(np.int32)), pa.py_buffer(data)]
    )
    try:
        arr.validate(full=True)  # UTF-8 check
    except pa.ArrowInvalid:
        decoded = (
            [v.decode("utf-8", "replace") if v else None for v in values]
            if empty_is_null
            else [v.decode("utf-8", "replace") for v in values]
        )
        arr = pa.array(decoded, typ)
    return arr


def _strings(values: Sequence[Any]) -> pa.Array:
    """str/None (the extracted header fields) -> pyarrow string array; bytes are decoded (replacing errors)."""
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
        return pa.array(
            [v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else v for v in values], pa.string()
        )


def _raw_strings(values: Sequence[bytes]) -> pa.Array:
    return _from_bytes(values, empty_is_null=False)


def _pd_string(arr: pa.Array | pa.ChunkedArray) -> pd.api.extensions.ExtensionArray:
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string()) if len(arr) == 0 else arr
    if isinstance(arr, pa.Array):
        arr = pa.chunked_array([arr], arr.type)
    if STRING.storage == "pyarrow":
        return pd.arrays.ArrowStringArray(arr)
    return pd.array(arr.to_pylist(), dtype=STRING)  # pragma: no cover - python-storage strings


def _pd_category(arr: pa.Array, categories: Sequence[str] | None = None) -> pd.Categorical:
    """pyarrow strings -> pandas Categorical (fixed categories first, any others appended, sorted)."""
    enc = arr.dictionary_encode()
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    codes = enc.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    mask = enc.is_null().to_numpy(zero_copy_only=False)
    found = enc.dictionary.to_pylist()
    if categories is None:
        cats = sorted(found)
    else:
        cats = list(categories) + sorted(set(found) - set(categories))
    position = {c: i for i, c in enumerate(cats)}
    remap = np.array([position[c] for c in found] + [-1], dtype=np.int32)
    codes = np.where(mask, -1, remap[np.where(mask, len(found), codes)]) if len(codes) else codes.astype(np.int32)
    return pd.Categorical.from_codes(codes.astype(np.int32), categories=cats)


def _nullable_int(values: Sequence[Any], dtype: str) -> pd.api.extensions.ExtensionArray:
    arr = pa.array(values, pa.int64())
    data = arr.fill_null(0).to_numpy(zero_copy_only=False)
    mask = arr.is_null().to_numpy(zero_copy_only=False)
    np_dtype = {"Int16": np.int16, "Int32": np.int32, "Int64": np.int64}[dtype]
    return pd.arrays.IntegerArray(data.astype(np_dtype), mask)


def _utc(seconds: Sequence[float]) -> pd.DatetimeIndex:
    arr = np.asarray(seconds, dtype=np.float64)
    missing = np.isnan(arr)
    ns = (np.where(missing, 0.0, arr) * 1e9).round().astype("int64")
    if missing.any():
        ns[missing] = np.iinfo(np.int64).min  # NaT
    return pd.DatetimeIndex(ns.view("datetime64[ns]")).tz_localize("UTC")


def _addr(a: Any) -> str:
    if not a:
        return ""
    host, port = a[0], a[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _codes(values: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """Integer codes of hashable values (first-seen order) and the distinct values; C-speed loops only."""
    seen = dict.fromkeys(values)
    for i, key in enumerate(seen):
        seen[key] = i
    codes = np.fromiter(map(seen.__getitem__, values), dtype=np.int32, count=len(values))
    return codes, list(seen)


# -- the SIP frame ----------------------------------------------------------------------------------------
def sip_frame(
    trace: Trace | SipSnapshot, *, owner: str | None = None, call_id: str | None = None, raw: bool = True
) -> pd.DataFrame:
    # every column read together: rows evicted (or recorded) meanwhile cannot shift one column against another
    trace = trace.sip_snapshot()
    n = len(trace.sip_owner)
    if n == 0:
        df = empty(SIP_SCHEMA)
        return df if raw else df.drop(columns="raw")
    method, status, cid, cseq, cseq_method, from_tag, to_tag, branch, body_size = trace.header_columns(n)
    owners = trace.sip_owner[:n]
    directions = trace.sip_direction[:n]

    ts = _utc(trace.sip_ts[:n])
    owner_codes, owner_values = _codes(owners)
    dcodes, dvalues = _codes(directions)
    dir_codes = np.array([{"in": 0, "out": 1}.get(d, -1) for d in dvalues] + [-1], dtype=np.int8)[dcodes]
    tcodes, tvalues = _codes(trace.sip_transport[:n])
    tcats = TRANSPORTS + sorted(set(tvalues) - set(TRANSPORTS))
    transports = pd.Categorical.from_codes(
        np.array([tcats.index(t) for t in tvalues], dtype=np.int32)[tcodes], categories=tcats
    )

    # addresses: code the (host, port) tuples, then pick local/remote per direction
    local_codes, local_values = _codes(trace.sip_local[:n])
    remote_codes, remote_values = _codes(trace.sip_remote[:n])
    addr_names = sorted({_addr(a) for a in local_values} | {_addr(a) for a in remote_values})
    position = {name: i for i, name in enumerate(addr_names)}
    local_map = np.array([position[_addr(a)] for a in local_values], dtype=np.int32)
    remote_map = np.array([position[_addr(a)] for a in remote_values], dtype=np.int32)
    is_out = dir_codes == 1
    src = np.where(is_out, local_map[local_codes], remote_map[remote_codes])
    dst = np.where(is_out, remote_map[remote_codes], local_map[local_codes])

    method_a = _strings(method)
    cseq_method_a = _strings(cseq_method)
    call_id_a = _strings(cid)
    from_a = _strings(from_tag)
    to_a = _strings(to_tag)
    branch_a = _strings(branch)
    txn_method = pc.if_else(pc.is_in(cseq_method_a, pa.array(["ACK", "CANCEL"])), pa.scalar("INVITE"), cseq_method_a)
    txn = pc.binary_join_element_wise(branch_a, txn_method, ":")
    lo = pc.if_else(pc.less_equal(from_a, to_a), from_a, to_a)
    hi = pc.if_else(pc.less_equal(from_a, to_a), to_a, from_a)
    dialog = pc.binary_join_element_wise(call_id_a, lo, hi, ";")

    columns: dict[str, Any] = {
        "timestamp": ts,
        "owner": pd.Categorical.from_codes(owner_codes, categories=[str(o) for o in owner_values]),
        "direction": pd.Categorical.from_codes(dir_codes, dtype=SIP_SCHEMA["direction"]),
        "transport": transports,
        "src": pd.Categorical.from_codes(src, categories=addr_names),
        "dst": pd.Categorical.from_codes(dst, categories=addr_names),
        "method": _pd_category(pc.coalesce(method_a, cseq_method_a), METHODS),
        "status": _nullable_int(status, "Int16"),
        "call_id": _pd_string(call_id_a),
        "cseq": _nullable_int(cseq, "Int64"),
        "from_tag": _pd_string(from_a),
        "to_tag": _pd_string(to_a),
        "branch": _pd_string(branch_a),
        "transaction_id": _pd_string(txn),
        "dialog_id": _pd_string(dialog),
        "body_size": np.asarray(body_size, dtype=np.int64),
    }
    if raw:
        columns["raw"] = _pd_string(_raw_strings(trace.sip_raw[:n]))
    df = pd.DataFrame(columns, copy=False)
    if owner is not None:
        df = df[df["owner"] == owner].reset_index(drop=True)
    if call_id is not None:
        df = df[df["call_id"] == call_id].reset_index(drop=True)
    return df


# -- the events frame -------------------------------------------------------------------------------------
def _uri(value: Any) -> Any:
    if value is None:
        return None
    return str(getattr(value, "uri", value))


def _session_id(value: Any) -> Any:
    return None if value is None else getattr(value, "id", None)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def events_frame(trace: Trace, *, owner: str | None = None, session_id: str | None = None) -> pd.DataFrame:
    from ..api.events import event_fields

    rows = []
    for rec in trace.event_records():
        ev = rec.event
        name = type(ev).__name__
        when = getattr(ev, "timestamp", None)
        participant = getattr(ev, "participant", None) or getattr(ev, "inviter", None)
        if participant is None and getattr(ev, "recipient", ""):
            participant = ev.recipient
        state = getattr(ev, "state", None)
        if name == "ComposingChanged":
            state = "composing" if ev.composing else "idle"
        elif name == "SessionModeChanged":
            state = ev.mode
        fields = {k: _jsonable(v) for k, v in event_fields(ev).items()}
        rows.append(
            (
                when.timestamp() if when is not None else rec.timestamp,
                rec.owner,
                name,
                _session_id(getattr(ev, "session", None)),
                _uri(participant),
                None if state is None else str(getattr(state, "value", state)),
                getattr(ev, "status", None),
                getattr(ev, "reason", None),
                getattr(ev, "text", None),
                getattr(ev, "message_id", None) or None,
                json.dumps(fields, ensure_ascii=False, default=str),
            )
        )
    if not rows:
        df = empty(EVENTS_SCHEMA)
    else:
        cols = list(zip(*rows))
        df = pd.DataFrame(
            {
                "timestamp": _utc(cols[0]),
                "owner": pd.array(cols[1], dtype=STRING),
                "type": pd.Categorical(cols[2], dtype=EVENTS_SCHEMA["type"])
                if set(cols[2]) <= set(EVENT_TYPES)
                else pd.Categorical(cols[2], categories=EVENT_TYPES + sorted(set(cols[2]) - set(EVENT_TYPES))),
                "session_id": pd.array(cols[3], dtype=STRING),
                "participant": pd.array(cols[4], dtype=STRING),
                "state": pd.array(cols[5], dtype=STRING),
                "status": _nullable_int(cols[6], "Int16"),
                "reason": pd.array(cols[7], dtype=STRING),
                "text": pd.array(cols[8], dtype=STRING),
                "message_id": pd.array(cols[9], dtype=STRING),
                "detail": pd.array(cols[10], dtype=STRING),
            }
        )
    if owner is not None:
        df = df[df["owner"] == owner].reset_index(drop=True)
    if session_id is not None:
        df = df[df["session_id"] == session_id].reset_index(drop=True)
    return df


# -- the messages frame -----------------------------------------------------------------------------------
def _messages_rows_from_events(trace: Trace) -> list[tuple]:
    """One row per message the events describe (conversations.py rebuilds them; a message still in flight is
    "sending" with no status)."""
    from .conversations import rebuild

    rows = []
    for item in rebuild(trace.event_records()).messages:
        m = item.message
        delivered = m.delivered_at.timestamp() if m.delivered_at is not None else None
        if m.direction == "in":
            rows.append(
                (
                    item.owner,
                    item.session_id,
                    "in",
                    m.sender,
                    m.recipient,
                    m.text,
                    m.content_type,
                    m.mode,
                    None,
                    delivered,
                    "received",
                    None,
                    None,
                    None,
                    m.id or None,
                    item.call_id,
                    None,
                )
            )
            continue
        settled = m.status != "sending"
        rows.append(
            (
                item.owner,
                item.session_id,
                "out",
                m.sender,
                m.recipient,
                m.text,
                m.content_type,
                m.mode,
                m.timestamp.timestamp(),
                delivered,
                m.status if settled else None,
                m.state,
                m.sip_status if settled else None,
                item.latency,
                m.id or None,
                item.call_id,
                (m.reason or None) if settled else None,
            )
        )
    return rows


_NOT_IM = ("application/im-iscomposing+xml", "message/imdn+xml")


def _messages_rows_from_sip(trace: Trace | SipSnapshot) -> list[tuple]:
    from ..im import cpim, imdn
    from ..sip.parser import parse_message

    trace = trace.sip_snapshot()  # one consistent read for the frame and the raw messages below
    df = sip_frame(trace, raw=False)
    if df.empty:
        return []
    is_msg = (df["method"] == "MESSAGE").to_numpy()
    sub = df[is_msg]
    n_all = len(trace.sip_owner)
    raws = trace.sip_raw[:n_all]
    positions = np.flatnonzero(is_msg)
    key_cols = ["owner", "call_id", "cseq", "from_tag"]
    requests: dict[tuple, dict] = {}
    finals: dict[tuple, tuple[float, int, str]] = {}
    receipts: dict[tuple[str, str], list[Any]] = {}  # (owner, message id) -> im.imdn inputs seen in the trace
    ts = np.asarray(trace.sip_ts[:n_all], dtype=np.float64)[positions]
    status = sub["status"].to_numpy(dtype="float64", na_value=np.nan)
    keys = list(zip(*(sub[c].astype(object).where(sub[c].notna(), None) for c in key_cols)))
    directions = sub["direction"].astype(object).where(sub["direction"].notna(), None).tolist()
    focuses = _focus_uris(raws)
    for i, pos in enumerate(positions):
        key = keys[i]
        if np.isnan(status[i]):
            if key in requests:
                continue  # a retransmission, or the same request seen again at the next hop
            try:
                msg = parse_message(raws[pos])
            except Exception:  # noqa: BLE001 - a broken message is simply not an IM
                continue
            ct = (msg.content_type or "text/plain").split(";")[0].strip().lower()
            if ct in (imdn.CONTENT_TYPE, cpim.CONTENT_TYPE):
                _note_receipt(receipts, key[0], ct, msg.body)
            if ct in _NOT_IM:
                continue
            try:
                text = msg.text().replace("\r\n", "\n")
            except Exception:  # noqa: BLE001
                text = msg.body.decode("utf-8", "replace")
            sender = str(msg.from_.uri.without_params("transport"))
            if ct == "message/cpim":
                try:
                    wrapped = cpim.unwrap(msg.body)
                except Exception:  # noqa: BLE001 - keep the focus as the sender
                    pass
                else:
                    if _bare(msg.from_.uri) in focuses:
                        # relayed by a conference focus: the wrapper names the original sender. From anybody
                        # else a CPIM From is only a claim (mallory's wrapper saying "bob"): the SIP From stays
                        sender = wrapped.sender
                    ct = wrapped.content_type.split(";")[0].strip().lower()
                    text = wrapped.body.decode("utf-8", "replace").replace("\r\n", "\n")
                    if ct in _NOT_IM:
                        continue
            to = msg.to
            requests[key] = dict(
                ts=ts[i],
                direction=directions[i],
                sender=sender,
                recipient=str(to.uri.without_params("transport")),
                text=text,
                ct=ct,
                mode="session" if to.tag else "pager",
                call_id=msg.call_id,
                message_id=msg.headers.get("Imdn-Message-ID"),
            )
        elif status[i] >= 200:
            reason = bytes(raws[pos].split(b"\r\n", 1)[0][12:]).decode("utf-8", "replace").strip()
            finals[key] = (ts[i], int(status[i]), reason)  # the last final response seen (the one back at the sender)
    rows = []
    for key, r in requests.items():
        final = finals.get(key)
        owner = key[0]
        sent = r["ts"]
        state = None
        if r["direction"] == "in":
            status_word, delivered, sent = "received", r["ts"], None
        elif final is not None and 200 <= final[1] < 300:
            status_word, delivered = "delivered", final[0]
        else:
            status_word, delivered = "failed", None
        if status_word != "received":
            state = imdn.MessageState.SENDING
            for event in [
                imdn.Input.RESPONSE_2XX if status_word == "delivered" else imdn.Input.RESPONSE_ERROR,
                *receipts.get((owner, r["message_id"]), ()),
            ]:
                state = imdn.advance(state, event)
            state = state.value
        latency = (final[0] - r["ts"]) if final is not None and status_word == "delivered" else None
        rows.append(
            (
                owner,
                r["call_id"] if r["mode"] == "session" else None,
                r["direction"],
                r["sender"],
                r["recipient"],
                r["text"],
                r["ct"],
                r["mode"],
                sent,
                delivered,
                status_word,
                state,
                final[1] if final else None,
                latency,
                r["message_id"],
                r["call_id"],
                final[2] if final else None,
            )
        )
    return rows


def _bare(uri: Any) -> str:
    return f"{uri.scheme}:{uri.user}@{uri.host}" + (f":{uri.port}" if uri.port else "") if uri.user else str(uri)


def _focus_uris(raws: Any) -> set[str]:
    """URIs that identified themselves as a conference focus in this trace (a Contact with `;isfocus`, RFC 4579
    §5.4, in the answer that set up the conference dialog): only what they relay is attributed to the author
    their message/cpim wrapper names."""
    from ..sip.parser import parse_message

    found: set[str] = set()
    for raw in raws:
        if b";isfocus" not in raw:
            continue
        try:
            for contact in parse_message(bytes(raw)).contacts:
                if "isfocus" in contact.params:
                    found.add(_bare(contact.uri))
        except Exception:  # noqa: BLE001 - a broken message names no focus
            continue
    return found


def _note_receipt(receipts: dict[tuple[str, str], list[Any]], owner: str, ct: str, body: bytes) -> None:
    """Remember the state-machine input of an IMDN seen in the trace, under the owner that recorded it (the
    sender of the message it is about sees it arrive; the recipient sees it leave, about a received message)."""
    from ..im import imdn

    try:
        notification = imdn.unpack(ct, body)
    except Exception:  # noqa: BLE001 - a broken receipt changes nothing
        return
    event = imdn.input_for(notification) if notification is not None else None
    if event is not None:
        receipts.setdefault((owner, notification.message_id), []).append(event)


def messages_frame(
    trace: Trace, *, owner: str | None = None, session_id: str | None = None, source: str = "auto"
) -> pd.DataFrame:
    if source not in ("auto", "events", "sip"):
        raise ValueError(f"source must be 'auto', 'events' or 'sip', not {source!r}")
    rows: list[tuple] = []
    if source in ("auto", "events"):
        rows = _messages_rows_from_events(trace)
    if source == "sip" or (source == "auto" and not rows and not trace.event_count):
        rows = _messages_rows_from_sip(trace)
    if not rows:
        df = empty(MESSAGES_SCHEMA)
    else:
        cols = list(zip(*rows))

        def times(values: Sequence[Any]) -> pd.DatetimeIndex:
            return _utc([np.nan if v is None else v for v in values])

        df = pd.DataFrame(
            {
                "owner": pd.array(cols[0], dtype=STRING),
                "session_id": pd.array(cols[1], dtype=STRING),
                "direction": pd.Categorical(cols[2], dtype=MESSAGES_SCHEMA["direction"]),
                "sender": pd.array(cols[3], dtype=STRING),
                "recipient": pd.array(cols[4], dtype=STRING),
                "text": pd.array(cols[5], dtype=STRING),
                "content_type": pd.array(cols[6], dtype=STRING),
                "mode": pd.Categorical(cols[7], dtype=MESSAGES_SCHEMA["mode"]),
                "sent_at": times(cols[8]),
                "delivered_at": times(cols[9]),
                "status": pd.Categorical(cols[10], dtype=MESSAGES_SCHEMA["status"]),
                "state": pd.Categorical(cols[11], dtype=MESSAGES_SCHEMA["state"]),
                "sip_status": _nullable_int(cols[12], "Int16"),
                "latency": np.array([np.nan if v is None else v for v in cols[13]], dtype=np.float64),
                "message_id": pd.array(cols[14], dtype=STRING),
                "call_id": pd.array(cols[15], dtype=STRING),
                "reason": pd.array(cols[16], dtype=STRING),
            }
        )
        order = df["sent_at"].fillna(df["delivered_at"])
        df = df.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)
    if owner is not None:
        df = df[df["owner"] == owner].reset_index(drop=True)
    if session_id is not None:
        df = df[df["session_id"] == session_id].reset_index(drop=True)
    return df


# -- drops ------------------------------------------------------------------------------------------------
def drops_frame(trace: Trace) -> pd.DataFrame:
    drops = list(trace.drops)
    if not drops:
        return empty(DROPS_SCHEMA)
    return pd.DataFrame(
        {
            "timestamp": _utc([d.timestamp for d in drops]),
            "owner": pd.array([d.owner for d in drops], dtype=STRING),
            "transport": pd.Categorical([d.transport for d in drops], dtype=DROPS_SCHEMA["transport"]),
            "remote": pd.array([_addr(d.remote) if d.remote else None for d in drops], dtype=STRING),
            "reason": pd.array([d.reason for d in drops], dtype=STRING),
            "size": np.array([len(d.raw) for d in drops], dtype=np.int64),
            "raw": _pd_string(_raw_strings([d.raw for d in drops])),
        }
    )
