"""The README example in a real Jupyter kernel (ipykernel 7): top-level await and blocking calls in cells."""

from __future__ import annotations

import jupyter_client  # installed by `make test` (the test extra)
import jupyter_client.manager
import pytest

pytestmark = pytest.mark.kernel

CELLS = [
    "import notebook_im as nim\nserver = nim.Server().start().result(10)\nplatform = nim.Platform()",
    'alice = await platform.endpoint("sip:alice@example.test", server=server.uri)',
    'bob = platform.endpoint("sip:bob@example.test", server=server.uri).result(10)\n'
    "bob.sessions.on_incoming(lambda incoming: incoming.accept())\n"
    "got = []\nbob.on(nim.MessageReceived, lambda e: got.append(e.text))",
    'session = await alice.sessions.create("sip:bob@example.test")\nawait session.start_composing()',
    'delivered = await session.send("hello Bob")\nprint("STATUS", delivered.status)',
    'await alice.send_message("sip:bob@example.test", "pager mode")',
    "import asyncio\nfor _ in range(200):\n    if len(got) == 2: break\n    await asyncio.sleep(0.01)\nprint('GOT', got)",
    "await session.terminate()\nplatform.shutdown(); server.stop()\nprint('DONE')",
]


def test_readme_example_in_ipykernel():
    import ipykernel

    assert int(ipykernel.__version__.split(".")[0]) >= 7
    km, kc = jupyter_client.manager.start_new_kernel(kernel_name="python3")
    try:
        outputs = []
        for cell in CELLS:
            chunks: list[str] = []
            reply = kc.execute_interactive(cell, timeout=60, output_hook=lambda m, chunks=chunks: _collect(m, chunks))
            assert reply["content"]["status"] == "ok", (cell, chunks)
            outputs.append("".join(chunks))
        text = "\n".join(outputs)
        assert "STATUS 200" in text
        assert "GOT ['hello Bob', 'pager mode']" in text
        assert "DONE" in text
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _collect(msg, chunks):
    if msg["header"]["msg_type"] == "stream":
        chunks.append(msg["content"]["text"])
    elif msg["header"]["msg_type"] == "error":
        chunks.append("\n".join(msg["content"]["traceback"]))
