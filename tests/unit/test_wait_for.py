"""`EventSource.wait_for`: an Operation resolving with the first matching event, TimeoutError after `timeout`,
unsubscribed once it is settled (resolved, timed out, cancelled); awaitable from a loop, `.result()` in a script.
The unit tests drive a bare EventSource, emitting on the library loop thread as the real objects do; the last
test waits for real events of an endpoint and a session through the embedded server."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import pytest

import notebook_im as nim
from notebook_im.api.emitter import EventSource
from notebook_im.runtime import runtime


@dataclass(frozen=True)
class Ping:
    n: int


@dataclass(frozen=True)
class Pong:
    n: int


def emit_on_loop(source: EventSource, *events: object, delay: float = 0.0) -> None:
    """Emit `events` on the library loop thread (where real events come from), after `delay` seconds."""

    def later() -> None:
        for e in events:
            source._emit(e)

    runtime().loop.call_soon_threadsafe(lambda: runtime().loop.call_later(delay, later))


def subscribers(source: EventSource) -> int:
    return sum(len(v) for v in source._subscribers.values())


def test_resolves_with_the_first_matching_event_and_unsubscribes():
    source = EventSource()
    op = source.wait_for(Ping, predicate=lambda e: e.n >= 2)
    assert isinstance(op, nim.Operation) and not op.done() and subscribers(source) == 1
    emit_on_loop(source, Pong(5), Ping(1), Ping(2), Ping(3))
    assert op.result(5) == Ping(2)
    deadline = time.monotonic() + 2
    while subscribers(source) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert subscribers(source) == 0


def test_without_predicate_any_event_of_the_type_or_a_subclass():
    @dataclass(frozen=True)
    class LoudPing(Ping):
        pass

    source = EventSource()
    op = source.wait_for(Ping)
    emit_on_loop(source, Pong(0), LoudPing(7))
    assert op.result(5) == LoudPing(7)


def test_listens_from_the_call_on_not_before():
    source = EventSource()
    source._emit(Ping(1))  # before: not seen
    op = source.wait_for(Ping, timeout=0.3)
    with pytest.raises(TimeoutError, match=r"no Ping event within 0.3 s"):
        op.result(5)
    assert subscribers(source) == 0


def test_timeout_names_the_predicate_and_unsubscribes():
    source = EventSource()
    op = source.wait_for(Ping, predicate=lambda e: e.n == 99, timeout=0.2)
    emit_on_loop(source, Ping(1))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="matching the predicate"):
        op.result(5)
    assert 0.15 < time.monotonic() - started < 3
    assert subscribers(source) == 0


def test_awaitable_from_another_event_loop():
    source = EventSource()

    async def main() -> Ping:
        op = source.wait_for(Ping)
        emit_on_loop(source, Ping(3), delay=0.05)
        return await op

    assert asyncio.run(main()) == Ping(3)


def test_a_predicate_that_raises_fails_the_operation():
    source = EventSource()
    op = source.wait_for(Ping, predicate=lambda e: 1 / 0)
    emit_on_loop(source, Ping(1))
    with pytest.raises(ZeroDivisionError):
        op.result(5)
    assert subscribers(source) == 0


def test_cancel_unsubscribes():
    source = EventSource()
    op = source.wait_for(Ping, timeout=None)
    assert op.cancel() and op.cancelled()
    assert subscribers(source) == 0
    source._emit(Ping(1))  # nothing left to resolve, nothing raises


def test_result_in_an_event_callback_raises_deadlock_error():
    source = EventSource()
    op = source.wait_for(Ping, timeout=None)
    seen: list[BaseException] = []
    done = threading.Event()

    def callback(_e: Pong) -> None:
        try:
            op.result(1)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            seen.append(exc)
        done.set()

    source.on(Pong, callback)
    emit_on_loop(source, Pong(1))
    assert done.wait(5) and isinstance(seen[0], nim.DeadlockError)
    op.cancel()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"event_type": "MessageReceived"}, TypeError),
        ({"event_type": Ping, "predicate": 3}, TypeError),
        ({"event_type": Ping, "timeout": -1}, ValueError),
        ({"event_type": Ping, "timeout": "5"}, ValueError),
    ],
)
def test_bad_arguments_say_what_a_good_one_looks_like(kwargs, error):
    source = EventSource()
    event_type = kwargs.pop("event_type")
    with pytest.raises(error, match="wait_for|predicate|timeout"):
        source.wait_for(event_type, **kwargs)
    assert subscribers(source) == 0


def test_endpoint_and_session_events_through_the_server(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    bob.sessions.on_incoming(lambda incoming: incoming.accept())
    pager = bob.wait_for(nim.MessageReceived, predicate=lambda e: e.mode == "pager")
    alice.send_message("sip:bob@example.test", "pager hello").result(10)
    assert pager.result(5).text == "pager hello"

    session = alice.sessions.create("sip:bob@example.test").result(10)
    typing = session.wait_for(nim.ComposingChanged)
    reply = session.wait_for(nim.MessageReceived)
    bob_session = bob.sessions.sessions[0]
    bob_session.start_composing().result(5)
    bob_session.send("session hello").result(5)
    assert typing.result(5).composing is True
    assert reply.result(5).text == "session hello"
    ended = session.wait_for(nim.SessionTerminated)
    bob_session.terminate().result(5)
    assert ended.result(5).by_remote


def test_result_with_a_shorter_wait_leaves_the_operation_listening():
    source = EventSource()
    op = source.wait_for(Ping, timeout=None)
    with pytest.raises(TimeoutError, match="did not finish within 0.1 s"):
        op.result(0.1)
    emit_on_loop(source, Ping(4))
    assert op.result(5) == Ping(4)
