"""Traces as a Parquet dataset on disk: what `read_pcap(path, to="dir/")`, `notebook-im import-pcap` and
`trace.to_parquet_dataset("dir/")` write, and what `open_traces("dir/")` reads.

Layout (Hive partitioning, so DuckDB, Dask, Spark and pyarrow all read it as one table and skip hours by path):

    dir/_notebook_im_dataset.json                     what wrote it: the format version and each import's counts
    dir/date=2024-05-01/hour=13/part-<import>-00000.parquet
    dir/date=2024-05-01/hour=14/part-<import>-00001.parquet ...

Each file holds the columns of `trace.sip()` (frames.SIP_SCHEMA) in that order, as Arrow types that read back as
those dtypes: timestamp as timestamp[ns, UTC], the categoricals as dictionary<string>, status Int16 as int16, the
text as string. Row groups are written as the rows come in (a batch at a time), so memory is bounded by the batch,
not by the capture; a file is written under a `.tmp` name and renamed when complete, so a reader never sees a
half-written file. Several imports (captures from different places, or a live trace flushed now and then) can go
into the same dataset; the owner column tells them apart.

This module imports pyarrow and numpy, not pandas: an import process stays small.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..record.extract import extract
from .capture import CaptureLimits, CaptureStats, capture_files, parse_local, scan
from .layout import _DICT, COLUMNS, FORMAT, MARKER, SCHEMA, VERSION, DatasetError, read_marker  # noqa: F401 - the layout's names, as this module always had them

if TYPE_CHECKING:  # pragma: no cover
    from ..record.recorder import Trace

HOUR_NS = 3_600_000_000_000
MAX_OPEN_FILES = 8  # hours written to at once (out-of-order captures); the least recently used is closed

_DICTIONARY_COLUMNS = ["owner", "direction", "transport", "src", "dst", "method"]
_STATISTICS_COLUMNS = ["timestamp", "owner", "transport", "method", "status", "cseq", "body_size"]


# -- the destination ------------------------------------------------------------------------------------------------
def check_destination(path: str | os.PathLike) -> Path:
    """The dataset directory `path`, checked before any work: a new or empty directory, or a notebook_im dataset
    (new rows are added to it). Raises DatasetError (a ValueError) for a file or a directory of something else."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"to= takes a directory path (str or os.PathLike), not {type(path).__name__}")
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise DatasetError(
            f"to={str(path)!r} is an existing file, not a dataset directory; pass a new or empty "
            f"directory (e.g. to='traces/'), or an existing notebook_im dataset to add to"
        )
    if root.is_dir():
        marker = root / MARKER
        if marker.exists():
            read_marker(root)  # a dataset of a newer version is refused here, before any work
        elif any(p for p in root.iterdir() if not p.name.startswith(".")):
            raise DatasetError(
                f"to={str(path)!r} is a directory that holds other files and no notebook_im dataset; "
                f"pass a new or empty directory, or an existing dataset (it has {MARKER})"
            )
    elif not root.parent.exists():
        raise DatasetError(
            f"to={str(path)!r}: the parent directory {str(root.parent)!r} does not exist; create it "
            f"first (or pass a path in an existing directory)"
        )
    return root


def _write_marker(root: Path, record: dict[str, Any] | None) -> None:
    """Add an import's record to the description file (None: just make sure the file exists, which an import does
    before writing anything, so that a directory an import was stopped in is still a dataset to add to)."""
    path = root / MARKER
    if record is None and path.exists():
        return
    info = read_marker(root) if path.exists() else {"format": FORMAT, "version": VERSION, "imports": []}
    if record is not None:
        info["imports"].append(record)
    tmp = root / (MARKER + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, path)


# -- building Arrow tables ------------------------------------------------------------------------------------------
def _dictionary(values: Sequence[Any]) -> pa.DictionaryArray:
    """A dictionary<string> array from hashable values (None is null), coded at C speed with dict.fromkeys."""
    seen = dict.fromkeys(values)
    for i, key in enumerate(seen):
        seen[key] = i
    codes = np.fromiter(map(seen.__getitem__, values), dtype=np.int32, count=len(values))
    words = list(seen)
    mask = None
    if None in seen:
        mask = codes == seen[None]
        codes[mask] = 0
        words = [w if w is not None else "" for w in words]
    indices = pa.array(codes, pa.int32(), mask=mask)
    return pa.DictionaryArray.from_arrays(indices, pa.array(words, pa.string()))


