"""Recording, the low half of the trace: every SIP message, API event and drop appended as it happens (columnar,
cheap; recorder.py), the header fields pulled out of SIP messages (extract.py), events packed so the garbage
collector does not walk them (packed.py), the byte budget the traces of a process share (budget.py), and the
history store that writes it all to SQLite (store.py). Imports nothing above `sip/`; turning records into
DataFrames is the analysis layer's job (`notebook_im.trace`)."""

from .recorder import Trace

__all__ = ["Trace"]
