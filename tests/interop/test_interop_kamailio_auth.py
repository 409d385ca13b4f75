"""notebook_im endpoints authenticate with Kamailio's auth + auth_db modules (SHA-256 digest, qop=auth,
nonce counting), then chat through it; a wrong password is refused."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

import notebook_im as nim
from support.programs import Kamailio, free_port, start_kamailio
from tests.helpers import accept_all, wait_for

pytestmark = pytest.mark.interop

USERS = {"alice": "alice-kam-pw", "bob": "bob-kam-pw"}


@pytest.fixture(scope="module")
def kamailio_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    workdir = tmp_path_factory.mktemp("kamailio-auth")
    db = workdir / "dbtext"
    db.mkdir()
    (db / "version").write_text("table_name(str) table_version(int)\nsubscriber:7\n")
    rows = "".join(f"{i}:{u}:example.test:{p}:::\n" for i, (u, p) in enumerate(USERS.items(), 1))
    (db / "subscriber").write_text(
        "id(int,auto) username(str) domain(str) password(str) ha1(str,null) ha1b(str,null)\n" + rows
    )
    k = start_kamailio(workdir, free_port(), defines=["WITH_AUTH", f'DBURL="text://{db}"'])
    try:
        yield k
    finally:
        code = k.process.stop(grace=20)  # a loaded 2-core machine can take a while to stop all workers
        assert code in (0, -signal.SIGTERM), k.describe()


def test_register_and_chat_with_digest(kamailio_auth: Kamailio, platform: nim.Platform) -> None:
    alice = platform.endpoint("sip:alice@example.test", server=kamailio_auth.uri, password=USERS["alice"]).result(10)
    bob = platform.endpoint(
        "sip:bob@example.test", server=kamailio_auth.uri, password=USERS["bob"], transport="tcp"
    ).result(10)
    sessions = accept_all(bob)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    assert session.send("through an authenticating Kamailio").result(10).status == 200
    assert alice.send_message("sip:bob@example.test", "pager with credentials").result(10).status == 200
    wait_for(lambda: sessions and len(sessions[0].messages) == 1)
    assert sessions[0].send("reply").result(10).status == 200
    session.terminate().result(10)
    received = [r.raw for r in platform.trace.sip_records() if r.direction == "in"]
    challenges = [r for r in received if r.startswith((b"SIP/2.0 401", b"SIP/2.0 407"))]
    assert challenges, "Kamailio challenged"
    assert any(b"algorithm=SHA-256" in r for r in challenges)
    sent = [r.raw for r in platform.trace.sip_records() if r.direction == "out" and r.owner == alice.uri]
    assert any(b"Authorization: Digest <redacted>" in r for r in sent)
    assert all(USERS["alice"].encode() not in r for r in sent)


def test_wrong_password_is_refused(kamailio_auth: Kamailio, platform: nim.Platform) -> None:
    with pytest.raises(nim.RequestFailed) as info:
        platform.endpoint("sip:alice@example.test", server=kamailio_auth.uri, password="not-it").result(10)
    assert info.value.status == 403
    assert "not-it" not in str(info.value)


def test_the_callee_never_receives_the_callers_credentials(kamailio_auth: Kamailio, platform: nim.Platform) -> None:
    """Kamailio challenges REGISTER with 401 and initial requests with 407, consumes the credentials it checked and
    relays in-dialog requests by loose_route without a challenge. The caller's digest responses (enough for an
    offline dictionary attack on the password) must reach nobody but Kamailio: `Authorization` only on REGISTER,
    `Proxy-Authorization` only on initial requests, none in dialog."""
    alice = platform.endpoint("sip:alice@example.test", server=kamailio_auth.uri, password=USERS["alice"]).result(10)
    bob = platform.endpoint("sip:bob@example.test", server=kamailio_auth.uri, password=USERS["bob"]).result(10)
    sessions = accept_all(bob)
    session = alice.sessions.create("sip:bob@example.test").result(10)
    for i in range(3):
        assert session.send(f"in dialog {i}").result(10).status == 200
    assert alice.send_message("sip:bob@example.test", "pager").result(10).status == 200
    wait_for(lambda: sessions and len(sessions[0].messages) == 3)
    assert sessions[0].send("back").result(10).status == 200
    session.terminate().result(10)
    records = platform.trace.sip_records()
    to_bob = [r.raw for r in records if r.owner == bob.uri and r.direction == "in" and not r.raw.startswith(b"SIP/2.0")]
    assert any(r.startswith(b"INVITE ") for r in to_bob) and sum(r.startswith(b"MESSAGE ") for r in to_bob) >= 4
    assert not [r.split(b"\r\n", 1)[0] for r in to_bob if b"uthorization:" in r], "bob saw alice's credentials"
    from_alice = [
        r.raw for r in records if r.owner == alice.uri and r.direction == "out" and not r.raw.startswith(b"SIP/2.0")
    ]
    for raw in from_alice:
        method = raw.split(b" ", 1)[0]
        in_dialog = b";tag=" in next(line for line in raw.split(b"\r\n") if line.startswith(b"To:"))
        if b"\r\nAuthorization:" in raw:
            assert method == b"REGISTER", raw[:200]
        if b"Proxy-Authorization:" in raw:
            assert method != b"REGISTER" and not in_dialog, raw[:200]
