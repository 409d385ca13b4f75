"""The INVITE-dialog machine of an IM session (im/session.py): every transition, both sides, no sockets."""

from __future__ import annotations

import pytest

from notebook_im.im.session import (
    ANSWERED_ELSEWHERE,
    PAGER_FALLBACK,
    RING_TIMEOUT,
    Connected,
    Ended,
    InviteSession,
    NotAllowed,
    PagerMode,
    PeerLost,
    Phase,
    Progress,
    SendBye,
    SendCancel,
    SendFinal,
    SendInvite,
    SendOk,
    SendRinging,
    StartTimer,
    StopTimer,
)

BOB = "sip:bob@example.test"


def outgoing() -> InviteSession:
    m = InviteSession(BOB)
    assert m.start_outgoing() == [Progress("connecting"), SendInvite()]
    return m


def incoming() -> InviteSession:
    m = InviteSession(BOB)
    assert m.start_incoming() == [Progress("connecting"), SendRinging(), StartTimer("ring", RING_TIMEOUT)]
    return m


def connected(side: str = "out") -> InviteSession:
    m = outgoing() if side == "out" else incoming()
    if side == "out":
        m.invite_answered(200, "OK")
    else:
        m.accept(), m.acked()
    assert m.phase is Phase.CONNECTED
    return m


# -- the caller --------------------------------------------------------------------------------------------
def test_invite_answered_2xx_connects():
    m = outgoing()
    assert m.phase is Phase.INVITING
    assert m.invite_answered(200, "OK") == [Progress("connected"), Connected()]
    assert m.connected and m.invite_answered(200, "OK") == [], "a retransmitted 2xx changes nothing"


@pytest.mark.parametrize("status", [404, 480, 486, 488, 603])
def test_invite_refused_ends_by_remote(status):
    m = outgoing()
    assert m.invite_answered(status, "Nope") == [Ended(f"{status} Nope", status, by_remote=True)]
    assert m.ended and m.invite_answered(200, "OK") == []


def test_invite_unanswered_ends_408():
    m = outgoing()
    assert m.invite_unanswered("timer B") == [Ended("no answer: timer B", 408)]
    conf = InviteSession("sip:conf-1@h", no_answer="no answer from the conference focus")
    conf.start_outgoing()
    assert conf.invite_unanswered("x")[0].reason == "no answer from the conference focus: x"


def test_terminate_while_inviting_cancels_then_487_ends_it():
    m = outgoing()
    assert m.terminate() == [Progress("disconnecting"), SendCancel()]
    assert m.phase is Phase.CANCELLING and m.terminate() == []
    assert m.invite_answered(487, "Request Terminated") == [Ended("487 Request Terminated", 487, by_remote=True)]


def test_a_2xx_that_crossed_the_cancel_is_ended_with_a_bye():
    m = outgoing()
    m.terminate()
    assert m.invite_answered(200, "OK") == [SendBye()] and m.phase is Phase.CLOSING
    assert m.bye_done() == [Ended("local party ended the session", None)]


def test_cancelling_and_no_answer():
    m = outgoing()
    m.terminate()
    assert m.invite_unanswered("gone") == [Ended("no answer: gone", 408)]


# -- the callee --------------------------------------------------------------------------------------------
def test_accept_then_ack_connects():
    m = incoming()
    assert m.accept() == [StopTimer("ring"), SendOk()] and m.phase is Phase.ANSWERING
    assert m.accept() == [], "accepting twice is harmless"
    assert m.acked() == [Progress("connected"), Connected()]
    assert m.acked() == [] and m.accept() == []


def test_no_ack_in_time_ends_with_a_bye():
    m = incoming()
    m.accept()
    assert m.ack_timed_out() == [Progress("disconnecting"), SendBye()]
    assert m.ack_timed_out() == []
    assert m.bye_done() == [Ended("no ACK for our 200 OK", 408)]


def test_reject_and_its_preconditions():
    m = incoming()
    assert m.reject(486, "Busy") == [StopTimer("ring"), SendFinal(486, "Busy"), Ended("rejected with 486", 486)]
    with pytest.raises(NotAllowed, match="cannot reject"):
        m.reject(603)
    with pytest.raises(NotAllowed, match="cannot accept"):
        m.accept()
    with pytest.raises(NotAllowed):
        outgoing().reject(486)
    with pytest.raises(NotAllowed):
        incoming().start_outgoing()
    with pytest.raises(NotAllowed):
        outgoing().start_incoming()


def test_ring_timeout_answers_480():
    m = incoming()
    assert m.ring_timeout_fired() == [SendFinal(480), Ended("not answered", 480)]
    assert m.ring_timeout_fired() == [], "a stray timer after the end does nothing"
    m = incoming()
    m.accept()
    assert m.ring_timeout_fired() == []


@pytest.mark.parametrize("elsewhere, reason", [(False, "cancelled by the caller"), (True, ANSWERED_ELSEWHERE)])
def test_cancel_while_ringing(elsewhere, reason):
    m = incoming()
    assert m.cancelled(elsewhere=elsewhere) == [
        StopTimer("ring"),
        SendFinal(487),
        Ended(reason, 487, by_remote=True, answered_elsewhere=elsewhere),
    ]
    assert m.cancelled(elsewhere=False) == []
    answered = incoming()
    answered.accept()
    assert answered.cancelled(elsewhere=False) == [], "too late: the 200 went first"


