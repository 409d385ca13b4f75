"""The library-owned loop: Operations work from asyncio.run, threads and plain scripts, never deadlock."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest

import notebook_im as nim
from notebook_im.runtime import runtime
from tests.helpers import accept_all, wait_for


def test_operation_awaitable_from_a_foreign_loop(server, platform):
    async def main():
        alice = await platform.endpoint("sip:alice@example.test", server=server)
        bob = await platform.endpoint("sip:bob@example.test", server=server)
        accept_all(bob)
        session = await alice.sessions.create("sip:bob@example.test")
        stream = bob.events(nim.MessageReceived)
        delivered = await session.send("from asyncio.run")
        event = await asyncio.wait_for(stream.__anext__(), 5)
        await session.terminate()
        return delivered, event

    delivered, event = asyncio.run(main())
    assert delivered.status == 200 and event.text == "from asyncio.run"


def test_operation_from_many_threads(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    received = bob.events(nim.MessageReceived)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                assert alice.send_message("sip:bob@example.test", f"t{n}-{i}").result(10).status == 200
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    texts = {received.get(timeout=5).text for _ in range(40)}
    assert texts == {f"t{n}-{i}" for n in range(4) for i in range(10)}


def test_result_on_loop_thread_raises_instead_of_deadlocking(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    platform.endpoint("sip:bob@example.test", server=server).result(10)
    caught: list[BaseException] = []

    def callback(_event):
        op = alice.send_message("sip:bob@example.test", "inside a callback")
        try:
            op.result(5)
        except nim.DeadlockError as exc:
            caught.append(exc)

    alice.on(nim.MessageDelivered, callback)
    alice.send_message("sip:bob@example.test", "trigger").result(5)
    wait_for(lambda: caught, what="DeadlockError")
    assert "await" in str(caught[0]) and "add_done_callback" in str(caught[0])


def test_operation_repr_done_and_callbacks(server, platform):
    op = platform.endpoint("sip:alice@example.test", server=server)
    seen: list = []
    op.add_done_callback(lambda o: seen.append(o.done()))
    ep = op.result(10)
    assert op.done() and "done" in repr(op) and "alice" in repr(op)
    wait_for(lambda: seen == [True])
    assert isinstance(ep, nim.Endpoint)
    failing = ep.send_message("sip:nobody@example.test", "x")
    with pytest.raises(nim.RequestFailed):
        failing.result(10)
    assert "failed" in repr(failing) and isinstance(failing.exception(), nim.RequestFailed)


def test_raising_callback_does_not_kill_the_loop(server, platform, caplog):
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    bob.on(nim.MessageReceived, lambda e: 1 / 0)
    received = bob.events(nim.MessageReceived)
    for text in ("one", "two"):
        assert alice.send_message("sip:bob@example.test", text).result(5).status == 200
    assert [received.get(timeout=5).text for _ in range(2)] == ["one", "two"]
    assert runtime().thread.is_alive()
    assert "ZeroDivisionError" in caplog.text


def test_unsubscribe(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=server).result(10)
    got: list = []
    sub = bob.on(nim.MessageReceived, got.append)
    alice.send_message("sip:bob@example.test", "a").result(5)
    wait_for(lambda: len(got) == 1)
    sub()
    alice.send_message("sip:bob@example.test", "b").result(5)
    assert len(got) == 1


def test_api_argument_errors_say_what_to_do(server, platform):
    with pytest.raises(ValueError, match="sip:bob@example.test"):
        platform.endpoint("bob", server=server)
    with pytest.raises(ValueError, match="transport"):
        platform.endpoint("sip:bob@example.test", server=server, transport="sctp")
    with pytest.raises(TypeError, match="nim.Server"):
        platform.endpoint("sip:bob@example.test", server=5060)
    alice = platform.endpoint("sip:alice@example.test", server=server).result(10)
    with pytest.raises(ValueError, match="content_type"):
        alice.send_message("sip:bob@example.test", "x", content_type="image/png")
    with pytest.raises(TypeError, match="str"):
        alice.send_message("sip:bob@example.test", b"bytes")
    with pytest.raises(ValueError, match="user part"):
        alice.sessions.create("sip:example.test")
    with pytest.raises(TypeError, match="event class"):
        alice.on("MessageReceived", print)
    alice.disable().result(10)
    with pytest.raises(nim.InvalidState, match="platform.endpoint"):
        alice.send_message("sip:bob@example.test", "x")


@pytest.mark.slow
def test_registration_is_refreshed_and_disable_unregisters(server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=server, expires=2).result(10)
    wait_for(
        lambda: (
            sum(1 for r in server.trace.sip_records() if r.direction == "in" and r.raw.startswith(b"REGISTER")) >= 2
        ),
        timeout=4,
        what="a refresh REGISTER",
    )
    assert "sip:alice@example.test" in server.registrations
    alice.disable().result(10)
    assert alice.state is nim.EndpointState.DISABLED
    assert "sip:alice@example.test" not in server.registrations


def test_import_is_light_and_fast():
    code = (
        "import sys, time; t = time.perf_counter(); import notebook_im; dt = time.perf_counter() - t; "
        "bad = [m for m in ('pandas', 'ipywidgets', 'IPython', 'numpy') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_a_timeout_raised_by_the_work_is_not_reported_as_results_own_wait():
    """`.result(5)` on work that itself raises TimeoutError (asyncio's is the same class) re-raises that error,
    with what timed out, instead of claiming the 5 s ran out."""
    import asyncio

    from notebook_im.runtime import runtime

    async def work() -> None:
        raise asyncio.TimeoutError("the ACK never came")

    op = runtime().submit(work(), "work()")
    with pytest.raises(TimeoutError, match="the ACK never came"):
        op.result(5)
