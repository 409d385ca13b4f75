"""The forking response context (RFC 3261 §16.7), sans-IO: which responses go upstream, which branches get
CANCEL (with RFC 3326 Reason), and the best response when every branch failed (§16.7.6)."""

from __future__ import annotations

import pytest

from notebook_im.server.forking import CancelBranches, EndBranch, Relay, ResponseContext
from notebook_im.sip import reason
from notebook_im.sip.message import Response


def resp(status: int, reason_text: str | None = None, **headers: str) -> Response:
    r = Response(status, reason_text)
    for k, v in headers.items():
        r.headers.add(k.replace("_", "-"), v)
    return r


def relayed(actions) -> list[int]:
    return [a.response.status for a in actions if isinstance(a, Relay)]


def test_invite_first_2xx_wins_and_the_others_are_cancelled_as_completed_elsewhere():
    ctx = ResponseContext("INVITE", 3)
    assert ctx.provisional(0, resp(100)) == [], "100 Trying is hop by hop"
    assert relayed(ctx.provisional(0, resp(180))) == [180]
    assert relayed(ctx.provisional(2, resp(180))) == [180]
    actions = ctx.final(1, resp(200))
    assert relayed(actions) == [200]
    cancels = [a for a in actions if isinstance(a, CancelBranches)]
    assert len(cancels) == 1 and cancels[0].branches == (0, 2)
    assert str(cancels[0].reason) == 'SIP;cause=200;text="Call completed elsewhere"'
    assert ctx.provisional(0, resp(180)) == [], "nothing goes upstream after the final answer"
    assert ctx.final(0, resp(487)) == [] and not ctx.done
    assert ctx.final(2, resp(487)) == [] and ctx.done
    assert ctx.cancel() == [], "a late upstream CANCEL finds nothing pending"


def test_a_second_2xx_to_an_invite_is_ended_not_relayed():
    ctx = ResponseContext("INVITE", 2)
    ctx.final(0, resp(200))
    actions = ctx.final(1, resp(200))
    assert actions == [EndBranch(1, actions[0].response, reason.COMPLETED_ELSEWHERE)]


def test_message_goes_to_all_and_any_2xx_wins_without_cancel():
    ctx = ResponseContext("MESSAGE", 2)
    assert ctx.final(0, resp(480)) == []
    assert relayed(ctx.final(1, resp(200))) == [200]
    ctx = ResponseContext("MESSAGE", 2)
    first = ctx.final(0, resp(202))
    assert relayed(first) == [202] and not any(isinstance(a, CancelBranches) for a in first), "no CANCEL for MESSAGE"
    assert ctx.final(1, resp(200)) == [], "one answer upstream"


def test_6xx_cancels_the_rest_and_is_the_answer():
    ctx = ResponseContext("INVITE", 3)
    actions = ctx.final(0, resp(603, "Decline"))
    assert relayed(actions) == []
    assert [a.branches for a in actions if isinstance(a, CancelBranches)] == [(1, 2)]
    ctx.final(1, resp(487))
    assert relayed(ctx.final(2, resp(404))) == [603]


@pytest.mark.parametrize(
    "statuses, best",
    [
        ([486, 404], 404),  # lowest class, then the lowest code
        ([408, 486], 486),  # a real answer beats a timeout
        ([486, 302, 500], 302),  # 3xx < 4xx < 5xx
        ([404, 401, 480], 401),  # answers that say how to retry come first
        ([500, 503], 500),
        ([600, 486, 404], 600),  # 6xx if there is one
    ],
)
def test_best_response_when_every_branch_failed(statuses, best):
    ctx = ResponseContext("MESSAGE", len(statuses))
    out = []
    for i, s in enumerate(statuses):
        out += relayed(ctx.final(i, resp(s)))
    assert out == [best]


def test_503_becomes_500_and_challenges_are_collected():
    ctx = ResponseContext("MESSAGE", 2)
    ctx.final(0, resp(503))
    ctx.final(1, resp(503))
    assert ctx.final_sent.status == 500 and "503" in ctx.final_sent.reason
    ctx = ResponseContext("MESSAGE", 2)
    ctx.final(0, resp(401, WWW_Authenticate='Digest realm="a", nonce="1"'))
    ctx.final(1, resp(401, WWW_Authenticate='Digest realm="b", nonce="2"'))
    assert ctx.final_sent.headers.get_all("WWW-Authenticate") == [
        'Digest realm="a", nonce="1"',
        'Digest realm="b", nonce="2"',
    ]


def test_upstream_cancel_cancels_each_pending_branch_once():
    ctx = ResponseContext("INVITE", 2)
    ctx.final(0, resp(486))
    caller = reason.Reason("SIP", 487, "caller hung up")
    assert ctx.cancel(caller) == [CancelBranches((1,), caller)]
    assert ctx.cancel() == []
    assert relayed(ctx.final(1, resp(487))) == [486], "486 from a real device over 487 from the cancelled one"


def test_duplicate_final_on_a_branch_is_ignored_and_zero_branches_refused():
    ctx = ResponseContext("MESSAGE", 1)
    assert relayed(ctx.final(0, resp(200))) == [200]
    assert ctx.final(0, resp(200)) == []
    with pytest.raises(ValueError, match="at least one branch"):
        ResponseContext("MESSAGE", 0)


def test_reason_header_round_trip_and_lenient_parsing():
    r = reason.parse('SIP ;cause=200 ;text="Call completed; \\"elsewhere\\""')
    assert r == reason.Reason("SIP", 200, 'Call completed; "elsewhere"') and r.completed_elsewhere
    assert reason.parse(str(r)) == r
    assert [x.protocol for x in reason.parse_all(["Q.850;cause=16, SIP;cause=200", "<bad>"])] == ["Q.850", "SIP"]
    assert not reason.parse("Q.850;cause=200").completed_elsewhere