def test_terminate_while_ringing_declines_603():
    m = incoming()
    assert m.terminate() == [StopTimer("ring"), SendFinal(603, "Decline"), Ended("rejected with 603", 603)]


# -- connected, either side ------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["out", "in"])
def test_terminate_sends_bye_and_ends_when_answered(side):
    m = connected(side)
    assert m.terminate(reason="moved to conference sip:conf-1@h") == [Progress("disconnecting"), SendBye()]
    assert m.terminate() == [] and m.phase is Phase.CLOSING
    assert m.bye_done() == [Ended("moved to conference sip:conf-1@h", None)]
    assert m.bye_done() == []


def test_terminate_before_anything_ends_at_once():
    m = InviteSession(BOB)
    assert m.terminate() == [Ended("local party ended the session", None)]


@pytest.mark.parametrize(
    "kwargs, ended",
    [
        ({}, Ended("remote party ended the session", 200, by_remote=True)),
        ({"elsewhere": True}, Ended(ANSWERED_ELSEWHERE, 200, by_remote=True, answered_elsewhere=True)),
        ({"moved_to": "sip:conf-9@h"}, Ended("moved to conference sip:conf-9@h", 200, by_remote=True)),
    ],
)
def test_bye_received(kwargs, ended):
    m = connected()
    assert m.bye_received(**kwargs) == [ended]
    assert m.bye_received() == []


def test_a_request_overtaking_the_ack_connects():
    m = incoming()
    m.accept()
    assert m.acked() == [Progress("connected"), Connected()]


def test_one_lost_request_is_bad_luck_two_in_a_row_mean_the_peer_is_gone():
    m = connected()
    assert m.unanswered_request("MESSAGE", 408, "timer F") == []
    assert m.answered("MESSAGE", 200, "OK") == [] and m.unanswered == 0, "an answer resets the count"
    assert m.unanswered_request("MESSAGE", 408, "timer F") == []
    why = f"{BOB} stopped answering (MESSAGE: 503 transport failed)"
    assert m.unanswered_request("MESSAGE", 503, "transport failed") == [PeerLost(why), Ended(why, 503)]
    assert m.unanswered_request("MESSAGE", 503, "x") == []


def test_a_408_answer_means_gone_and_a_481_that_the_dialog_is():
    m = connected()
    why = f"{BOB} stopped answering (MESSAGE: 408 Request Timeout)"
    assert m.answered("MESSAGE", 408, "Request Timeout") == [PeerLost(why), Ended(why, 408)]
    m = connected()
    assert m.answered("MESSAGE", 481, "Call/Transaction Does Not Exist") == [
        Ended("dialog gone (481 Call/Transaction Does Not Exist)", 481)
    ]
    m = connected()
    assert m.answered("MESSAGE", 415, "Unsupported Media Type") == [] and m.connected
    closing = connected()
    closing.terminate()
    assert closing.answered("MESSAGE", 408, "x") == [] and closing.unanswered_request("M", 408, "x") == []


# -- pager mode: a callee that does not take IM sessions ------------------------------------------------------
@pytest.mark.parametrize("status", sorted(PAGER_FALLBACK))
def test_a_refused_offer_goes_on_in_pager_mode_when_allowed(status):
    m = InviteSession(BOB, pager_fallback=True)
    m.start_outgoing()
    assert m.invite_answered(status, "Not Acceptable Here") == [
        PagerMode(status, "Not Acceptable Here"),
        Progress("connected"),
        Connected(),
    ]
    assert m.pager and not m.connected and not m.ended
    assert m.invite_answered(200, "OK") == [], "a late 2xx changes nothing"


@pytest.mark.parametrize("status", [403, 404, 480, 486, 603])
def test_a_refused_person_is_not_a_refused_offer(status):
    """Busy, unknown, offline or declined means "not you / not now": pager mode would talk past a refusal."""
    m = InviteSession(BOB, pager_fallback=True)
    m.start_outgoing()
    assert m.invite_answered(status, "No") == [Ended(f"{status} No", status, by_remote=True)]


def test_without_fallback_488_ends_the_session():
    m = outgoing()
    assert m.invite_answered(488, "Not Acceptable Here")[0] == Ended("488 Not Acceptable Here", 488, by_remote=True)


def test_a_488_after_terminate_ends_even_with_fallback():
    m = InviteSession(BOB, pager_fallback=True)
    m.start_outgoing()
    m.terminate()
    assert m.invite_answered(488, "Not Acceptable Here") == [Ended("488 Not Acceptable Here", 488, by_remote=True)]


def test_pager_mode_from_the_start_and_its_end():
    m = InviteSession(BOB)
    assert m.start_pager() == [
        Progress("connecting"),
        PagerMode(None, "pager mode asked for"),
        Progress("connected"),
        Connected(),
    ]
    with pytest.raises(NotAllowed):
        m.start_outgoing()
    # a lost or refused MESSAGE fails alone: the conversation goes on
    assert m.unanswered_request("MESSAGE", 408, "timeout") == [] and m.unanswered_request("MESSAGE", 408, "x") == []
    assert m.answered("MESSAGE", 408, "Request Timeout") == [] and m.answered("MESSAGE", 481, "gone") == []
    assert m.pager
    assert m.terminate(reason="done") == [Progress("disconnecting"), Ended("done", None)]
    assert m.ended and m.terminate() == []
