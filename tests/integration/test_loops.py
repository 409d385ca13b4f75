"""The library's loop thread runs on uvloop when installed and on asyncio otherwise (NOTEBOOK_IM_LOOP chooses):
the same chat works on both. Each runs in its own process because the loop is created once per process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import notebook_im as nim
    from notebook_im.runtime import runtime
    with nim.Server() as server, nim.Platform("loops") as p:
        alice = p.endpoint("sip:alice@example.test", server=server).result(10)
        bob = p.endpoint("sip:bob@example.test", server=server, transport="tcp").result(10)
        got = []
        bob.sessions.on_incoming(lambda inc: inc.accept())
        bob.on(nim.MessageReceived, lambda e: got.append(e.text))
        s = alice.sessions.create("sip:bob@example.test").result(10)
        for i in range(200):
            s.send(f"m{i}")
        s.send("last").result(10)
        s.terminate().result(10)
        assert got == [f"m{i}" for i in range(200)] + ["last"], got[:5]
        print(runtime().loop_kind, type(runtime().loop).__module__, len(got))
""")


@pytest.mark.parametrize("choice,module", [("asyncio", "asyncio"), ("uvloop", "uvloop"), ("auto", "uvloop")])
def test_chat_on_each_loop(choice: str, module: str) -> None:
    env = {**os.environ, "NOTEBOOK_IM_LOOP": choice}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    kind, loop_module, count = out.stdout.split()
    assert kind == ("uvloop" if module == "uvloop" else "asyncio")
    assert loop_module.startswith(module) and count == "201"


def test_a_wrong_loop_choice_says_what_to_write() -> None:
    env = {**os.environ, "NOTEBOOK_IM_LOOP": "trio"}
    out = subprocess.run(
        [sys.executable, "-c", "import notebook_im as nim; nim.Platform()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "use 'auto' (uvloop when installed), 'asyncio' or 'uvloop'" in out.stderr
