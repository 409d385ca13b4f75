"""LadderView: a live SIP ladder (sequence) diagram that grows as messages go over the wire.

    view = nim.LadderView(platform)        # or a Trace, a Server, or anything with `.trace`
    view                                   # in a cell: redraws while new SIP messages arrive
    view.stop()                            # stop following (also on close())

The interface it builds on is small: SIP records (`Trace.sip_records()`: timestamp, direction, transport,
local, remote, raw, owner) in, SVG out. The drawing is the trace package's (`notebook_im.trace.ladder`, the
same diagram as `trace.ladder()`): the view keeps one `Ladder`, feeds it only the records that are new since
the last poll and re-renders it. `renderer=` takes any other function `records -> SVG string` instead.

The trace has no "message recorded" callback (recording is on the hot path and stays a list append), so the
view polls `len(trace)` every `interval` seconds on a daemon thread and re-renders only when it changed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as w

from ..trace.ladder import Ladder

log = logging.getLogger("notebook_im.widgets")

__all__ = ["LadderView"]


def _records_source(source: Any) -> tuple[Callable[[], Sequence[Any]], Callable[[], int] | None]:
    """(function returning the records, cheap function returning how many there are, or None)."""
    trace = getattr(source, "trace", source)
    if hasattr(trace, "sip_records"):
        return trace.sip_records, (lambda: len(trace))
    if callable(source):
        return source, None
    if isinstance(source, (list, tuple)):
        return (lambda: source), (lambda: len(source))
    raise TypeError(
        "LadderView takes a Trace, something with a .trace (Platform, Server), a list of SIP "
        f"records or a function returning one, not {type(source).__name__}"
    )


class LadderView(w.VBox):
    """A ladder diagram widget that follows a trace live (`interval` seconds between polls)."""

    def __init__(
        self,
        source: Any,
        *,
        interval: float = 0.5,
        max_rows: int = 300,
        live: bool = True,
        names: dict[str, str] | None = None,
        renderer: Callable[[Sequence[Any]], str] | None = None,
        height: str = "420px",
    ) -> None:
        self._records, self._len = _records_source(source)
        self.max_rows = max_rows
        self.interval = interval
        self.renderer = renderer
        self.ladder = Ladder(names=names, max_rows=max_rows)
        self.svg = w.HTML()
        self.caption = w.HTML()
        self._count = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        super().__init__([self.caption, w.Box([self.svg], layout=w.Layout(max_height=height, overflow="auto"))])
        self.add_class("nim-ladder-view")
        self._thread: threading.Thread | None = None
        if not live:
            self._stop.set()
        self.refresh(force=True)
        if live:
            self._thread = threading.Thread(target=self._follow, name="nim-ladder-view", daemon=True)
            self._thread.start()

    def refresh(self, force: bool = False) -> bool:
        """Re-render if the trace grew (or `force`). Returns whether it re-rendered. Any thread."""
        with self._lock:
            if not force and self._len is not None and self._len() == self._count:
                return False  # nothing new: skip building the record list
            records = self._records()
            if not force and len(records) == self._count:
                return False
            if len(records) < self._count:  # a different (shorter) list: start over
                self.ladder.arrows.clear()
                self._count = 0
            if self.renderer is not None:
                svg = self.renderer(records)
            else:
                self.ladder.extend_records(records[self._count :])
                svg = self.ladder.to_svg()
            self._count = len(records)
            self.svg.value = svg
            following = " · following live" if not self._stop.is_set() else ""
            self.caption.value = (
                f'<span style="color:#6b7280;font-size:12px">{self._count} SIP messages recorded{following}</span>'
            )
            return True

    def _follow(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - keep following; say what went wrong once per failure
                log.exception("ladder view refresh failed")

    def stop(self) -> None:
        """Stop following the trace (the diagram stays)."""
        stop = getattr(self, "_stop", None)  # also reached from __del__ of a view that failed to build
        if stop is not None:
            stop.set()

    def close(self) -> None:
        """Stop following the trace and close the widget."""
        self.stop()
        super().close()
