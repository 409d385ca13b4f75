"""The library's own asyncio loop, on a daemon thread, and `Operation`, the handle every call returns.

Why a loop thread: a notebook kernel already runs a loop (ipykernel), a script may run none, an app
may run its own. Running all protocol work on one loop we own makes every public call behave the same
everywhere without nest_asyncio (archived, broken with Python 3.12+, uvloop and ipykernel 7 subshells).
This is the pattern jupyter_core, nbclient, fsspec and dask settled on.

`Operation` is UCCAPI's operation context made Pythonic: the work is scheduled immediately, and the
handle can be awaited from any loop, waited on with `.result(timeout)` from any thread except the
library's own (which would deadlock, so it raises instead), or watched with callbacks.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

from .sip.errors import NotebookImError

log = logging.getLogger("notebook_im")

T = TypeVar("T")


class DeadlockError(NotebookImError, RuntimeError):
    """`.result()` was called on the library's loop thread, where it could never complete."""


LOOP_ENV = "NOTEBOOK_IM_LOOP"


def new_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    """The loop the library runs on, and its kind ("uvloop" or "asyncio").

    uvloop (libuv, in C) runs the same protocol code with less overhead per datagram; it is used when it is
    installed (`pip install notebook_im[fast]`) unless `NOTEBOOK_IM_LOOP=asyncio` says otherwise.
    `NOTEBOOK_IM_LOOP=uvloop` insists on it (an error if it is missing). Only the library's own thread runs
    this loop, so the kernel's loop and the user's code are not affected either way.
    """
    choice = os.environ.get(LOOP_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "asyncio", "uvloop"):
        raise ValueError(f"{LOOP_ENV}={choice!r}: use 'auto' (uvloop when installed), 'asyncio' or 'uvloop'")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ImportError(f"{LOOP_ENV}=uvloop but uvloop is not installed: pip install uvloop") from None
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


class Runtime:
    """One asyncio loop per process, owned by notebook_im, running on a daemon thread."""

    _instance: Runtime | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.loop, self.loop_kind = new_loop()
        self.loop.set_exception_handler(self._exception_handler)
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="notebook_im-loop", daemon=True)
        self.thread.start()
        self._ready.wait()

    @classmethod
    def current(cls) -> Runtime | None:
        """The runtime if one was started (None before the first call that needs one)."""
        return cls._instance

    @classmethod
    def get(cls) -> Runtime:
        inst = cls._instance
        if inst is not None and inst.thread.is_alive():
            return inst
        with cls._lock:
            if cls._instance is None or not cls._instance.thread.is_alive():
                cls._instance = Runtime()
            return cls._instance

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    @staticmethod
    def _exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        log.error("notebook_im loop: %s", context.get("message"), exc_info=context.get("exception"))

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread.ident

    def submit(self, coro: Coroutine[Any, Any, T], description: str = "") -> Operation[T]:
        """Schedule `coro` on the loop now and return its Operation."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return Operation(future, description or getattr(coro, "__qualname__", "operation"), self)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the loop thread (directly if already there)."""
        if self.in_loop_thread():
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def run_sync(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run a plain function on the loop thread and return its result (used for thread-safe reads)."""
        if self.in_loop_thread():
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(call)
        return future.result(timeout)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)


def runtime() -> Runtime:
    return Runtime.get()


@atexit.register
def _shutdown_runtime() -> None:
    inst = Runtime.current()
    if inst is not None:
        inst.stop()


class Operation(Generic[T]):
    """A scheduled piece of work: awaitable from any loop, blockable from any other thread.

    >>> op = endpoint.send_message("sip:bob@example.test", "hi")   # doctest: +SKIP
    >>> await op            # in a notebook cell or any coroutine       # doctest: +SKIP
    >>> op.result(5)        # in a plain script or another thread       # doctest: +SKIP
    """

    __slots__ = ("_future", "description", "_runtime")

    def __init__(self, future: concurrent.futures.Future, description: str, rt: Runtime) -> None:
        self._future = future
        self.description = description
        self._runtime = rt

    def __await__(self) -> Generator[Any, None, T]:
        loop = asyncio.get_running_loop()
        return asyncio.wrap_future(self._future, loop=loop).__await__()

    def result(self, timeout: float | None = None) -> T:
        """Block until done and return the result (or raise its exception).

        Raises DeadlockError on the library's own loop thread (inside an event callback): there, use
        `await` in a coroutine or `add_done_callback` instead.
        """
        if self._runtime.in_loop_thread() and not self._future.done():
            raise DeadlockError(
                f"{self.description}: .result() was called on notebook_im's event-loop thread (inside an event "
                "callback), where it would deadlock. Use `await operation` in a coroutine, or "
                "operation.add_done_callback(fn), instead."
            )
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            if self._future.done():  # the work itself raised TimeoutError (the same class on 3.11+): its own
                raise  # message says what timed out
            raise TimeoutError(f"{self.description} did not finish within {timeout} s") from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception the work raised (None if it succeeded); blocks like `result()`."""
        if self._runtime.in_loop_thread() and not self._future.done():
            raise DeadlockError(f"{self.description}: .exception() on the loop thread would deadlock")
        return self._future.exception(timeout)

    def done(self) -> bool:
        """True once the work finished, failed or was cancelled."""
        return self._future.done()

    def cancelled(self) -> bool:
        """True if the operation was cancelled before it finished."""
        return self._future.cancelled()

    def cancel(self) -> bool:
        """Try to cancel the work; False if it already finished."""
        return self._future.cancel()

    def add_done_callback(self, fn: Callable[[Operation[T]], Any]) -> None:
        """Call `fn(operation)` when done (on the thread that completes it, usually the loop thread)."""
        self._future.add_done_callback(lambda _f: fn(self))

    def __repr__(self) -> str:
        f = self._future
        if not f.done():
            status = "pending"
        elif f.cancelled():
            status = "cancelled"
        elif f.exception() is not None:
            status = f"failed: {f.exception()!r}"
        else:
            status = f"done: {f.result()!r}"
        return f"<Operation {self.description} {status}>"


def submit(coro: Coroutine[Any, Any, T] | Awaitable[T], description: str = "") -> Operation[T]:
    return runtime().submit(coro, description)  # type: ignore[arg-type]
