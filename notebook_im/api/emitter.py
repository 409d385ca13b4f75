"""Event subscription shared by Endpoint and ImSession: `on(Type, cb)`, `async for e in obj.events()` and
`await obj.wait_for(Type)`.

Events are emitted on the library loop thread. Callbacks run there, in order; one that raises is logged
and the others still run. `events()` streams are thread-safe queues that wake their consumer's own loop
(or a blocking `get()` in a plain thread), so they work from a notebook cell, a script or an app.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..runtime import Operation, runtime

log = logging.getLogger("notebook_im.events")

E = TypeVar("E")


class Subscription:
    """Returned by `on()`: call it (or `.cancel()`) to unsubscribe."""

    __slots__ = ("_callbacks", "_entry")

    def __init__(self, callbacks: list[Callable[[Any], Any]], entry: Callable[[Any], Any]) -> None:
        self._callbacks, self._entry = callbacks, entry  # the source's list of callbacks for one event type

    def cancel(self) -> None:
        """Unsubscribe the callback (calling the subscription does the same)."""
        if self._entry in self._callbacks:
            self._callbacks.remove(self._entry)

    __call__ = cancel


class EventStream(Generic[E]):
    """An async (and blocking) iterator over events; subscribed from creation on, so nothing is missed."""

    def __init__(self, source: EventSource, types: tuple[type, ...]) -> None:
        self._buffer: deque[Any] = deque()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None
        self._subs = [source.on(t, self._push) for t in (types or (object,))]
        self.closed = False

    def _push(self, event: Any) -> None:
        with self._lock:
            self._buffer.append(event)
            self._cond.notify_all()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, fut = waiter
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))

    def __aiter__(self) -> EventStream[E]:
        return self

    async def __anext__(self) -> E:
        while True:
            with self._lock:
                if self._buffer:
                    return self._buffer.popleft()
                if self.closed:
                    raise StopAsyncIteration
                loop = asyncio.get_running_loop()
                fut = loop.create_future()
                self._waiter = (loop, fut)
            await fut

    def get(self, timeout: float | None = None) -> E:
        """Block (in a plain thread) for the next event; TimeoutError if none arrives in time."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._buffer or self.closed, timeout):
                raise TimeoutError(f"no event within {timeout} s")
            if not self._buffer:
                raise StopIteration
            return self._buffer.popleft()

    def drain(self) -> list[E]:
        """Take every buffered event now, without waiting."""
        with self._lock:
            items = list(self._buffer)
            self._buffer.clear()
            return items

    def close(self) -> None:
        """Unsubscribe and end the iteration (a waiting `async for` / `get()` returns)."""
        for s in self._subs:
            s.cancel()
        with self._lock:
            self.closed = True
            self._cond.notify_all()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, fut = waiter
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))

    async def aclose(self) -> None:
        """`close()` for `async with`/async generators' protocol."""
        self.close()

    def __enter__(self) -> EventStream[E]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class EventSource:
    """Mixin: subscribers per event type, and a parent that also hears every event (session -> endpoint)."""

    _parent_source: EventSource | None = None

    def __init__(self) -> None:
        self._subscribers: dict[type, list[Callable[[Any], Any]]] = {}

    def on(self, event_type: type[E], callback: Callable[[E], Any]) -> Subscription:
        """Call `callback(event)` for every event of `event_type` (or a subclass). Returns an unsubscribe handle."""
        if not isinstance(event_type, type):
            raise TypeError(f"on() takes an event class such as nim.MessageReceived, not {event_type!r}")
        if not callable(callback):
            raise TypeError(f"on() needs a callable as its second argument, not {callback!r}")
        callbacks = self._subscribers.setdefault(event_type, [])
        callbacks.append(callback)
        return Subscription(callbacks, callback)

    def events(self, *types: type) -> EventStream[Any]:
        """A stream of this object's events (all, or only `types`): `async for e in obj.events(): ...`."""
        return EventStream(self, types)

    def wait_for(
        self, event_type: type[E], *, predicate: Callable[[E], bool] | None = None, timeout: float | None = 10.0
    ) -> Operation[E]:
        """An Operation that resolves with the first event of `event_type` (or a subclass) for which
        `predicate(event)` is true (any one without a predicate), emitted from now on.

        It listens from the moment it is called, so call it *before* the action that causes the event:

            arrival = bob.wait_for(nim.MessageReceived)
            await alice.send_message("sip:bob@example.test", "hi")
            event = await arrival            # or arrival.result() in a script

        Raises TimeoutError when no such event comes within `timeout` seconds (None waits for ever). It
        unsubscribes itself once resolved, timed out or cancelled. A predicate that raises fails the Operation
        with that exception."""
        if not isinstance(event_type, type):
            raise TypeError(f"wait_for() takes an event class such as nim.MessageReceived, not {event_type!r}")
        if predicate is not None and not callable(predicate):
            raise TypeError(f"predicate must be a function of the event returning True or False, not {predicate!r}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
            raise ValueError(f"timeout must be a number of seconds >= 0 (or None to wait for ever), not {timeout!r}")
        rt = runtime()
        future: concurrent.futures.Future[E] = concurrent.futures.Future()
        timer: list[asyncio.TimerHandle] = []

        def on_event(event: Any) -> None:
            if future.done():
                return
            try:
                if predicate is not None and not predicate(event):
                    return
            except Exception as exc:  # noqa: BLE001 - reported to whoever awaits the operation
                _settle(future, exc=exc)
                return
            _settle(future, result=event)

        def expire() -> None:
            _settle(
                future,
                exc=TimeoutError(
                    f"no {event_type.__name__} event{' matching the predicate' if predicate else ''} within {timeout} s"
                ),
            )

        def arm() -> None:
            if not future.done():
                timer.append(rt.loop.call_later(timeout, expire))

        subscription = self.on(event_type, on_event)

        def cleanup(_f: Any) -> None:
            subscription.cancel()
            if timer:
                rt.call_soon(timer[0].cancel)

        future.add_done_callback(cleanup)
        if timeout is not None:
            rt.call_soon(arm)
        return Operation(future, f"wait_for({event_type.__name__})", rt)

    def _emit(self, event: Any) -> None:
        source: EventSource | None = self
        while source is not None:  # (the chain of EventSources: their own members, so no private access across)
            source._dispatch(event)  # noqa: SLF001
            source = source._parent_source  # noqa: SLF001

    def _dispatch(self, event: Any) -> None:
        for etype, callbacks in list(self._subscribers.items()):
            if isinstance(event, etype):
                for cb in list(callbacks):
                    try:
                        cb(event)
                    except Exception:  # noqa: BLE001 - a user callback must not kill the loop
                        log.exception("event callback %r raised on %s", cb, type(event).__name__)


def _settle(future: concurrent.futures.Future, *, result: Any = None, exc: BaseException | None = None) -> None:
    """Resolve `future` once; a second outcome (an event racing the timeout, a cancel) is ignored."""
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass
