"""Digest authentication against the embedded server: challenges, SHA-256, caching, 403, lockout, no leaks."""

from __future__ import annotations

import logging

import pytest

import notebook_im as nim
from tests.helpers import accept_all, udp_exchange

USERS = {"alice": "alice-secret-1", "bob": "bob-secret-2", "carol": "carol-secret-3"}


@pytest.fixture
def auth_server():
    srv = nim.Server(users=USERS, realm="example.test").start().result(10)
    yield srv
    srv.stop()


def test_register_and_chat_with_credentials(auth_server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=auth_server, password=USERS["alice"]).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=auth_server, password=USERS["bob"]).result(10)
    assert set(auth_server.registrations) == {"sip:alice@example.test", "sip:bob@example.test"}
    sessions = accept_all(bob)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    assert session.send("authenticated hello").result(5).status == 200
    assert alice.send_message("sip:bob@example.test", "pager").result(5).status == 200
    assert sessions[0].send("reply").result(5).status == 200
    session.terminate().result(5)
    raw = [r.raw for r in platform.trace.sip_records()]
    challenges = [r for r in raw if r.startswith((b"SIP/2.0 401", b"SIP/2.0 407"))]
    assert challenges and all(b"algorithm=SHA-256" in r for r in challenges)
    creds = [r for r in raw if b"uthorization:" in r]
    assert creds, "requests carried credentials"
    assert all(b"<redacted>" in r for r in creds)
    for r in raw + [r.raw for r in auth_server.trace.sip_records()]:
        for password in USERS.values():
            assert password.encode() not in r
    # credentials are cached per realm: later requests go out authorized at once, no second challenge
    sent = [r.raw for r in platform.trace.sip_records() if r.owner == alice.uri and r.direction == "out"]
    messages = [r for r in sent if r.startswith(b"MESSAGE ")]
    # the two texts and alice's delivery receipt (RFC 5438) for bob's reply
    assert len(messages) == 3 and sum(b"Content-Type: message/cpim" in r for r in messages) == 1
    # credentials only where they belong: the out-of-dialog MESSAGEs carry them pre-emptively (the realm
    # challenged with 407 before); in-dialog ones carry none (they are not challenged: the dialog is routed here)
    pager = [r for r in messages if r.startswith(b"MESSAGE sip:bob@example.test")]
    assert pager and all(b"Proxy-Authorization: Digest <redacted>" in r for r in pager)
    assert all(b"uthorization" not in r for r in messages if r not in pager)
    assert sum(1 for r in sent if r.startswith(b"MESSAGE sip:bob@example.test")) == 1, (
        "pager MESSAGE not challenged again"
    )
    # the server consumes the credentials: bob never sees them
    assert not any(
        b"uthorization" in r.raw for r in platform.trace.sip_records() if r.owner == bob.uri and r.direction == "in"
    )


def test_wrong_password_gets_403_and_lockout(auth_server, platform, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(nim.RequestFailed) as info:
        platform.endpoint("sip:alice@example.test", server=auth_server, password="wrong-guess").result(10)
    assert info.value.status == 403
    for _ in range(5):
        with pytest.raises(nim.RequestFailed):
            platform.endpoint("sip:alice@example.test", server=auth_server, password="wrong-again").result(10)
    with pytest.raises(nim.RequestFailed) as info:  # now even the right password is refused from this source
        platform.endpoint("sip:alice@example.test", server=auth_server, password=USERS["alice"]).result(10)
    assert info.value.status == 403 and "too many" in info.value.reason
    for text in (caplog.text, repr(auth_server), repr(auth_server.auth), repr(info.value)):
        assert "wrong-guess" not in text and USERS["alice"] not in text


def test_no_credentials_no_routing(auth_server, platform):
    platform.endpoint("sip:bob@example.test", server=auth_server, password=USERS["bob"]).result(10)
    mallory = platform.endpoint("sip:mallory@example.test", server=None).result(10)
    # an unauthenticated MESSAGE through the server is challenged and never reaches bob
    raw = (
        "MESSAGE sip:bob@example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{mallory.local_address[1]};branch=z9hG4bKm1;rport\r\n"
        "From: <sip:mallory@example.test>;tag=m\r\nTo: <sip:bob@example.test>\r\nCall-ID: m1@x\r\n"
        "CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    ).encode()
    reply = udp_exchange(raw, (auth_server.host, auth_server.port))
    assert reply.startswith(b"SIP/2.0 407") and b"Proxy-Authenticate: Digest" in reply
    assert not any(
        b"Call-ID: m1@x" in r.raw and r.direction == "out" and not r.raw.startswith(b"SIP/2.0")
        for r in auth_server.trace.sip_records()
    )


def test_cannot_impersonate_another_user(auth_server, platform):
    # carol's credentials, but REGISTER for bob's address: 403
    with pytest.raises(nim.RequestFailed) as info:
        platform.endpoint("sip:bob@example.test", server=auth_server, username="carol", password=USERS["carol"]).result(
            10
        )
    assert info.value.status == 403 and "claims bob" in info.value.reason


def test_md5_only_server_challenge_is_answered(platform):
    from notebook_im.server import auth as auth_mod

    original = auth_mod.ALGORITHMS
    auth_mod.ALGORITHMS = ("MD5",)
    try:
        with nim.Server(users={"alice": "pw-md5"}) as srv:
            alice = platform.endpoint("sip:alice@example.test", server=srv, password="pw-md5").result(10)
            assert alice.state is nim.EndpointState.ENABLED
            assert any(b"algorithm=MD5" in r.raw for r in platform.trace.sip_records() if r.direction == "in")
            alice.disable().result(10)
    finally:
        auth_mod.ALGORITHMS = original


def test_server_warns_when_binding_beyond_loopback_without_users():
    with pytest.warns(UserWarning, match="without users"):
        nim.Server(host="0.0.0.0")


@pytest.mark.slow
def test_stale_nonce_is_rechallenged_transparently(auth_server, platform):
    alice = platform.endpoint("sip:alice@example.test", server=auth_server, password=USERS["alice"]).result(10)
    platform.endpoint("sip:bob@example.test", server=auth_server, password=USERS["bob"]).result(10)
    auth_server.auth.nonce_ttl = 1.0
    # a first pager MESSAGE is challenged (407): from then on alice answers that realm's nonce pre-emptively
    assert alice.send_message("sip:bob@example.test", "before").result(10).status == 200
    import time

    time.sleep(1.2)  # the nonce alice cached is now stale; a fresh one is good for a second
    assert alice.send_message("sip:bob@example.test", "after the nonce expired").result(10).status == 200
    stale = [r.raw for r in platform.trace.sip_records() if r.direction == "in" and b"stale=true" in r.raw]
    assert stale, "the server answered the old nonce with stale=true and the client retried"
    auth_server.auth.nonce_ttl = 300.0


def test_serve_with_users_file(tmp_path):
    import re
    import subprocess
    import sys

    users = tmp_path / "users.txt"
    users.write_text("# lab accounts\nalice:pw-a\nbob:pw-b\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "notebook_im.cli", "serve", "--port", "0", "--users", str(users)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "digest authentication for 2 users" in line and "pw-a" not in line
        port = int(re.search(r"sip:127\.0\.0\.1:(\d+)", line).group(1))
        p = nim.Platform()
        try:
            with pytest.raises(nim.RequestFailed) as info:
                p.endpoint("sip:alice@example.test", server=f"sip:127.0.0.1:{port}", password="nope").result(10)
            assert info.value.status == 403
            assert p.endpoint("sip:bob@example.test", server=f"sip:127.0.0.1:{port}", password="pw-b").result(10)
        finally:
            p.shutdown()
    finally:
        proc.terminate()
        proc.wait(10)