def _bytes_to_strings(values: Sequence[bytes]) -> pa.Array:
    """A string array straight from bytes: one join and an offsets array, no per-object conversion; bytes that are
    not UTF-8 are decoded with replacement characters (as trace.sip() does)."""
    n = len(values)
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = b"".join(values)
    large = offsets[-1] >= 2**31 - 1
    typ = pa.large_string() if large else pa.string()
    arr = pa.Array.from_buffers(
        typ, n, [None, pa.py_buffer(offsets if large else offsets.astype(np.int32)), pa.py_buffer(data)]
    )
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        arr = pa.array([v.decode("utf-8", "replace") for v in values], typ)
    return arr.cast(pa.string()) if large else arr


def _str_array(values: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(
            [v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else v for v in values], pa.string()
        )


def extract_columns(raws: Sequence[bytes]) -> list[list[Any]]:
    """The extract.FIELDS of many messages as nine column lists (the values trace.sip() shows). A CSeq number too
    large for int64 becomes NA, where a frame column could not hold it. (An inlined copy of extract() for batches
    was tried: no faster, the bytes.find calls are the cost.)"""
    if not raws:
        return [[] for _ in range(9)]
    cols = [list(c) for c in zip(*map(extract, raws))]
    cols[3] = [n if n is None or n < 2**63 else None for n in cols[3]]
    return cols


def build_table(
    ts_ns: Sequence[int] | np.ndarray,
    owner: Sequence[str],
    direction: Sequence[str | None],
    transport: Sequence[str],
    src: Sequence[str],
    dst: Sequence[str],
    raw: Sequence[bytes],
    fields: Sequence[Sequence[Any]] | None = None,
) -> pa.Table:
    """One Arrow table with SCHEMA from row-aligned columns; `fields` are the extract.FIELDS columns (extracted from
    `raw` here when not given). The derived columns are computed as frames.sip_frame computes them, so a dataset
    row equals the trace.sip() row of the same message."""
    if fields is None:
        fields = extract_columns(raw)
    method, status, cid, cseq, cseq_method, from_tag, to_tag, branch, body_size = fields
    method_a, cseq_method_a = _str_array(method), _str_array(cseq_method)
    call_id_a, from_a, to_a, branch_a = _str_array(cid), _str_array(from_tag), _str_array(to_tag), _str_array(branch)
    txn_method = pc.if_else(pc.is_in(cseq_method_a, pa.array(["ACK", "CANCEL"])), pa.scalar("INVITE"), cseq_method_a)
    txn = pc.binary_join_element_wise(branch_a, txn_method, ":")
    le = pc.less_equal(from_a, to_a)
    dialog = pc.binary_join_element_wise(call_id_a, pc.if_else(le, from_a, to_a), pc.if_else(le, to_a, from_a), ";")
    ts = np.asarray(ts_ns, dtype=np.int64)
    columns = [
        pa.array(ts, pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
        _dictionary(owner),
        _dictionary(direction),
        _dictionary(transport),
        _dictionary(src),
        _dictionary(dst),
        pc.coalesce(method_a, cseq_method_a).dictionary_encode(),
        pa.array(status, pa.int16()),
        call_id_a,
        pa.array(cseq, pa.int64()),
        from_a,
        to_a,
        branch_a,
        txn,
        dialog,
        pa.array(body_size, pa.int64()),
        _bytes_to_strings(raw),
    ]
    columns[6] = columns[6].cast(_DICT)
    return pa.Table.from_arrays(columns, schema=SCHEMA)


# -- writing --------------------------------------------------------------------------------------------------------
class DatasetWriter:
    """Writes Arrow tables into the partitioned layout, a row group per table and hour, with at most
    MAX_OPEN_FILES files open. Encoding and compression happen on a writer thread (pyarrow releases the GIL
    there), so a capture is parsed on one core while the previous batch is compressed on the other; the queue
    holds one batch, which bounds memory at about three batches."""

    def __init__(self, root: Path, import_id: str, *, compression: str = "zstd") -> None:
        self.root = root
        self.import_id = import_id
        self.compression = compression
        self.open: dict[int, tuple[pq.ParquetWriter, Path]] = {}
        self.files: list[Path] = []
        self.rows = 0
        self._seq = 0
        self._error: BaseException | None = None
        self._aborted = False
        self._cond = threading.Condition()
        self._queue: list[pa.Table | None] = []
        self._thread = threading.Thread(target=self._run, name="notebook_im dataset writer", daemon=True)
        self._thread.start()

    def write(self, table: pa.Table) -> None:
        """Queue a table (waits while the writer thread still has one queued: back-pressure bounds memory)."""
        if not len(table):
            return
        with self._cond:
            while self._queue and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            self._queue.append(table)
            self._cond.notify_all()

    def close(self) -> list[Path]:
        """Write what is queued, close every file (renaming it into place); returns the files written."""
        with self._cond:
            self._queue.append(None)
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.files

    def abort(self) -> None:
        """Stop without finishing: files being written are removed (their .tmp never becomes a .parquet)."""
        with self._cond:
            self._aborted = True
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join()
        for writer, path in self.open.values():
            try:
                writer.close()
            finally:
                path.unlink(missing_ok=True)
        self.open.clear()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._aborted:
                    self._cond.wait()
                if self._aborted:
                    return
                table = self._queue[0]
            if table is None:
                try:
                    for hour in list(self.open):
                        self._close(hour)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller by close()
                    self._error = exc
                with self._cond:
                    self._queue.clear()
                    self._cond.notify_all()
                return
            try:
                self._write(table)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller by write()/close()
                self._error = exc
            with self._cond:
                if self._queue and self._queue[0] is table:
                    self._queue.pop(0)
                self._cond.notify_all()
            if self._error is not None:
                return

    def _write(self, table: pa.Table) -> None:
        ts = table.column("timestamp").cast(pa.int64()).to_numpy()
        hours = ts // HOUR_NS
        first, last = hours.min(), hours.max()
        if first == last:
            self._file(int(first)).write_table(table, row_group_size=len(table))
        else:
            order = np.argsort(hours, kind="stable")
            sorted_hours = hours[order]
            cuts = np.flatnonzero(np.diff(sorted_hours)) + 1
            for part in np.split(order, cuts):
                piece = table.take(pa.array(part))
                self._file(int(hours[part[0]])).write_table(piece, row_group_size=len(piece))
        self.rows += len(table)

    def _file(self, hour: int) -> pq.ParquetWriter:
        entry = self.open.pop(hour, None)
        if entry is None:
            while len(self.open) >= MAX_OPEN_FILES:
                self._close(next(iter(self.open)))
            when = dt.datetime.fromtimestamp(hour * 3600, dt.timezone.utc)
            folder = self.root / f"date={when:%Y-%m-%d}" / f"hour={when:%H}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"part-{self.import_id}-{self._seq:05d}.parquet.tmp"
            self._seq += 1
            writer = pq.ParquetWriter(
                path,
                SCHEMA,
                compression=self.compression,
                use_dictionary=_DICTIONARY_COLUMNS,
                write_statistics=_STATISTICS_COLUMNS,
            )
            entry = (writer, path)
        self.open[hour] = entry  # most recently used last
        return entry[0]

    def _close(self, hour: int) -> None:
        writer, path = self.open.pop(hour)
        writer.close()
        final = path.with_name(path.name[: -len(".tmp")])
        os.replace(path, final)
        self.files.append(final)


def new_import_id() -> str:
    """Sortable and unique: the UTC time and a random suffix."""
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


# -- capture import -------------------------------------------------------------------------------------------------
Batch = tuple  # (ts_ns, owners, directions, transports, srcs, dsts, raws): row-aligned lists


class _CaptureSink:
    """Gathers the messages `capture.scan` finds into row batches of about `batch_bytes` of SIP and hands each batch
    to `deliver` (which turns it into an Arrow table and writes it, here or in the writer process)."""

    def __init__(self, deliver: Callable[[Batch], None], batch_bytes: int, local: Any) -> None:
        self.deliver = deliver
        self.batch_bytes = batch_bytes
        self.hosts, self.addrs = parse_local(local)
        self.owner = ""
        self.names: dict[tuple[str, int], str] = {}
        self._reset()

    def _reset(self) -> None:
        self.ts: list[int] = []
        self.owners: list[str] = []
        self.directions: list[str | None] = []
        self.transports: list[str] = []
        self.srcs: list[str] = []
        self.dsts: list[str] = []
        self.raws: list[bytes] = []
        self.size = 0

    def begin(self, owner: str) -> None:
        self.owner = owner

    def name(self, addr: tuple[str, int]) -> str:
        text = self.names.get(addr)
        if text is None:
            if len(self.names) > 1_000_000:
                self.names.clear()
            host = addr[0]
            text = self.names[addr] = f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
        return text

    def add(self, ts_ns: int, transport: str, src: tuple[str, int], dst: tuple[str, int], raw: bytes) -> None:
        self.ts.append(ts_ns)
        self.owners.append(self.owner)
        if self.addrs or self.hosts:
            self.directions.append(
                "out"
                if src in self.addrs or src[0] in self.hosts
                else "in"
                if dst in self.addrs or dst[0] in self.hosts
                else None
            )
        else:
            self.directions.append(None)
        self.transports.append(transport)
        self.srcs.append(self.name(src))
        self.dsts.append(self.name(dst))
        self.raws.append(raw)
        self.size += len(raw) + 200  # the bytes, and what the row's Python objects cost beside them
        if self.size >= self.batch_bytes:
            self.flush()

    def flush(self) -> None:
        if self.raws:
            batch = (self.ts, self.owners, self.directions, self.transports, self.srcs, self.dsts, self.raws)
            self._reset()
            self.deliver(batch)


class _LocalWriter:
    """Header fields extracted and Arrow tables built on the calling thread; encoding, compression and the disk on
    the DatasetWriter's thread. (Sharing the batches with a second process was tried, feeding it pickled batches
    whenever it was free: on this 2-core machine it took 8 of 17 batches and the import was 0-5% faster, because
    the extra pickling and compression used up the second core; one process is simpler and as fast.)"""

    def __init__(self, root: Path, import_id: str, compression: str) -> None:
        self.writer = DatasetWriter(root, import_id, compression=compression)

    def deliver(self, batch: Batch) -> None:
        self.writer.write(build_table(*batch))

    def close(self) -> tuple[int, list[Path]]:
        files = self.writer.close()
        return self.writer.rows, files

    def abort(self) -> None:
        self.writer.abort()


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote: the dataset directory, the rows and files added, the capture counters, the time.
    `open_traces(result.path)` (or `result.open()`) queries it."""

    path: Path
    rows: int
    files: tuple[Path, ...]
    stats: CaptureStats
    seconds: float
    import_id: str
    sources: tuple[str, ...] = field(default=())

    def open(self, **kwargs: Any) -> Any:
        """The dataset, ready to query (`open_traces(self.path, **kwargs)`)."""
        from .query import open_traces

        return open_traces(self.path, **kwargs)

    @property
    def pcap_stats(self) -> CaptureStats:
        """The same as `stats` (the name the in-memory read_pcap result uses)."""
        return self.stats


def import_captures(
    paths: Any,
    to: str | os.PathLike,
    *,
    local: Any = None,
    owner: str | None = None,
    memory: int | str | None = None,
    limits: CaptureLimits | None = None,
    progress: Callable[[int, int], None] | None = None,
    compression: str = "zstd",
) -> ImportResult:
    """Stream pcap/pcapng files (gzip too; several, or directories of rotated captures) into the Parquet dataset
    `to` with memory bounded by `memory` (or `limits`), whatever their size. Everything is checked before any work.
    `progress(done_bytes, total_bytes)` is called as it goes (total: the files' sizes on disk)."""
    if limits is not None and memory is not None:
        raise ValueError("pass memory= or limits=, not both (limits=CaptureLimits(memory=...) holds the budget)")
    if limits is not None and not isinstance(limits, CaptureLimits):
        raise TypeError(f"limits= takes a notebook_im.trace.capture.CaptureLimits, not {type(limits).__name__}")
    limits = limits or CaptureLimits(memory=memory if memory is not None else "512MiB")
    if compression not in ("zstd", "snappy", "gzip", "lz4", "brotli", "none"):
        raise ValueError(f"compression must be one of zstd, snappy, gzip, lz4, brotli, none; not {compression!r}")
    root = check_destination(to)
    from .capture import _Counters

    pre = _Counters()
    files = capture_files(paths, owner, pre)
    total = sum(cf.path.stat().st_size for cf in files)
    root.mkdir(parents=True, exist_ok=True)
    _write_marker(root, None)
    import_id = new_import_id()
    started = time.time()
    t0 = time.perf_counter()
    out = _LocalWriter(root, import_id, compression)
    sink = _CaptureSink(out.deliver, limits.batch_bytes or 1, local)
    try:
        stats = scan(files, sink, limits, (lambda done: progress(done, total)) if progress else None)
        sink.flush()
        rows, written = out.close()
    except BaseException:
        out.abort()
        raise
    stats = stats + CaptureStats(files_skipped=pre.files_skipped)
    seconds = time.perf_counter() - t0
    sources = tuple(str(cf.path) for cf in files)
    _write_marker(
        root,
        {
            "id": import_id,
            "kind": "capture",
            "started": started,
            "seconds": round(seconds, 3),
            "rows": rows,
            "sources": list(sources),
            "stats": stats.as_dict(),
        },
    )
    return ImportResult(root, rows, tuple(written), stats, seconds, import_id, sources)


# -- live traces ----------------------------------------------------------------------------------------------------
# trace -> {dataset directory: rows already flushed there}; weak, so a trace that is gone is forgotten
_FLUSHED: weakref.WeakKeyDictionary[Trace, dict[str, int]] = weakref.WeakKeyDictionary()
_FLUSH_ROWS = 100_000


def write_dataset(trace: Trace, path: str | os.PathLike, *, compression: str = "zstd") -> ImportResult:
    """Flush a live `Trace` (e.g. `platform.trace`) into the dataset at `path`, the layout a capture import writes,
    so a chat recorded today and a production capture are analysed with the same code (`open_traces`). Each call
    writes the rows recorded since this trace's previous call for the same directory (the first call: all of them);
    a trace that was cleared starts again from its first row."""
    from ..record.recorder import Trace

    if not isinstance(trace, Trace):
        raise TypeError(f"write_dataset takes a notebook_im Trace (e.g. platform.trace), not {type(trace).__name__}")
    root = check_destination(path)
    root.mkdir(parents=True, exist_ok=True)
    _write_marker(root, None)
    key = str(root.resolve())
    snap = trace.sip_snapshot()  # one consistent read; positions count the rows the budget evicted too
    n = len(snap)
    total = snap.first + n
    done = _FLUSHED.get(trace, {}).get(key, 0)
    if done > total:
        done = 0  # cleared since: start again
    import_id = new_import_id()
    t0 = time.perf_counter()
    writer = DatasetWriter(root, import_id, compression=compression)
    try:
        fields = snap.fields
        for lo in range(max(done - snap.first, 0), n, _FLUSH_ROWS):  # (rows evicted before a flush are not here)
            hi = min(n, lo + _FLUSH_ROWS)
            ts, direction, transport, local, remote, raw, owner = (
                c[lo:hi]
                for c in (
                    snap.sip_ts,
                    snap.sip_direction,
                    snap.sip_transport,
                    snap.sip_local,
                    snap.sip_remote,
                    snap.sip_raw,
                    snap.sip_owner,
                )
            )
            names: dict[Any, str] = {}

            def name(a: Any, names: dict[Any, str] = names) -> str:
                text = names.get(a)
                if text is None:
                    text = names[a] = "" if not a else (f"[{a[0]}]:{a[1]}" if ":" in str(a[0]) else f"{a[0]}:{a[1]}")
                return text

            out = [d == "out" for d in direction]
            src = [name(lc) if o else name(rm) for o, lc, rm in zip(out, local, remote)]
            dst = [name(rm) if o else name(lc) for o, lc, rm in zip(out, local, remote)]
            ts_ns = (np.asarray(ts, dtype=np.float64) * 1e9).round().astype(np.int64)
            dirs = [d if d in ("in", "out") else None for d in direction]
            table = build_table(ts_ns, owner, dirs, transport, src, dst, raw, [c[lo:hi] for c in fields])
            writer.write(table)
        written = writer.close()
    except BaseException:
        writer.abort()
        raise
    _FLUSHED.setdefault(trace, {})[key] = total
    seconds = time.perf_counter() - t0
    _write_marker(
        root,
        {
            "id": import_id,
            "kind": "trace",
            "started": time.time(),
            "seconds": round(seconds, 3),
            "rows": writer.rows,
            "sources": [trace.name or "trace"],
            "first_row": done,
        },
    )
    return ImportResult(
        root,
        writer.rows,
        tuple(written),
        CaptureStats(sip_messages=writer.rows),
        seconds,
        import_id,
        (trace.name or "trace",),
    )
