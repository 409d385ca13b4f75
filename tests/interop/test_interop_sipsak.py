"""sipsak against the embedded notebook_im server (nim.Server): a hand-written MESSAGE relayed to a
registered endpoint, and an OPTIONS ping answered by the server itself.

sipsak is run in shoot mode with a request file (`-f`), never `-M`, which crashes in Debian's 0.9.8.1;
the server sits on a 4-digit port because sipsak truncates 5-digit ones in URIs it builds (DESIGN.md §7).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

import notebook_im as nim
from support.programs import HOST, REQUESTS_DIR, ToolResult, require, run_tool

pytestmark = pytest.mark.interop

SIPSAK_TIMEOUT = 30


def sipsak(*args: str | Path) -> ToolResult:
    return run_tool([require("sipsak"), *args], timeout=SIPSAK_TIMEOUT)


def final_status(result: ToolResult) -> int | None:
    """The status code of the last response sipsak printed (-vv prints each one it receives)."""
    codes = re.findall(r"^\s*SIP/2\.0 (\d{3}) ", result.stdout, flags=re.M)
    return int(codes[-1]) if codes else None


def write_message(tmp_path: Path, *, ruri: str, to: str, text: str) -> Path:
    """Fill in requests/message.txt (CRLF, exact Content-Length) and write it to tmp_path."""
    body = text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
    template = (REQUESTS_DIR / "message.txt").read_bytes()
    values = {
        "@RURI@": ruri,
        "@TO@": to,
        "@TAG@": uuid.uuid4().hex[:8],
        "@CALLID@": f"{uuid.uuid4().hex}@{HOST}",
        "@LENGTH@": str(len(body)),
    }
    for token, value in values.items():
        template = template.replace(token.encode(), value.encode())
    request = template.replace(b"@BODY@", body)
    assert not re.search(rb"@[A-Z]+@", request), request  # every token filled in
    path = tmp_path / "request.txt"
    path.write_bytes(request)
    return path


@pytest.mark.parametrize(
    "ruri_form",
    [
        pytest.param("sip:{user}@{host}", id="ruri-without-port"),
        # what sipsak itself would put in the request line for -s sip:bob@127.0.0.1:PORT
        pytest.param("sip:{user}@{host}:{port}", id="ruri-with-server-port"),
    ],
)
@pytest.mark.parametrize("bob_transport", ["udp", "tcp"])
def test_sipsak_message_reaches_registered_endpoint(
    nim_server: nim.Server, platform: nim.Platform, tmp_path: Path, ruri_form: str, bob_transport: str
) -> None:
    bob = platform.endpoint(f"sip:bob@{HOST}", server=nim_server.uri, transport=bob_transport).result(10)
    assert nim_server.registrations.get(f"sip:bob@{HOST}"), nim_server.registrations
    received = bob.events(nim.MessageReceived)

    text = "hello bob, this is sipsak (ü)"
    ruri = ruri_form.format(user="bob", host=HOST, port=nim_server.port)
    request = write_message(tmp_path, ruri=ruri, to=f"sip:bob@{HOST}", text=text)
    result = sipsak("-vv", "-f", request, "-s", f"sip:bob@{HOST}:{nim_server.port}")

    assert final_status(result) == 200, f"sipsak did not get 200 for MESSAGE {ruri}:\n{result}"
    assert result.returncode == 0, result
    try:
        event = received.get(timeout=5)
    except TimeoutError:
        pytest.fail(f"bob got no MessageReceived\n{result}")
    assert (event.text, event.mode, event.session) == (text, "pager", None)
    assert event.content_type == "text/plain"
    assert event.participant.uri == f"sip:sipsak@{HOST}"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipsak_options_ping(nim_server: nim.Server, transport: str) -> None:
    result = sipsak("-vv", "-E", transport, "-s", f"sip:{HOST}:{nim_server.port}")
    assert final_status(result) == 200, result
    assert result.returncode == 0, result
    assert "OPTIONS" in result.stdout, result
