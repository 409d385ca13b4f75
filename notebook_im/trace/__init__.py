"""Analysis, the high half of the trace: DataFrames (frames.py), conversations rebuilt from events
(conversations.py), pcap in and out (capture.py, pcap.py), Parquet datasets and their queries (dataset.py,
layout.py, query.py), ladder diagrams (ladder.py) and plots (plots.py). Sits above the API; pandas and friends
are imported by the modules that need them, not here. The recording itself is `notebook_im.record`."""

from ..record.recorder import Trace

__all__ = ["Trace"]
