"""Unit tests (no sockets) of the sans-IO conference pieces: RFC 4575 conference-info and RFC 3862 CPIM."""

from __future__ import annotations

import pytest

from notebook_im.im import conference_info as ci
from notebook_im.im import cpim
from notebook_im.sip.errors import RemoteProtocolError

CONF = "sip:conf-1@127.0.0.1:5060"


def user(entity: str, status: str = "connected", state: str = "full", name: str | None = None, **kw) -> ci.UserInfo:
    return ci.UserInfo(entity, state, name, (ci.EndpointInfo(entity, status, **kw),))


def doc(version: int, *users: ci.UserInfo, state: str = "partial") -> ci.ConferenceInfo:
    return ci.ConferenceInfo(CONF, version, state, tuple(users))


def test_build_parse_round_trip() -> None:
    info = ci.ConferenceInfo(
        CONF,
        7,
        "full",
        (
            user("sip:alice@example.test", name="Alice & <Co>", joining_method="focus-owner"),
            user("sip:bob@example.test", "dialing-out", joining_method="dialed-out"),
            user(
                "sip:carol@example.test",
                "disconnected",
                disconnection_method="busy",
                disconnection_reason="486 Busy Here",
            ),
        ),
        subject="plans",
        user_count=1,
        active=True,
    )
    body = ci.build(info)
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert b'xmlns="urn:ietf:params:xml:ns:conference-info"' in body
    assert b"Alice &amp; &lt;Co&gt;" in body
    back = ci.parse(body)
    assert back.entity == CONF and back.version == 7 and back.state == "full"
    assert back.subject == "plans" and back.user_count == 1 and back.active is True
    assert [u.entity for u in back.users] == [
        "sip:alice@example.test",
        "sip:bob@example.test",
        "sip:carol@example.test",
    ]
    assert back.users[0].display_text == "Alice & <Co>"
    assert back.users[0].endpoints[0].joining_method == "focus-owner"
    assert back.users[1].status == "dialing-out"
    carol = back.users[2].endpoints[0]
    assert (carol.status, carol.disconnection_method, carol.disconnection_reason) == (
        "disconnected",
        "busy",
        "486 Busy Here",
    )


def test_parse_a_foreign_document_with_prefixes_and_unknown_elements() -> None:
    body = b"""<?xml version="1.0"?>
<ci:conference-info xmlns:ci="urn:ietf:params:xml:ns:conference-info" xmlns:x="urn:x" entity="sip:c@h" state="full" version="3">
  <x:vendor>ignored</x:vendor>
  <ci:users>
    <ci:user entity="sip:a@h" state="full"><ci:display-text>A</ci:display-text>
      <ci:endpoint entity="sip:a@10.0.0.1"><ci:status>connected</ci:status><x:more/></ci:endpoint>
    </ci:user>
    <ci:user entity="sip:b@h"/>
  </ci:users>
</ci:conference-info>"""
    info = ci.parse(body)
    assert info.version == 3 and [u.entity for u in info.users] == ["sip:a@h", "sip:b@h"]
    assert info.users[0].status == "connected" and info.users[0].display_text == "A"
    assert info.users[1].status == "disconnected"  # no endpoint at all


