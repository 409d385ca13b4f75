"""The conference focus of the embedded server (RFC 4353 focus, RFC 4579 ad-hoc conferences, RFC 4575 roster),
for IM with three or more participants. By role:

- `state`: what a conference is (its members, subscriptions, roster documents) and the limits;
- `sender`: the one-at-a-time, in-order, bounded queue of in-dialog requests to one participant;
- `focus`: the focus itself: which requests are its own, creating and joining, the in-dialog requests of
  its participants, relaying their messages, dropping the ones that leave or vanish;
- `roster`: SUBSCRIBE/NOTIFY of `Event: conference`;
- `dialout`: REFER, and the INVITE the focus sends for it.

It depends on the proxy only through `host.FocusHost` (what it needs: the stack, the registrar, where a party
may be reached), so the proxy imports the focus and not the other way round.
"""

from .focus import Focus
from .state import FocusLimits

__all__ = ["Focus", "FocusLimits"]
