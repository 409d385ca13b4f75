"""The registration machine (im/registration.py), every transition, without sockets, loop or clock."""

from __future__ import annotations

import pytest

from notebook_im.im.registration import (
    RECONNECT_DELAY,
    Notify,
    Registration,
    RegState,
    Report,
    Send,
    SendKeepalive,
    StartTimer,
    StopTimer,
    refresh_delay,
)


def make(**kw) -> Registration:
    return Registration(expires=600, jitter=lambda: 1.0, **kw)  # jitter 1.0: the full back-off, deterministic


def registered(**kw) -> Registration:
    m = make(**kw)
    m.start()
    m.answered(200, granted=600)
    return m


def test_first_register_succeeds_and_arms_the_refresh():
    m = make()
    assert m.start() == [Send(600)] and m.state is RegState.REGISTERING
    assert m.start() == [], "a second start while registering does nothing"
    actions = m.answered(200, granted=300, detail="200 OK")
    assert actions == [Notify(Report.REGISTERED, 200, "200 OK"), StartTimer("refresh", 240)]
    assert m.state is RegState.REGISTERED and m.granted == 300


@pytest.mark.parametrize("granted, delay", [(3600, 3540), (240, 180), (239, 119.5), (60, 30), (2, 1)])
def test_refresh_well_before_expiry(granted, delay):
    assert refresh_delay(granted) == delay


def test_without_a_granted_expiry_the_asked_one_counts():
    m = make()
    m.start()
    assert m.answered(200, granted=None)[-1] == StartTimer("refresh", 540)


def test_first_register_fails_or_gets_no_answer():
    m = make()
    m.start()
    assert m.answered(403, detail="403 Forbidden") == [Notify(Report.FIRST_FAILED, 403, "403 Forbidden")]
    assert m.state is RegState.IDLE
    m.start()
    assert m.no_answer("timed out") == [Notify(Report.FIRST_FAILED, 0, "timed out")]
    assert m.state is RegState.IDLE


def test_refresh_timer_sends_and_a_good_answer_refreshes():
    m = registered()
    assert m.timer("refresh") == [Send(600)] and m.state is RegState.REFRESHING
    assert m.answered(200, granted=600) == [Notify(Report.REFRESHED, 200, ""), StartTimer("refresh", 540)]


def test_failed_refreshes_back_off_doubling_to_the_cap_then_recover():
    m = registered(retry_base=1.0, retry_max=8.0)
    delays = []
    for status in (503, 0, 503, 503, 503):
        m.timer("refresh" if not delays else "retry")
        actions = m.answered(status) if status else m.no_answer("timeout")
        note, timer = actions
        assert isinstance(note, Notify) and note.report is Report.FAILED and timer.name == "retry"
        assert m.state is RegState.RETRYING
        delays.append(timer.delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert m.timer("retry") == [Send(600)]
    assert m.answered(200, granted=600)[0] == Notify(Report.RECOVERED, 200, "")
    assert m.failures == 0


def test_jitter_spreads_the_back_off_between_80_and_100_percent():
    for jitter, expected in ((0.0, 0.8), (0.5, 0.9), (1.0, 1.0)):
        m = Registration(jitter=lambda j=jitter: j)
        m.start(), m.answered(200), m.timer("refresh")
        assert m.answered(503)[1] == StartTimer("retry", expected)


def test_connection_lost_registers_again_at_once():
    m = registered()
    assert m.connection_lost() == [StopTimer("refresh"), StartTimer("retry", RECONNECT_DELAY)]
    assert m.state is RegState.RETRYING
    assert m.timer("retry") == [Send(600)]
    assert make().connection_lost() == [], "nothing to do when not registered"


def test_keepalive_on_streams_only_while_registered():
    m = make(keepalive=90.0)
    m.start()
    assert StartTimer("keepalive", 90.0) in m.answered(200, granted=600)
    assert m.timer("keepalive") == [SendKeepalive(), StartTimer("keepalive", 90.0)]
    m.stop()
    assert m.timer("keepalive") == []
    udp = registered()
    assert udp.timer("keepalive") == []


def test_unregister_from_each_state():
    m = registered()
    stops = [StopTimer("refresh"), StopTimer("retry"), StopTimer("keepalive")]
    assert m.stop() == stops + [Send(0)] and m.state is RegState.UNREGISTERING
    assert m.answered(200) == [Notify(Report.UNREGISTERED, 200, "")] and m.state is RegState.IDLE
    m = registered()
    m.stop()
    assert m.no_answer("gone") == [Notify(Report.UNREGISTERED, 0, "gone")] and m.state is RegState.IDLE
    assert make().stop() == stops, "never registered: nothing to send"
    m = registered()
    m.timer("refresh"), m.answered(503)
    assert m.stop()[-1] == Send(0), "retrying: still registered somewhere, so un-register"


def test_late_answers_and_stray_timers_are_ignored():
    m = registered()
    assert m.answered(200) == [] and m.no_answer("x") == []
    assert m.timer("bogus") == [] and make().timer("refresh") == []
    m.stop(), m.answered(200)
    assert m.timer("retry") == [] and m.answered(200) == []
