"""Ready plots of a trace, one call each (matplotlib, imported on first use):

    trace.plot.latency()                   delivery latency of each sent message over time (ms)
    trace.plot.messages_per_participant()  how many IM messages each participant sent (bars)
    trace.plot.composing_time()            seconds between "is typing" and each received message (bars)

Each returns the matplotlib Axes (pass `ax=` to draw into an existing one); the numbers behind a plot are
`trace.plot.latency_data()`, `.messages_per_participant_data()` and `.composing_data()` (DataFrames).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from ..record.recorder import Trace


def _axes(ax: Any) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _fig, ax = plt.subplots(figsize=(7, 3.2))
    return ax


class TracePlots:
    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    # -- data ----------------------------------------------------------------------------------------------
    def latency_data(self) -> pd.DataFrame:
        m = self.trace.messages()
        sent = m[(m["direction"] == "out") & (m["status"] == "delivered")]
        return pd.DataFrame(
            {
                "sent_at": sent["sent_at"],
                "latency_ms": sent["latency"] * 1000.0,
                "sender": sent["sender"],
                "mode": sent["mode"],
            }
        ).reset_index(drop=True)

    def messages_per_participant_data(self) -> pd.Series:
        m = self.trace.messages()
        owners = set(m["owner"].dropna())
        # each message once: as sent by a recorded endpoint, or as received from someone not recorded here
        rows = m[(m["direction"] == "out") | ((m["direction"] == "in") & ~m["sender"].isin(owners))]
        return rows.groupby(rows["sender"].astype(object)).size().sort_values(ascending=False).rename("messages")

    def composing_data(self) -> pd.DataFrame:
        """For each received message: how long its sender was shown composing before it arrived (NaN if
        no "composing" indication came first)."""
        ev = self.trace.events()
        ev = ev[ev["type"].isin(["ComposingChanged", "MessageReceived"])].sort_values("timestamp", kind="stable")
        started: dict[tuple, Any] = {}
        rows = []
        for t, typ, owner, sid, who, state, text in zip(
            ev["timestamp"], ev["type"], ev["owner"], ev["session_id"], ev["participant"], ev["state"], ev["text"]
        ):
            key = (owner, None if pd.isna(sid) else sid, who)
            if typ == "ComposingChanged":
                if state == "composing":
                    started.setdefault(key, t)
                continue
            since = started.pop(key, None)
            rows.append((t, owner, who, text, np.nan if since is None else (t - since).total_seconds()))
        return pd.DataFrame(rows, columns=["received_at", "recipient", "sender", "text", "composing_s"])

    # -- plots ---------------------------------------------------------------------------------------------
    def latency(self, ax: Any = None, **kwargs: Any) -> Any:
        data = self.latency_data()
        ax = _axes(ax)
        if len(data):
            for (sender, mode), part in data.groupby([data["sender"].astype(object), data["mode"].astype(object)]):
                ax.plot(
                    part["sent_at"], part["latency_ms"], marker="o", linestyle="-", label=f"{sender} ({mode})", **kwargs
                )
            ax.legend(fontsize=8)
        ax.set_title("Delivery latency")
        ax.set_xlabel("sent at (UTC)")
        ax.set_ylabel("ms")
        return ax

    def messages_per_participant(self, ax: Any = None, **kwargs: Any) -> Any:
        data = self.messages_per_participant_data()
        ax = _axes(ax)
        if len(data):
            data.plot.bar(ax=ax, **kwargs)
        ax.set_title("Messages sent per participant")
        ax.set_xlabel("")
        ax.set_ylabel("messages")
        return ax

    def composing_time(self, ax: Any = None, **kwargs: Any) -> Any:
        data = self.composing_data()
        ax = _axes(ax)
        if len(data):
            labels = [f"{i + 1}: {str(t)[:16]}" for i, t in enumerate(data["text"])]
            ax.bar(labels, data["composing_s"].fillna(0.0), **kwargs)
            ax.tick_params(axis="x", labelrotation=45)
        ax.set_title("Composing time before each message")
        ax.set_ylabel("seconds")
        return ax
