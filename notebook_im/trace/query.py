"""Query a trace dataset in place: `nim.open_traces("dir/")`, with DuckDB (default) or Dask.

Why DuckDB (2.0 or later: it reads nanosecond UTC timestamps, as captures carry them, as TIMESTAMPTZ_NS): it runs
SQL over Parquet where it lies (no load step, no server), in parallel, out of core, and it skips what a query does not
need: hours by their directory (`date=.../hour=...`), row groups by their min/max statistics,
columns it does not read (`raw` is most of the bytes). pandas only ever holds the result. Why Dask as well: the same
files then scale out to a cluster (`open_traces(p, engine="dask", client=...)`) with the pandas API.

    traces = nim.open_traces("traces/")
    traces.sip(start="2024-05-01 18:00", method="MESSAGE", status=408)      # the rows, as trace.sip() has them
    traces.transactions(method="MESSAGE", min_latency=0.2)                   # which MESSAGEs took over 200 ms
    traces.dialogs()                                                         # INVITE to BYE, messages inside
    traces.messages(start=..., end=...)                                      # as trace.messages(source="sip")
    traces.latency(by=("method", "hour"))                                    # p50/p99 per method per hour
    traces.counts(by=("method", "status"))
    traces.sql("SELECT src, count(*) FROM sip GROUP BY ALL")                 # views: sip, transactions, dialogs

Every view is computed in SQL at scale; a time range is pushed down to the files (the derived views also read a
margin after `end`, SLACK, so that a transaction or dialog that starts in the range keeps its later rows).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence
from dataclasses import fields as dc_fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .capture import CaptureStats
from .layout import COLUMNS, MARKER, DatasetError, read_marker

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

SLACK_NS = 300 * 1_000_000_000  # how far past `end` the derived views look for the rest of what started before it
MESSAGE_SLACK_NS = 60 * 1_000_000_000  # the same for messages(): final responses and receipts of MESSAGEs
HOUR_NS = 3_600_000_000_000

# One row per transaction (owner, branch:method): the request, its final response, latency, retransmissions.
TRANSACTION_COLUMNS = [
    "owner",
    "transaction_id",
    "method",
    "call_id",
    "cseq",
    "src",
    "dst",
    "request_at",
    "final_at",
    "status",
    "latency",
    "requests",
    "retransmissions",
    "provisional",
    "finals",
    "cancelled",
]
# One row per INVITE dialog (owner, Call-ID): set-up, the messages inside, the BYE.
DIALOG_COLUMNS = [
    "owner",
    "call_id",
    "dialog_id",
    "src",
    "dst",
    "invite_at",
    "answered_at",
    "status",
    "setup_latency",
    "bye_at",
    "ended_at",
    "duration",
    "messages",
    "composing",
    "sip_messages",
]
_BY = {"method", "status", "hour", "owner", "transport", "src", "dst", "direction", "date"}


def _ns(value: Any, name: str) -> int | None:
    """A start/end argument as UTC nanoseconds: a str ("2024-05-01 18:00", naive means UTC), a datetime or
    pandas Timestamp (naive means UTC), or None."""
    if value is None:
        return None
    import pandas as pd

    if isinstance(value, bool) or not isinstance(value, (str, dt.datetime, dt.date, pd.Timestamp, int, float)):
        raise TypeError(f"{name}= takes a time (str, datetime or pandas Timestamp), not {type(value).__name__}")
    if isinstance(value, (int, float)):
        raise TypeError(
            f"{name}= takes a time such as '2024-05-01 18:00' or a datetime, not a number "
            f"({value!r}); pd.Timestamp(x, unit='s') turns Unix seconds into one"
        )
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{name}={value!r} is not a time; write it like '2024-05-01 18:00' (UTC) or pass a datetime"
        ) from exc
    if ts is pd.NaT:
        raise ValueError(f"{name}={value!r} is not a time")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value)


def _quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _values(value: Any, name: str, kind: type) -> list[Any] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else list(value)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, kind):
            raise TypeError(f"{name}= takes a {kind.__name__} or a list of them, not {item!r}")
    return items


def _check_by(by: Sequence[str] | str) -> list[str]:
    cols = [by] if isinstance(by, str) else list(by)
    unknown = [c for c in cols if c not in _BY]
    if unknown or not cols:
        raise ValueError(f"by= takes some of {', '.join(sorted(_BY))}; not {unknown or by!r}")
    return cols


def _quantiles(q: Sequence[float] | float) -> list[float]:
    qs = [q] if isinstance(q, (int, float)) else list(q)
    if not qs or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= 1 for x in qs):
        raise ValueError(f"q= takes quantiles in (0, 1], like (0.5, 0.99); not {q!r}")
    return [float(x) for x in qs]


def _qname(q: float) -> str:
    text = f"{q * 100:g}".replace(".", "_")
    return f"p{text}"


class _Dataset:
    """What both engines share: the directory, its description, argument checks."""

    def __init__(self, path: str | os.PathLike) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"open_traces takes a dataset directory (str or os.PathLike), not {type(path).__name__}")
        root = Path(path)
        if not root.is_dir():
            raise DatasetError(
                f"{str(path)!r} is not a directory; open_traces takes a dataset directory, written by "
                f"nim.read_pcap(capture, to=...), notebook-im import-pcap or trace.to_parquet_dataset"
            )
        if not (root / MARKER).exists():
            raise DatasetError(
                f"{str(path)!r} is not a notebook_im trace dataset (no {MARKER}); write one with "
                f"nim.read_pcap(capture, to={str(path)!r}) or trace.to_parquet_dataset({str(path)!r})"
            )
        self.root = root
        self.info = read_marker(root)

    @property
    def files(self) -> list[Path]:
        """The Parquet files of the dataset (complete ones: a file being written is still a .tmp)."""
        return sorted(self.root.glob("date=*/hour=*/*.parquet"))

    @property
    def stats(self) -> CaptureStats:
        """The capture counters of every import into this dataset, added up."""
        total = CaptureStats()
        names = {f.name for f in dc_fields(CaptureStats)}
        for record in self.info.get("imports", []):
            counts = {k: int(v) for k, v in (record.get("stats") or {}).items() if k in names}
            total = total + CaptureStats(**counts)
        return total

    @property
    def imports(self) -> list[dict[str, Any]]:
        """What wrote the dataset: one record per import or flush (id, kind, sources, rows, seconds, stats)."""
        return list(self.info.get("imports", []))


# -- DuckDB ---------------------------------------------------------------------------------------------------------
class TraceDataset(_Dataset):
    """A trace dataset queried with DuckDB (embedded, in this process). See the module docstring."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, memory_limit: str | None = None) -> None:
        super().__init__(path)
        try:
            import duckdb
        except ImportError as exc:
            raise ImportError("open_traces needs DuckDB: pip install 'notebook_im[scale]' (or duckdb>=2.0)") from exc

        self.con = duckdb.connect(":memory:")
        self.con.execute("SET TimeZone = 'UTC'")  # naive times and hour buckets are UTC, whatever the machine's zone
        if threads is not None:
            self.con.execute(f"SET threads = {int(threads)}")
        if memory_limit is not None:
            self.con.execute(f"SET memory_limit = {_quote(memory_limit)}")
        self._define_views()

    def _source(self) -> str:
        if not self.files:  # an empty dataset: the schema alone
            import pyarrow as pa

            from .layout import SCHEMA

            empty = pa.Table.from_batches([], schema=SCHEMA)
            self.con.register("_empty_sip", empty)
            return "(SELECT *, CAST(NULL AS DATE) AS date, CAST(NULL AS INTEGER) AS hour FROM _empty_sip)"
        pattern = _quote(str(self.root / "date=*" / "hour=*" / "*.parquet"))
        return f"read_parquet({pattern}, hive_partitioning = true, hive_types = {{'date': DATE, 'hour': INTEGER}})"

    def _define_views(self) -> None:
        self.con.execute(f"CREATE OR REPLACE VIEW sip_parts AS SELECT * FROM {self._source()}")
        self.con.execute(f"CREATE OR REPLACE VIEW sip AS SELECT {', '.join(COLUMNS)} FROM sip_parts")
        self.con.execute(f"CREATE OR REPLACE VIEW transactions AS {self._transactions_sql('sip')}")
        self.con.execute(f"CREATE OR REPLACE VIEW dialogs AS {self._dialogs_sql('sip')}")

    def refresh(self) -> TraceDataset:
        """See files added since it was opened (another import, a new flush of a live trace)."""
        self.info = read_marker(self.root)
        self._define_views()
        return self

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> TraceDataset:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM sip").fetchone()[0])

    def __repr__(self) -> str:
        return f"<TraceDataset {str(self.root)!r}: {len(self.files)} files, {len(self.imports)} imports>"

    # -- filters ------------------------------------------------------------------------------------------------
    def _where(
        self,
        start: int | None,
        end: int | None,
        *,
        method: Any = None,
        status: Any = None,
        call_id: Any = None,
        owner: Any = None,
        transport: Any = None,
        where: str | None = None,
        slack: int = 0,
    ) -> str:
        """A WHERE clause over sip_parts: the time range (also as a date range, which skips whole directories),
        then the column filters."""
        clauses = []
        if start is not None:
            clauses.append(f"timestamp >= make_timestamp_ns({start})::TIMESTAMPTZ_NS")
            clauses.append(
                f"date >= DATE {_quote(dt.datetime.fromtimestamp(start / 1e9, dt.timezone.utc).date().isoformat())}"
            )
        if end is not None:
            stop = end + slack
            clauses.append(f"timestamp < make_timestamp_ns({stop})::TIMESTAMPTZ_NS")
            clauses.append(
                f"date <= DATE {_quote(dt.datetime.fromtimestamp(stop / 1e9, dt.timezone.utc).date().isoformat())}"
            )
        for col, value, kind in (
            ("method", method, str),
            ("call_id", call_id, str),
            ("owner", owner, str),
            ("transport", transport, str),
            ("status", status, int),
        ):
            items = _values(value, col, kind)
            if items is not None:
                if not items:
                    clauses.append("FALSE")
                else:
                    clauses.append(f"{col} IN ({', '.join(_quote(v) if kind is str else str(int(v)) for v in items)})")
        if where is not None:
            if not isinstance(where, str):
                raise TypeError(
                    f"where= takes a SQL condition over the sip columns (a str), not {type(where).__name__}"
                )
            clauses.append(f"({where})")
        return " AND ".join(clauses) or "TRUE"

    def _arrow(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        relation = self.con.sql(sql, params=params) if params is not None else self.con.sql(sql)
        if relation is None:  # a statement without a result (SET, CREATE VIEW, ...)
            import pyarrow as pa

            return pa.table({})
        return relation.to_arrow_table()

    # -- views ----------------------------------------------------------------------------------------------------
    def sip(
        self,
        start: Any = None,
        end: Any = None,
        *,
        method: Any = None,
        status: Any = None,
        call_id: Any = None,
        owner: Any = None,
        transport: Any = None,
        where: str | None = None,
        raw: bool = True,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """One row per SIP message in [start, end) with the filters applied in DuckDB, as a pandas frame with the
        schema of trace.sip() (frames.SIP_SCHEMA), in time order. `where` is a SQL condition over the columns
        (e.g. "src LIKE '10.0.%' AND body_size > 1000"); `raw=False` leaves out the message text (most of the
        bytes); `columns` picks columns; `limit` caps the rows."""
        from .frames import SIP_SCHEMA

        lo, hi = _ns(start, "start"), _ns(end, "end")
        cols = list(columns) if columns is not None else [c for c in COLUMNS if raw or c != "raw"]
        unknown = [c for c in cols if c not in COLUMNS]
        if unknown:
            raise ValueError(f"columns= takes some of {', '.join(COLUMNS)}; not {unknown}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit= takes a row count (int >= 0), not {limit!r}")
        cond = self._where(
            lo, hi, method=method, status=status, call_id=call_id, owner=owner, transport=transport, where=where
        )
        sql = f"SELECT {', '.join(cols)} FROM sip_parts WHERE {cond} ORDER BY timestamp" + (
            f" LIMIT {limit}" if limit is not None else ""
        )
        if "timestamp" not in cols:
            sql = (
                f"SELECT {', '.join(cols)} FROM (SELECT {', '.join(cols)}, timestamp FROM sip_parts WHERE {cond} "
                f"ORDER BY timestamp{f' LIMIT {limit}' if limit is not None else ''})"
            )
        return sip_frame_from_arrow(self._arrow(sql), {c: SIP_SCHEMA[c] for c in cols})

    @staticmethod
    def _transactions_sql(source: str) -> str:
        # the transaction's method is what follows the last ':' of branch:method (ACK and CANCEL rows carry their
        # INVITE's); a request is a row of that method without status, a final response one with status >= 200
        return f"""
            WITH r AS (
              SELECT owner, transaction_id, timestamp, method, status, call_id, cseq, src, dst,
                     regexp_extract(transaction_id, '[^:]*$') AS tm
              FROM {source} WHERE transaction_id IS NOT NULL)
            SELECT owner, transaction_id, any_value(tm) AS method,
                   arg_min(call_id, timestamp) AS call_id,
                   min(cseq) FILTER (WHERE status IS NULL AND method = tm) AS cseq,
                   arg_min(src, timestamp) FILTER (WHERE status IS NULL AND method = tm) AS src,
                   arg_min(dst, timestamp) FILTER (WHERE status IS NULL AND method = tm) AS dst,
                   min(timestamp) FILTER (WHERE status IS NULL AND method = tm) AS request_at,
                   min(timestamp) FILTER (WHERE status >= 200 AND method = tm) AS final_at,
                   arg_min(status, timestamp) FILTER (WHERE status >= 200 AND method = tm) AS status,
                   (epoch_ns(min(timestamp) FILTER (WHERE status >= 200 AND method = tm))
                    - epoch_ns(min(timestamp) FILTER (WHERE status IS NULL AND method = tm))) AS latency_ns,
                   count(*) FILTER (WHERE status IS NULL AND method = tm) AS requests,
                   greatest(count(*) FILTER (WHERE status IS NULL AND method = tm) - 1, 0) AS retransmissions,
                   count(*) FILTER (WHERE status < 200 AND method = tm) AS provisional,
                   count(*) FILTER (WHERE status >= 200 AND method = tm) AS finals,
                   bool_or(method = 'CANCEL' AND status IS NULL) AS cancelled
            FROM r GROUP BY owner, transaction_id
            HAVING count(*) FILTER (WHERE method <> 'ACK') > 0
"""  # HAVING: the ACK to a 2xx has a branch of its own, so alone it is no transaction

    def transactions(
        self,
        start: Any = None,
        end: Any = None,
        *,
        method: Any = None,
        status: Any = None,
        owner: Any = None,
        min_latency: float | None = None,
        unanswered: bool | None = None,
        where: str | None = None,
        limit: int | None = None,
        users: bool = False,
    ) -> pd.DataFrame:
        """One row per transaction (owner and branch:method) whose request was sent in [start, end): its method,
        Call-ID, CSeq, the request's src/dst and time, the first final response's time and status, `latency`
        (seconds, request to final), how often the request was sent (`requests`, `retransmissions`), the
        provisional and final responses seen, and whether a CANCEL was sent. `status` filters on the final
        status, `min_latency` (seconds) keeps slower ones, `unanswered=True` those without a final response.
        Ordered by request time. `where` is a SQL condition over the sip rows read (before grouping).
        `users=True` adds `from_user` and `to_user` (the user parts of the request's From and To URIs: who), read
        from the requests of the transactions found only, after the filters, since it needs the raw text."""
        lo, hi = _ns(start, "start"), _ns(end, "end")
        if min_latency is not None and (isinstance(min_latency, bool) or not isinstance(min_latency, (int, float))):
            raise TypeError(f"min_latency= takes seconds (a number), not {min_latency!r}")
        cond = self._where(lo, hi, owner=owner, where=where, slack=SLACK_NS)
        outer = []
        if lo is not None:
            outer.append(f"coalesce(request_at, final_at) >= make_timestamp_ns({lo})::TIMESTAMPTZ_NS")
        if hi is not None:
            outer.append(f"coalesce(request_at, final_at) < make_timestamp_ns({hi})::TIMESTAMPTZ_NS")
        for col, value, kind in (("method", method, str), ("status", status, int)):
            items = _values(value, col, kind)
            if items is not None:
                outer.append(
                    f"{col} IN ({', '.join(_quote(v) if kind is str else str(int(v)) for v in items)})"
                    if items
                    else "FALSE"
                )
        if min_latency is not None:
            outer.append(f"latency_ns >= {int(round(float(min_latency) * 1e9))}")
        if unanswered is not None:
            outer.append("final_at IS NULL" if unanswered else "final_at IS NOT NULL")
        sql = (
            f"SELECT * FROM ({self._transactions_sql(f'(SELECT * FROM sip_parts WHERE {cond})')}) "
            f"WHERE {' AND '.join(outer) or 'TRUE'} ORDER BY coalesce(request_at, final_at), transaction_id"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        if not users:
            return transactions_frame(self._arrow(sql).to_pandas())
        user = r"regexp_extract(raw, '(?im)^(?:{h})[ \t]*:[^\r\n]*?sips?:([^@;>\r\n]+)@', 1)"
        with_users = f"""
            WITH t AS ({sql}),
                 req AS (SELECT owner, transaction_id, arg_min(raw, timestamp) AS raw FROM sip_parts
                         WHERE {cond} AND status IS NULL AND method <> 'ACK'
                           AND (owner, transaction_id) IN (SELECT owner, transaction_id FROM t)
                         GROUP BY owner, transaction_id)
            SELECT t.*, nullif({user.format(h="from|f")}, '') AS from_user,
                   nullif({user.format(h="to|t")}, '') AS to_user
            FROM t LEFT JOIN req USING (owner, transaction_id)
            ORDER BY coalesce(t.request_at, t.final_at), t.transaction_id"""
        df = self._arrow(with_users).to_pandas()
        out = transactions_frame(df)
        import pandas as pd

        for c in ("from_user", "to_user"):
            out[c] = pd.array(df[c].astype(object).where(df[c].notna(), None), dtype=pd.StringDtype())
        return out

    @staticmethod
    def _dialogs_sql(source: str) -> str:
        composing = r"regexp_matches(raw, '(?i)\r\n(content-type|c)[ \t]*:[ \t]*application/im-iscomposing\+xml')"
        return f"""
            WITH calls AS (SELECT DISTINCT owner, call_id FROM {source}
                           WHERE method = 'INVITE' AND status IS NULL),
                 r AS (SELECT s.* FROM {source} s JOIN calls USING (owner, call_id))
            SELECT owner, call_id,
                   arg_min(dialog_id, timestamp) FILTER (WHERE method = 'INVITE' AND status BETWEEN 200 AND 299)
                       AS dialog_id,
                   arg_min(src, timestamp) FILTER (WHERE method = 'INVITE' AND status IS NULL) AS src,
                   arg_min(dst, timestamp) FILTER (WHERE method = 'INVITE' AND status IS NULL) AS dst,
                   min(timestamp) FILTER (WHERE method = 'INVITE' AND status IS NULL) AS invite_at,
                   min(timestamp) FILTER (WHERE method = 'INVITE' AND status BETWEEN 200 AND 299) AS answered_at,
                   arg_min(status, timestamp) FILTER (WHERE method = 'INVITE' AND status >= 200) AS status,
                   min(timestamp) FILTER (WHERE method = 'BYE' AND status IS NULL) AS bye_at,
                   max(timestamp) AS ended_at,
                   count(DISTINCT (from_tag, cseq)) FILTER (WHERE method = 'MESSAGE' AND status IS NULL
                       AND NOT {composing}) AS messages,
                   count(DISTINCT (from_tag, cseq)) FILTER (WHERE method = 'MESSAGE' AND status IS NULL
                       AND {composing}) AS composing,
                   count(*) AS sip_messages
            FROM r GROUP BY owner, call_id"""

    def dialogs(
        self,
        start: Any = None,
        end: Any = None,
        *,
        owner: Any = None,
        where: str | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """One row per INVITE session (owner and Call-ID) whose INVITE was sent in [start, end): the dialog id
        (from the 2xx), the INVITE's src/dst, when it was sent, answered (2xx) and ended (BYE), its final status,
        set-up latency and duration (seconds), the text `messages` and `composing` indications sent inside
        (retransmissions counted once), and all its SIP messages. Ordered by INVITE time."""
        lo, hi = _ns(start, "start"), _ns(end, "end")
        cond = self._where(lo, hi, owner=owner, where=where, slack=SLACK_NS)
        outer = []
        if lo is not None:
            outer.append(f"invite_at >= make_timestamp_ns({lo})::TIMESTAMPTZ_NS")
        if hi is not None:
            outer.append(f"invite_at < make_timestamp_ns({hi})::TIMESTAMPTZ_NS")
        sql = (
            f"SELECT * FROM ({self._dialogs_sql(f'(SELECT * FROM sip_parts WHERE {cond})')}) "
            f"WHERE {' AND '.join(outer) or 'TRUE'} ORDER BY invite_at, call_id"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return dialogs_frame(self._arrow(sql).to_pandas())

    def messages(
        self,
        start: Any = None,
        end: Any = None,
        *,
        owner: Any = None,
        where: str | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """One row per IM message (frames.MESSAGES_SCHEMA) sent in [start, end), as `trace.messages(source="sip")`
        builds it: DuckDB picks the MESSAGE requests (each once: retransmissions and the next hop's copy left out,
        composing left out), their last final responses and the receipts; only those rows are parsed in Python for
        sender, text, content type and receipt state (about 0.15 ms a message: use a time range on a big dataset;
        responses and receipts are looked for up to a minute past `end`). For the numbers alone at scale,
        `transactions(method="MESSAGE")` stays in SQL."""
        from ..record.recorder import Trace
        from .frames import messages_frame

        lo, hi = _ns(start, "start"), _ns(end, "end")
        # a MESSAGE is answered within Timer F (64*T1 = 32 s): a minute past `end` is enough (not the 5 minutes an
        # INVITE may need), which keeps the rows parsed in Python to the range
        cond = self._where(lo, hi, owner=owner, where=where, slack=MESSAGE_SLACK_NS) + " AND method = 'MESSAGE'"
        composing = r"regexp_matches(raw, '(?i)\r\n(content-type|c)[ \t]*:[ \t]*application/im-iscomposing\+xml')"
        sql = f"""
            WITH m AS (SELECT *, row_number() OVER (PARTITION BY owner, call_id, cseq, from_tag, status IS NULL
                                                   ORDER BY timestamp) AS first,
                              row_number() OVER (PARTITION BY owner, call_id, cseq, from_tag, status >= 200
                                                   ORDER BY timestamp DESC) AS last
                       FROM sip_parts WHERE {cond})
            SELECT timestamp, owner, direction, transport, src, dst, raw FROM m
            WHERE (status IS NULL AND first = 1 AND NOT {composing}) OR (status >= 200 AND last = 1)
            ORDER BY timestamp"""
        rows = self._arrow(sql)
        trace = Trace(max_records=None, index="eager", name=str(self.root))
        ts = rows.column("timestamp").cast("int64").to_numpy()
        cols = [rows.column(c).to_pylist() for c in ("owner", "direction", "transport", "src", "dst", "raw")]
        from .capture import split_addr

        for t, own, direction, transport, src, dst, raw in zip(ts, *cols):
            s, d = split_addr(src or ""), split_addr(dst or "")
            local, remote = (s, d) if direction == "out" else (d, s)
            trace.record_sip(
                direction or "",
                transport or "udp",
                local,
                remote,
                (raw or "").encode("utf-8"),
                own or "",
                ts=int(t) / 1e9,
            )
        df = messages_frame(trace, source="sip")
        if lo is not None or hi is not None:
            import pandas as pd

            when = df["sent_at"].fillna(df["delivered_at"])
            keep = pd.Series(True, index=df.index)
            if lo is not None:
                keep &= when >= pd.Timestamp(lo, unit="ns", tz="UTC")
            if hi is not None:
                keep &= when < pd.Timestamp(hi, unit="ns", tz="UTC")
            df = df[keep].reset_index(drop=True)
        if limit is not None:
            df = df.head(int(limit))
        return df

    def counts(
        self,
        by: Sequence[str] | str = ("method", "status"),
        start: Any = None,
        end: Any = None,
        *,
        where: str | None = None,
    ) -> pd.DataFrame:
        """SIP messages counted by some of method, status, hour (UTC, floored), date, owner, transport, src, dst,
        direction, in [start, end): a frame with those columns and `count`, sorted by them."""
        cols = _check_by(by)
        lo, hi = _ns(start, "start"), _ns(end, "end")
        cond = self._where(lo, hi, where=where)
        exprs = [
            (
                "epoch_ns(timestamp) // 3600000000000 AS hour"
                if c == "hour"
                else "CAST(date AS VARCHAR) AS date"
                if c == "date"
                else c
            )
            for c in cols
        ]
        sql = (
            f"SELECT {', '.join(exprs)}, count(*) AS count FROM sip_parts WHERE {cond} GROUP BY ALL "
            f"ORDER BY ALL NULLS FIRST"
        )
        return counts_frame(self._arrow(sql).to_pandas(), cols)

    def latency(
        self,
        by: Sequence[str] | str = ("method", "hour"),
        q: Sequence[float] | float = (0.5, 0.99),
        start: Any = None,
        end: Any = None,
        *,
        method: Any = None,
        where: str | None = None,
    ) -> pd.DataFrame:
        """Transaction latency (request to first final response) per group: count and the quantiles `q`
        (p50, p99, ... in milliseconds; the discrete quantile, an observed latency, so that every engine gives
        the same number), per some of method, status, hour (of the request, UTC), owner, src, dst."""
        cols = _check_by(by)
        qs = _quantiles(q)
        lo, hi = _ns(start, "start"), _ns(end, "end")
        cond = self._where(lo, hi, where=where, slack=SLACK_NS)
        outer = ["latency_ns IS NOT NULL"]
        if lo is not None:
            outer.append(f"request_at >= make_timestamp_ns({lo})::TIMESTAMPTZ_NS")
        if hi is not None:
            outer.append(f"request_at < make_timestamp_ns({hi})::TIMESTAMPTZ_NS")
        items = _values(method, "method", str)
        if items is not None:
            outer.append(f"method IN ({', '.join(map(_quote, items))})" if items else "FALSE")
        exprs = [("epoch_ns(request_at) // 3600000000000 AS hour" if c == "hour" else c) for c in cols]
        quant = ", ".join(f"quantile_disc(latency_ns, {x}) / 1e6 AS {_qname(x)}" for x in qs)
        sql = (
            f"SELECT {', '.join(exprs)}, count(*) AS count, {quant} FROM "
            f"({self._transactions_sql(f'(SELECT * FROM sip_parts WHERE {cond})')}) "
            f"WHERE {' AND '.join(outer)} GROUP BY ALL ORDER BY ALL NULLS FIRST"
        )
        return counts_frame(self._arrow(sql).to_pandas(), cols)

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Any DuckDB SQL over the views `sip` (the rows, trace.sip()'s columns), `sip_parts` (the same with the
        `date` and `hour` partition columns: filtering on them skips whole directories), `transactions` and
        `dialogs`; the result as a pandas frame."""
        if not isinstance(query, str):
            raise TypeError(f"sql() takes a SQL string, not {type(query).__name__}")
        return self._arrow(query, params).to_pandas()


# -- building the pandas results ------------------------------------------------------------------------------------
def sip_frame_from_arrow(table: Any, schema: dict[str, Any]) -> pd.DataFrame:
    """An Arrow table of sip columns -> a pandas frame with exactly the dtypes of `schema` (a slice of
    frames.SIP_SCHEMA): categoricals with their fixed categories first, nullable ints, UTC nanoseconds."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    from .frames import _pd_category, _pd_string

    out: dict[str, Any] = {}
    for name, dtype in schema.items():
        col = table.column(name)
        if isinstance(dtype, pd.DatetimeTZDtype):
            ns = col.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
            out[name] = pd.DatetimeIndex(ns.view("datetime64[ns]")).tz_localize("UTC")
        elif isinstance(dtype, pd.CategoricalDtype) or dtype == "category":
            strings = col.cast(pa.string()) if not pa.types.is_dictionary(col.type) else pc.cast(col, pa.string())
            cats = list(dtype.categories) if isinstance(dtype, pd.CategoricalDtype) else None
            if cats is None:
                found = sorted(v for v in pc.unique(strings).to_pylist() if v is not None)
                cats = found
            out[name] = _pd_category(
                strings.combine_chunks() if isinstance(strings, pa.ChunkedArray) else strings, cats
            )
        elif dtype in ("Int16", "Int64"):
            arr = col.cast(pa.int64())
            data = arr.fill_null(0).to_numpy(zero_copy_only=False)
            mask = arr.is_null().to_numpy(zero_copy_only=False)
            out[name] = pd.arrays.IntegerArray(data.astype(np.int16 if dtype == "Int16" else np.int64), mask)
        elif dtype == "int64":
            out[name] = col.cast(pa.int64()).to_numpy(zero_copy_only=False)
        else:
            out[name] = _pd_string(col.cast(pa.string()))
    return pd.DataFrame(out, columns=list(schema))


def _utc(series: pd.Series) -> pd.Series:
    import pandas as pd

    return pd.to_datetime(series, utc=True).astype(pd.DatetimeTZDtype("ns", "UTC"))


def transactions_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed dtypes for the transactions view (an empty result has them too)."""
    import numpy as np
    import pandas as pd

    out = pd.DataFrame(index=range(len(df)))
    for c in ("owner", "transaction_id", "method", "call_id", "src", "dst"):
        out[c] = pd.array(
            df[c].astype(object).where(df[c].notna(), None) if c in df else [None] * len(df), dtype=pd.StringDtype()
        )
    out["cseq"] = pd.array(df["cseq"], dtype="Int64")
    out["request_at"] = _utc(df["request_at"])
    out["final_at"] = _utc(df["final_at"])
    out["status"] = pd.array(df["status"], dtype="Int16")
    out["latency"] = (df["latency_ns"].astype("float64") / 1e9).to_numpy() if len(df) else np.array([], dtype=float)
    for c in ("requests", "retransmissions", "provisional", "finals"):
        out[c] = df[c].astype("int64").to_numpy() if len(df) else np.array([], dtype=np.int64)
    out["cancelled"] = df["cancelled"].fillna(False).astype(bool).to_numpy() if len(df) else np.array([], dtype=bool)
    out["method"] = out["method"].astype("category")
    return out[TRANSACTION_COLUMNS]


def dialogs_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed dtypes for the dialogs view."""
    import numpy as np
    import pandas as pd

    out = pd.DataFrame(index=range(len(df)))
    for c in ("owner", "call_id", "dialog_id", "src", "dst"):
        out[c] = pd.array(df[c].astype(object).where(df[c].notna(), None), dtype=pd.StringDtype())
    for c in ("invite_at", "answered_at", "bye_at", "ended_at"):
        out[c] = _utc(df[c])
    out["status"] = pd.array(df["status"], dtype="Int16")
    out["setup_latency"] = (
        (out["answered_at"] - out["invite_at"]).dt.total_seconds().to_numpy(dtype=float, na_value=np.nan)
    )
    out["duration"] = (out["bye_at"] - out["answered_at"]).dt.total_seconds().to_numpy(dtype=float, na_value=np.nan)
    for c in ("messages", "composing", "sip_messages"):
        out[c] = df[c].astype("int64").to_numpy() if len(df) else np.array([], dtype=np.int64)
    return out[DIALOG_COLUMNS]


def counts_frame(df: pd.DataFrame, by: Iterable[str]) -> pd.DataFrame:
    """The group columns with fixed dtypes (hour as a UTC timestamp, status Int16, the rest strings), then the
    measures; the same from DuckDB and from Dask, so the two can be compared with `equals`."""
    import pandas as pd

    out = df.copy()
    for c in by:
        if c == "hour":
            out[c] = pd.to_datetime(out[c].astype("int64") * HOUR_NS, utc=True).astype(pd.DatetimeTZDtype("ns", "UTC"))
        elif c == "status":
            out[c] = pd.array(out[c], dtype="Int16")
        else:
            out[c] = pd.array(out[c].astype(object).where(out[c].notna(), None), dtype=pd.StringDtype())
    if "count" in out:
        out["count"] = out["count"].astype("int64")
    for c in out.columns:
        if c.startswith("p") and c not in by and c != "count":
            out[c] = out[c].astype("float64")
    return out.reset_index(drop=True)


# -- Dask -----------------------------------------------------------------------------------------------------------
class DaskTraceDataset(_Dataset):
    """The same dataset as a Dask DataFrame, for a cluster (`client=` a distributed.Client, or the scheduler in
    use). `.sip()` and `.transactions()` are lazy Dask DataFrames; `.counts()` and `.latency()` compute and return
    pandas frames with the same columns, dtypes and numbers as the DuckDB engine's."""

    def __init__(self, path: str | os.PathLike, *, client: Any = None) -> None:
        super().__init__(path)
        try:
            import dask.dataframe  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "engine='dask' needs Dask: pip install 'notebook_im[scale]' (dask[dataframe], distributed)"
            ) from exc
        self.client = client

    def __repr__(self) -> str:
        return f"<DaskTraceDataset {str(self.root)!r}: {len(self.files)} files>"

    def _filters(self, lo: int | None, hi: int | None) -> list[tuple] | None:
        import pandas as pd

        filters = []
        if lo is not None:
            filters.append(("timestamp", ">=", pd.Timestamp(lo, unit="ns", tz="UTC")))
        if hi is not None:
            filters.append(("timestamp", "<", pd.Timestamp(hi, unit="ns", tz="UTC")))
        return filters or None

    def sip(
        self,
        start: Any = None,
        end: Any = None,
        *,
        columns: Sequence[str] | None = None,
        method: Any = None,
        status: Any = None,
    ) -> Any:
        """The rows in [start, end) as a lazy Dask DataFrame (the sip columns; row groups outside the range are
        not read). `columns` picks columns (leaving out `raw` reads a tenth of the bytes)."""
        import dask.dataframe as dd

        lo, hi = _ns(start, "start"), _ns(end, "end")
        cols = list(columns) if columns is not None else list(COLUMNS)
        unknown = [c for c in cols if c not in COLUMNS]
        if unknown:
            raise ValueError(f"columns= takes some of {', '.join(COLUMNS)}; not {unknown}")
        read = list(
            dict.fromkeys(
                cols + (["method"] if method is not None else []) + (["status"] if status is not None else [])
            )
        )
        if not self.files:
            from .frames import SIP_SCHEMA, empty

            return dd.from_pandas(empty({c: SIP_SCHEMA[c] for c in read}), npartitions=1)[cols]
        ddf = dd.read_parquet(
            str(self.root),
            columns=read,
            filters=self._filters(lo, hi),
            dataset={"partitioning": "hive"},
            dtype_backend=None,
        )
        if "status" in read:
            ddf["status"] = ddf["status"].astype("Int16")
        items = _values(method, "method", str)
        if items is not None:
            ddf = ddf[ddf["method"].astype("string").isin(items)]
        items = _values(status, "status", int)
        if items is not None:
            ddf = ddf[ddf["status"].isin(items)]
        return ddf[cols]

    def transactions(self, start: Any = None, end: Any = None) -> Any:
        """One row per transaction (owner, transaction_id), lazily: method, request_at, final_at, status,
        latency_ns, requests, retransmissions. Computed as the DuckDB view computes it (the group-by shuffles on
        the transaction key, so a transaction split across files or hours is still one row)."""
        import numpy as np

        lo, hi = _ns(start, "start"), _ns(end, "end")
        ddf = self.sip(
            None if lo is None else _from_ns(lo),
            None if hi is None else _from_ns(hi + SLACK_NS),
            columns=["owner", "transaction_id", "timestamp", "method", "status"],
        )

        def prepare(pdf: pd.DataFrame) -> pd.DataFrame:
            # one row per transaction and partition (most transactions lie in one partition, so this shrinks what
            # the shuffle moves to about one row in three); times stay integer nanoseconds, never floats
            import pandas as pd

            pdf = pdf[pdf["transaction_id"].notna()]
            txn = pdf["transaction_id"].astype("string")
            tm = txn.str.rsplit(":", n=1).str[-1]
            method = pdf["method"].astype("string")
            status = pdf["status"].astype("Int64")
            same = (method == tm).fillna(False).to_numpy(dtype=bool)
            missing = status.isna().to_numpy()
            rows = pd.DataFrame(
                {
                    "key": pdf["owner"].astype("string") + "\0" + txn,
                    "method": tm,
                    "ts": pdf["timestamp"].astype("int64").to_numpy(),
                    "status": status,
                    "is_req": same & missing,
                    "is_final": same & ~missing & (status.fillna(0) >= 200).to_numpy(dtype=bool),
                    "not_ack": (method != "ACK").fillna(True).to_numpy(dtype=bool),
                }
            )
            keys = pd.Index(rows["key"].unique(), name="key")
            req = rows[rows["is_req"]].groupby("key")["ts"].agg(["min", "size"]).astype("Int64").reindex(keys)
            fin = (
                rows[rows["is_final"]]
                .sort_values("ts", kind="stable")
                .groupby("key")[["ts", "status"]]
                .first()
                .astype("Int64")
                .reindex(keys)
            )
            first = (
                rows.groupby("key", sort=False)
                .agg(method=("method", "first"), not_ack=("not_ack", "any"))
                .reindex(keys)
            )
            return pd.DataFrame(
                {
                    "key": keys.astype("string"),
                    "method": first["method"].astype("string").to_numpy(),
                    # .array, not .to_numpy(): a nullable integer column with NA would become float64 and round
                    "req_min": req["min"].array,
                    "req_n": req["size"].fillna(0).astype("int64").to_numpy(),
                    "fin_ts": fin["ts"].array,
                    "fin_status": fin["status"].array,
                    "not_ack": first["not_ack"].astype(bool).to_numpy(),
                }
            )

        meta = {
            "key": "string",
            "method": "string",
            "req_min": "Int64",
            "req_n": "int64",
            "fin_ts": "Int64",
            "fin_status": "Int64",
            "not_ack": "bool",
        }
        partial = ddf.map_partitions(prepare, meta=meta)
        # every partial row of a transaction into the same partition (a shuffle on the key), then combined there
        shuffled = partial.shuffle(on="key", npartitions=max(1, partial.npartitions))

        def aggregate(pdf: pd.DataFrame) -> pd.DataFrame:
            import pandas as pd

            pdf = pdf.sort_values(["key", "fin_ts"], kind="stable", na_position="last")
            g = pdf.groupby("key", sort=False)
            out = g.agg(
                method=("method", "first"),
                req_min=("req_min", "min"),
                req_n=("req_n", "sum"),
                fin_ts=("fin_ts", "first"),
                fin_status=("fin_status", "first"),
                not_ack=("not_ack", "any"),
            )
            out = out[out["not_ack"].astype(bool)]  # the ACK to a 2xx has a branch of its own
            keys = out.index.to_series().astype("string")
            parts = (
                keys.str.split("\0", n=1, expand=True)
                if len(keys)
                else pd.DataFrame({0: pd.Series([], dtype="string"), 1: pd.Series([], dtype="string")})
            )
            request_at = out["req_min"].astype("Int64").array
            final_at = out["fin_ts"].astype("Int64").array
            requests = out["req_n"].astype("int64").to_numpy()
            return pd.DataFrame(
                {
                    "owner": parts[0].to_numpy(dtype=object),
                    "transaction_id": parts[1].to_numpy(dtype=object),
                    "method": out["method"].astype(object).to_numpy(),
                    "request_at": request_at,
                    "final_at": final_at,
                    "status": out["fin_status"].astype("Int64").astype("Int16").array,
                    "latency_ns": final_at - request_at,
                    "requests": requests,
                    "retransmissions": np.maximum(requests - 1, 0),
                }
            )

        meta2 = {
            "owner": "object",
            "transaction_id": "object",
            "method": "object",
            "request_at": "Int64",
            "final_at": "Int64",
            "status": "Int16",
            "latency_ns": "Int64",
            "requests": "int64",
            "retransmissions": "int64",
        }
        txns = shuffled.map_partitions(aggregate, meta=meta2)
        if lo is not None or hi is not None:

            def window(pdf: pd.DataFrame) -> pd.DataFrame:
                when = pdf["request_at"].fillna(pdf["final_at"])
                keep = when.notna()
                if lo is not None:
                    keep &= when >= lo
                if hi is not None:
                    keep &= when < hi
                return pdf[keep.fillna(False).astype(bool)]

            txns = txns.map_partitions(window, meta=meta2)
        return txns

    def _compute(self, obj: Any) -> Any:
        if self.client is not None:
            return self.client.compute(obj).result()
        return obj.compute()

    def counts(
        self, by: Sequence[str] | str = ("method", "status"), start: Any = None, end: Any = None
    ) -> pd.DataFrame:
        """SIP messages counted by some of method, status, hour, date, owner, transport, src, dst, direction: the
        same frame as the DuckDB engine's counts()."""
        import pandas as pd

        cols = _check_by(by)
        _ns(start, "start"), _ns(end, "end")  # a wrong bound raises here, before Dask plans anything
        read = [c for c in cols if c not in ("hour", "date")] + (["timestamp"] if {"hour", "date"} & set(cols) else [])
        ddf = self.sip(start, end, columns=read)

        def keys(pdf: pd.DataFrame) -> pd.DataFrame:
            out = pd.DataFrame(index=pdf.index)
            for c in cols:
                if c == "hour":
                    out[c] = pdf["timestamp"].astype("int64") // HOUR_NS
                elif c == "date":
                    out[c] = pdf["timestamp"].dt.strftime("%Y-%m-%d")
                elif c == "status":
                    out[c] = pdf[c].astype("float64").fillna(-1).astype("int64")
                else:
                    out[c] = pdf[c].astype(object).where(pdf[c].notna(), "\0")
            out["count"] = 1
            return out

        meta = {c: ("int64" if c in ("hour", "status") else "object") for c in cols}
        meta["count"] = "int64"
        grouped = ddf.map_partitions(keys, meta=meta).groupby(cols).agg({"count": "sum"}, split_out=1)
        result = self._compute(grouped).reset_index()
        if "status" in cols:
            result["status"] = result["status"].where(result["status"] >= 0)
        for c in cols:
            if c not in ("hour", "status"):
                result[c] = result[c].where(result[c] != "\0", None)
        result = result.sort_values(cols, na_position="first", key=_sort_key).reset_index(drop=True)
        return counts_frame(result[cols + ["count"]], cols)

    def latency(
        self,
        by: Sequence[str] | str = ("method", "hour"),
        q: Sequence[float] | float = (0.5, 0.99),
        start: Any = None,
        end: Any = None,
    ) -> pd.DataFrame:
        """Transaction latency quantiles (ms) per group, as the DuckDB engine computes them (the discrete
        quantile: numpy's inverted_cdf method is DuckDB's quantile_disc), so the numbers are identical."""
        import numpy as np
        import pandas as pd

        cols = _check_by(by)
        not_here = [c for c in cols if c not in ("method", "hour", "owner", "status")]
        if not_here:
            raise ValueError(f"the Dask engine groups latency by method, hour, owner or status; not {not_here}")
        qs = _quantiles(q)
        txns = self.transactions(start, end)

        def keys(pdf: pd.DataFrame) -> pd.DataFrame:
            pdf = pdf[pdf["latency_ns"].notna()]
            out = pd.DataFrame(index=pdf.index)
            for c in cols:
                if c == "hour":
                    out[c] = (pdf["request_at"] // HOUR_NS).astype("int64")
                elif c == "status":
                    out[c] = pdf["status"].astype("float64").fillna(-1).astype("int64")
                else:
                    out[c] = pdf[c].astype(object)
            out["latency_ns"] = pdf["latency_ns"].astype("int64")
            return out

        meta = {c: ("int64" if c in ("hour", "status") else "object") for c in cols}
        meta["latency_ns"] = "int64"
        keyed = txns.map_partitions(keys, meta=meta)

        def summarise(values: pd.Series) -> pd.Series:
            arr = np.sort(values.to_numpy())
            return pd.Series(
                [len(arr)] + [float(np.quantile(arr, x, method="inverted_cdf")) / 1e6 for x in qs],
                index=["count"] + [_qname(x) for x in qs],
            )

        out_meta = pd.DataFrame(
            {"count": pd.Series([], dtype="float64"), **{_qname(x): pd.Series([], dtype="float64") for x in qs}}
        )
        result = self._compute(
            keyed.groupby(cols)["latency_ns"].apply(lambda s: summarise(s), meta=("latency_ns", "float64"))
        )
        frame = result.unstack() if isinstance(result.index, pd.MultiIndex) else result
        frame = frame.reset_index()
        if "status" in cols:
            frame["status"] = frame["status"].where(frame["status"] >= 0)
        frame = frame.sort_values(cols, na_position="first", key=_sort_key).reset_index(drop=True)
        del out_meta
        return counts_frame(frame[cols + ["count"] + [_qname(x) for x in qs]], cols)


def _sort_key(col: pd.Series) -> pd.Series:
    """Sort strings as DuckDB does (byte order), numbers as numbers."""
    if col.dtype == object:
        return col.map(lambda v: v.encode("utf-8") if isinstance(v, str) else v)
    return col


def _from_ns(ns: int) -> Any:
    import pandas as pd

    return pd.Timestamp(ns, unit="ns", tz="UTC")


def open_traces(
    path: str | os.PathLike,
    *,
    engine: str = "duckdb",
    client: Any = None,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> TraceDataset | DaskTraceDataset:
    """Open a trace dataset (written by `read_pcap(..., to=path)`, `notebook-im import-pcap` or
    `trace.to_parquet_dataset(path)`) to query it in place: `engine="duckdb"` (default; `threads`, `memory_limit`
    are DuckDB's settings) or `engine="dask"` (`client` a distributed.Client; None: Dask's current scheduler)."""
    if engine == "duckdb":
        if client is not None:
            raise ValueError("client= is for engine='dask'; DuckDB runs in this process")
        return TraceDataset(path, threads=threads, memory_limit=memory_limit)
    if engine == "dask":
        if threads is not None or memory_limit is not None:
            raise ValueError("threads= and memory_limit= are DuckDB settings; size a Dask cluster through its client")
        return DaskTraceDataset(path, client=client)
    raise ValueError(f"engine must be 'duckdb' or 'dask', not {engine!r}")
