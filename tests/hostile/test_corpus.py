"""Every corpus file through the parser, then over UDP (and a subset over TCP) to a running endpoint and to the
embedded server: valid messages are answered, invalid ones get 4xx/5xx with the reason or are dropped and counted,
and after each one the target still answers the next valid request."""

from __future__ import annotations

import pytest

from notebook_im.sip import RemoteProtocolError, Request, Response, parse_message
from tests.helpers import wait_for
from tests.hostile.corpus import CASES, TCP_CASES, Case, Client, ack_for, assert_alive, instantiate


def test_corpus_is_complete():
    files = {
        p.relative_to(p.parent.parent).with_suffix("").as_posix() for p in CASES[0].path.parent.parent.glob("*/*.sip")
    }
    assert files == {str(c) for c in CASES}, "every .sip file has a manifest entry and every entry a file"
    assert len([c for c in CASES if c.kind == "valid"]) >= 30 and len([c for c in CASES if c.kind == "invalid"]) >= 40
    for case in CASES:
        assert case.meta.get("what"), f"{case}: say what it tests"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_parse_message(case: Case):
    data = case.data
    if case.kind == "valid":
        message = parse_message(data)
        assert isinstance(message, Request if case.meta["parse"] == "request" else Response)
        again = parse_message(bytes(message), stream=True)  # what we accept we can also serialize
        assert bytes(again) == bytes(message)
        if isinstance(message, Request):
            message.from_, message.to, message.cseq, message.vias, message.text()
        return
    with pytest.raises(RemoteProtocolError) as info:
        parse_message(data)
    exc = info.value
    assert exc.status_code == case.meta["status"], exc.reason
    assert isinstance(exc.message, Request) is case.meta["answerable"], exc.reason
    assert case.meta.get("reason", "") in exc.reason


def _target(stack, name: str):
    server, _platform, bob = stack
    if name == "server":
        return (server.host, server.port), (lambda: server.stats)
    return bob.local_address, (lambda: bob.stats)


def throw(case: Case, target: str, transport: str, stack) -> None:
    addr, stats = _target(stack, target)
    expected = case.expected(target)
    before = stats()
    with Client(transport, addr) as client:
        data = instantiate(case.data, client.port, transport)
        client.send(data)
        if expected == "drop":
            wait_for(lambda: stats()["dropped"] > before["dropped"], 5, f"{case} dropped and counted by the {target}")
            late = client.recv(0.05)
            assert late is None or late == b"", f"{case}: a dropped message was answered: {late!r}"
            assert stats()["bad_request_400"] == before["bad_request_400"]
        elif expected == "silent":
            assert client.recv(0.15) is None
            assert stats()["dropped"] == before["dropped"]
        else:
            response = client.final_response(5.0)
            assert isinstance(response, Response), f"{case}: no final response from the {target} ({response!r})"
            allowed = expected if isinstance(expected, list) else [expected]
            assert response.status in allowed, f"{case}: {response.status} {response.reason}"
            if case.kind == "invalid":  # the reason phrase says what is wrong
                assert "(" in response.reason and case.meta.get("reason", "") in response.reason, response.reason
            ack = ack_for(data, response)
            if ack is not None:
                client.send(ack)
    assert_alive(addr, f"after {case} to the {target} over {transport}")


@pytest.mark.parametrize("target", ["endpoint", "server"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_udp(case: Case, target: str, stack):
    throw(case, target, "udp", stack)


@pytest.mark.parametrize("target", ["endpoint", "server"])
@pytest.mark.parametrize("case", TCP_CASES, ids=str)
def test_tcp(case: Case, target: str, stack):
    throw(case, target, "tcp", stack)
