"""Recording of every SIP message and API event (columnar, cheap); DataFrames come later and lazily."""
from .recorder import Trace

__all__ = ["Trace"]