@pytest.mark.parametrize(
    "body",
    [
        b"not xml",
        b"<other/>",
        b'<conference-info xmlns="urn:ietf:params:xml:ns:conference-info" version="1"/>',  # no entity
        b'<conference-info xmlns="urn:ietf:params:xml:ns:conference-info" entity="sip:c@h" version="x"/>',
        b'<conference-info xmlns="urn:ietf:params:xml:ns:conference-info" entity="sip:c@h" version="1" state="odd"/>',
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><conference-info entity="sip:c@h" version="1"/>',
        b'<conference-info entity="sip:c@h" version="1"><users><user entity="sip:a@h"><endpoint><status>dancing</status>'
        b"</endpoint></user></users></conference-info>",
        b'<conference-info entity="sip:c@h" version="1"><users><user/></users></conference-info>',
        b"x" * (ci.MAX_DOCUMENT + 1),
    ],
)
def test_parse_refuses_what_is_not_a_conference_info_document(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        ci.parse(body)


def test_roster_view_full_then_partials() -> None:
    view = ci.RosterView()
    assert view.apply(doc(2, user("sip:b@h"))) == []  # a partial before any full state: ignored
    changes = view.apply(doc(1, user("sip:a@h"), user("sip:b@h", "dialing-out"), state="full"))
    assert [type(c).__name__ for c in changes] == ["Joined", "Joined"]
    assert view.version == 1 and not view.needs_full
    changes = view.apply(doc(2, user("sip:b@h", "connected")))
    assert len(changes) == 1 and isinstance(changes[0], ci.StatusChanged) and changes[0].previous == "dialing-out"
    changes = view.apply(doc(3, user("sip:c@h", name="C")))
    assert isinstance(changes[0], ci.Joined) and view.users["sip:c@h"].display_text == "C"
    # a partial update of c without its display text keeps the one we know
    view.apply(doc(4, ci.UserInfo("sip:c@h", "partial", None, (ci.EndpointInfo("sip:c@h", "on-hold"),))))
    assert view.users["sip:c@h"].display_text == "C"
    changes = view.apply(doc(5, user("sip:a@h", "disconnected", disconnection_method="departed")))
    assert isinstance(changes[0], ci.Left) and changes[0].user.endpoints[0].disconnection_method == "departed"
    changes = view.apply(doc(6, ci.UserInfo("sip:b@h", "deleted")))
    assert isinstance(changes[0], ci.Left) and set(view.users) == {"sip:c@h"}
    assert view.apply(doc(6, user("sip:z@h"))) == []  # old news
    assert view.apply(doc(5, user("sip:z@h"))) == []


def test_roster_view_gap_asks_for_full_state_and_full_state_resyncs() -> None:
    view = ci.RosterView()
    view.apply(doc(1, user("sip:a@h"), user("sip:b@h"), state="full"))
    changes = view.apply(doc(4, user("sip:c@h")))  # versions 2 and 3 were lost
    assert view.needs_full and isinstance(changes[0], ci.Joined)
    changes = view.apply(doc(5, user("sip:a@h"), user("sip:c@h"), state="full"))
    assert not view.needs_full
    assert [(type(c).__name__, c.user.entity) for c in changes] == [("Left", "sip:b@h")]
    assert set(view.users) == {"sip:a@h", "sip:c@h"} and view.version == 5


def test_cpim_round_trip_names_the_original_sender() -> None:
    body = "héllo\r\nworld".encode()
    wrapped = cpim.wrap(
        "sip:alice@example.test", CONF, body, "text/plain;charset=UTF-8", message_id="m1", display_name='Al"ice'
    )
    assert wrapped.startswith(b'From: "Alice" <sip:alice@example.test>\r\nTo: <' + CONF.encode() + b">\r\n")
    assert b"NS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: m1\r\n" in wrapped
    msg = cpim.unwrap(wrapped)
    assert msg.sender == "sip:alice@example.test" and msg.display_name == "Alice"
    assert msg.recipient == CONF and msg.message_id == "m1" and msg.datetime
    assert msg.content_type == "text/plain;charset=UTF-8" and msg.body == body


def test_cpim_foreign_prefix_and_bare_lf() -> None:
    data = (
        b"From: <sip:bob@h>\nNS: x <urn:ietf:params:imdn>\nx.Message-ID: 42\n\n"
        b"Content-Type: application/im-iscomposing+xml\n\n<isComposing/>"
    )
    msg = cpim.unwrap(data)
    assert msg.sender == "sip:bob@h" and msg.message_id == "42" and msg.display_name is None
    assert msg.content_type == "application/im-iscomposing+xml" and msg.body == b"<isComposing/>"


@pytest.mark.parametrize(
    "data",
    [
        b"no blank line",
        b"To: <sip:a@h>\r\n\r\nContent-Type: text/plain\r\n\r\nx",  # no From
        b"From: not an address\r\n\r\nContent-Type: text/plain\r\n\r\nx",
        b"From: <sip:a@h>\r\n\r\nno inner headers",
        b"From: <sip:a@h>\r\nbroken header\r\n\r\nContent-Type: text/plain\r\n\r\nx",
        b"".join(b"H%d: v\r\n" % i for i in range(100)) + b"From: <sip:a@h>\r\n\r\n\r\n\r\n",
    ],
)
def test_cpim_refuses_malformed(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        cpim.unwrap(data)
