"""The roster subscription machine (im/roster.py): subscribe, refresh, NOTIFYs merged into changes, gaps asking
for the full state, termination; no sockets."""

from __future__ import annotations

from notebook_im.im import conference_info as ci
from notebook_im.im.roster import (
    Changes,
    Ended,
    Refresh,
    RosterSubscription,
    StartTimer,
    StopTimer,
    Subscribe,
    SubState,
    refresh_delay,
)

CONF = "sip:conf-1@h"


def user(entity: str, status: str = "connected", state: str = "full") -> ci.UserInfo:
    return ci.UserInfo(entity, state, None, (ci.EndpointInfo(entity=entity, status=status),))


def doc(version: int, *users: ci.UserInfo, state: str = "full", subject: str | None = None) -> ci.ConferenceInfo:
    return ci.ConferenceInfo(CONF, version, state, tuple(users), subject, len(users), True)


def active() -> RosterSubscription:
    m = RosterSubscription(600)
    assert m.start() == [Subscribe(600)] and m.state is SubState.SUBSCRIBING
    assert m.start() == []
    assert m.answered(200, "OK", granted=600) == [StartTimer("refresh", 300.0)]
    return m


def test_subscribe_refresh_cycle():
    m = active()
    assert m.state is SubState.ACTIVE
    assert m.timer() == [Refresh(600)]
    assert m.answered(200, "OK", granted=1) == [StartTimer("refresh", 1.0)], (
        "never refresh more often than every second"
    )
    assert m.answered(200, "OK", granted=0) == []
    assert refresh_delay(3600) == 1800


def test_refused_or_unanswered_subscription_ends():
    m = RosterSubscription()
    m.start()
    assert m.answered(403, "Forbidden") == [StopTimer("refresh"), Ended("403 Forbidden")]
    assert m.state is SubState.ENDED and m.timer() == [] and m.answered(200) == []
    m = RosterSubscription()
    m.start()
    assert m.unanswered("timer F") == [StopTimer("refresh"), Ended("no answer: timer F")]


def test_an_unanswered_refresh_keeps_the_subscription_a_refused_one_ends_it():
    m = active()
    m.timer()
    assert m.unanswered("timer F") == [] and m.state is SubState.ACTIVE
    assert m.answered(481, "Gone") == [StopTimer("refresh"), Ended("481 Gone")]


def test_notifications_become_changes_and_a_gap_asks_for_the_full_state():
    m = active()
    [changes] = m.notified(doc(1, user("sip:a@h"), user("sip:b@h"), subject="plans"))
    assert isinstance(changes, Changes) and changes.subject == "plans"
    assert [type(c).__name__ for c in changes.changes] == ["Joined", "Joined"]
    [changes] = m.notified(doc(2, user("sip:b@h", "disconnected", "partial"), state="partial"))
    assert [type(c).__name__ for c in changes.changes] == ["Left"]
    assert m.notified(doc(2, user("sip:c@h", state="partial"), state="partial")) == [], "old news is ignored"
    actions = m.notified(doc(5, user("sip:c@h", state="partial"), state="partial"))
    assert isinstance(actions[0], Changes) and actions[1] == Refresh(600), "a missing version: refresh"
    assert m.notified(doc(6, user("sip:a@h"), user("sip:c@h"))) == [], "the full state again: nothing new"


def test_a_notify_before_the_200_counts_and_termination_ends():
    m = RosterSubscription()
    m.start()
    [changes] = m.notified(doc(1, user("sip:a@h")))
    assert len(changes.changes) == 1 and m.state is SubState.SUBSCRIBING
    m.answered(200, "OK", granted=600)
    assert m.notified(None, terminated=True) == [StopTimer("refresh"), Ended("terminated by the focus")]
    assert m.notified(doc(2, user("sip:z@h"))) == []


def test_stop():
    m = active()
    assert m.stop() == [StopTimer("refresh")] and m.stop() == []
