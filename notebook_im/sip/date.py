"""The Date header (RFC 3261 §20.17): an RFC 1123 date, always in GMT, one-second resolution.

A registrar puts one in its 200 OK; the embedded server stamps one on a MESSAGE it stores for an offline
user, so the receiver learns when the message was really sent (not when it came out of storage). Sans-IO:
the caller passes the time; nothing here reads the clock.
"""

from __future__ import annotations

from datetime import datetime, timezone

# email.utils (and the eight email modules it brings, ~1.5 ms) is imported when a Date is first written or read:
# a client that never meets one does not pay for it at `import notebook_im`.


def format_date(epoch: float) -> str:
    """`epoch` (seconds since 1970, UTC) as a Date header value: `Sat, 13 Nov 2010 23:29:00 GMT`."""
    from email.utils import formatdate

    return formatdate(epoch, usegmt=True)


def parse_date(value: str | None) -> datetime | None:
    """A Date header value as a tz-aware UTC datetime; None if there is none or it cannot be read (a bad
    Date only loses information, it is no reason to refuse the message)."""
    if not value or len(value) > 100:
        return None
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)
