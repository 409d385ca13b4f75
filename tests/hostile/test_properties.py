"""Property-based tests (hypothesis): parse/serialize round trips of generated requests and responses, and the
RFC 3261 §17 transaction state machines driven by random event sequences."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notebook_im.sip import LocalProtocolError, Request, Response, parse_message
from notebook_im.sip.headers import Headers, normalize_name
from notebook_im.sip.message import make_response
from notebook_im.sip.transaction import (
    T1,
    T2,
    T4,
    ClientTransaction,
    Deliver,
    ServerTransaction,
    StartTimer,
    State,
    StopTimer,
    Terminated,
    Timeout,
    Transmit,
)
from notebook_im.sip.uri import Address, SipUri, Via

EXAMPLES = int(os.environ.get("NIM_PROPERTY_EXAMPLES", "300"))  # raise it for a longer local run
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
LOWER_TOKEN = "abcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
lower_tokens = st.text(LOWER_TOKEN, min_size=1, max_size=10)
# printable text: no control characters, no surrogates (what TEXT-UTF8char allows)
text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40)
label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
hosts = st.one_of(
    st.lists(label, min_size=1, max_size=4).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.lists(st.integers(0, 0xFFFF).map("{:x}".format), min_size=8, max_size=8).map(lambda g: "[" + ":".join(g) + "]"),
)
params = st.dictionaries(lower_tokens.filter(lambda k: k not in ("tag",)), st.one_of(st.none(), tokens), max_size=4)
users = st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20))
uris = st.builds(
    lambda h, u, p, s, pr: (
        SipUri(host=h, user=u, port=p, scheme=s).with_params(**pr) if pr else SipUri(host=h, user=u, port=p, scheme=s)
    ),
    hosts,
    users,
    st.one_of(st.none(), st.integers(1, 65535)),
    st.sampled_from(["sip", "sips"]),
    params,
)
addresses = st.builds(
    lambda u, d, tag: Address(u, d).with_tag(tag) if tag else Address(u, d),
    uris,
    st.one_of(st.none(), text.filter(lambda s: s.strip() == s and s)),
    st.one_of(st.none(), tokens),
)
RESERVED = {"via", "from", "to", "call-id", "cseq", "max-forwards", "content-length"}
extra_headers = st.lists(
    st.tuples(tokens.filter(lambda n: normalize_name(n) not in RESERVED), text.map(lambda s: s.strip(" \t"))),
    max_size=8,
)
methods = st.one_of(st.sampled_from(["INVITE", "MESSAGE", "OPTIONS", "BYE", "CANCEL", "REGISTER", "INFO"]), tokens)


def _headers(method: str, frm: Address, to: Address, via_host: str, cseq: int, extra) -> Headers:
    h = Headers()
    h.add("Via", str(Via("UDP", via_host, 5060).with_params(branch="z9hG4bKprop", rport=None)))
    h.add("Max-Forwards", "70")
    h.add("From", str(frm))
    h.add("To", str(to))
    h.add("Call-ID", "prop@example.test")
    h.add("CSeq", f"{cseq} {method}")
    for name, value in extra:
        h.add(name, value)
    return h


def _same(a, b) -> None:
    assert list(a.headers) == list(b.headers)
    assert a.body == b.body
    assert bytes(a) == bytes(b)


@SETTINGS
@given(methods, uris, addresses, addresses, hosts, st.integers(0, 2**31 - 1), extra_headers, st.binary(max_size=600))
@pytest.mark.slow
def test_request_round_trip(method, uri, frm, to, via_host, cseq, extra, body):
    req = Request(method, uri, _headers(method, frm, to, via_host, cseq, extra), body)
    wire = bytes(req)
    for stream in (False, True):
        parsed = parse_message(wire, stream=stream)
        assert isinstance(parsed, Request) and parsed.method == method
        assert parsed.uri == uri and dict(parsed.uri.params) == dict(uri.params)
        assert parsed.from_ == frm and parsed.from_.display_name == frm.display_name and parsed.from_.tag == frm.tag
        assert parsed.to == to and dict(parsed.to.params) == dict(to.params)
        assert parsed.cseq.number == cseq and parsed.cseq.method == method
        assert parsed.top_via.host == via_host and parsed.top_via.branch == "z9hG4bKprop"
        req.headers.set("Content-Length", str(len(body)))  # the serializer adds it; compare like with like
        _same(parsed, req)
        req.headers.remove("Content-Length")


@SETTINGS
@given(
    st.integers(100, 699), text.map(lambda s: s.strip()), addresses, addresses, extra_headers, st.binary(max_size=300)
)
@pytest.mark.slow
def test_response_round_trip(status, reason, frm, to, extra, body):
    resp = Response(status, reason, _headers("MESSAGE", frm, to, "h.example.test", 1, extra), body)
    parsed = parse_message(bytes(resp))
    assert isinstance(parsed, Response) and (parsed.status, parsed.reason) == (status, reason)
    assert bytes(parsed) == bytes(resp)


@SETTINGS
@given(uris)
def test_uri_round_trip(uri):
    again = SipUri.parse(str(uri))
    assert again == uri and dict(again.params) == dict(uri.params) and str(again) == str(uri)


@SETTINGS
@given(addresses)
def test_address_round_trip(address):
    again = Address.parse(str(address))
    assert (again.uri, again.display_name, dict(again.params)) == (
        address.uri,
        address.display_name,
        dict(address.params),
    )


# -- transaction state machines ----------------------------------------------------------------------------------
def _request(method: str) -> Request:
    h = Headers()
    h.add("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKtxn")
    h.add("From", "<sip:a@h>;tag=1")
    h.add("To", "<sip:b@h>")
    h.add("Call-ID", "txn")
    h.add("CSeq", f"1 {method}")
    return Request(method, "sip:b@h", h)


EXPECTED_DELAY = {"B": 64 * T1, "F": 64 * T1, "H": 64 * T1, "L": 64 * T1, "M": 64 * T1}
RETRANSMIT = {"A", "E", "G"}


class Driver:
    """Carries out a transaction's actions the way ua.py does, and checks the invariants after each input."""

    def __init__(self, txn, reliable: bool) -> None:
        self.txn = txn
        self.reliable = reliable
        self.armed: dict[str, float] = {}
        self.terminated_actions = 0
        self.final_deliveries = 0
        self.request_deliveries = 0
        self.last_interval: dict[str, float] = {}

    def apply(self, actions: list) -> None:
        was_terminated = self.terminated_actions > 0
        if was_terminated:
            assert actions == [], f"terminated is absorbing, got {actions}"
            assert self.txn.state is State.TERMINATED
            return
        for a in actions:
            if isinstance(a, StartTimer):
                assert a.delay >= 0
                if a.name in RETRANSMIT:
                    assert not self.reliable, f"timer {a.name} on a reliable transport"
                    previous = self.last_interval.get(a.name)
                    if previous is None:
                        assert a.delay == T1
                    elif a.name == "A":
                        assert a.delay == previous * 2
                    else:
                        assert a.delay in (min(previous * 2, T2), T2)
                    self.last_interval[a.name] = a.delay
                elif a.name in EXPECTED_DELAY:
                    assert a.delay == EXPECTED_DELAY[a.name]
                elif a.name in ("D", "J"):
                    assert a.delay == (0.0 if self.reliable else (32.0 if a.name == "D" else 64 * T1))
                elif a.name in ("K", "I"):
                    assert a.delay == (0.0 if self.reliable else T4)
                else:
                    raise AssertionError(f"unknown timer {a.name}")
                self.armed[a.name] = a.delay
            elif isinstance(a, StopTimer):
                self.armed.pop(a.name, None)
            elif isinstance(a, Deliver):
                if isinstance(a.message, Request):
                    self.request_deliveries += 1
                    assert self.request_deliveries == 1, "a retransmitted request reached the TU twice"
                elif a.message.status >= 200 and not (self.txn.invite and a.message.status < 300):
                    self.final_deliveries += 1  # (2xx to INVITE are re-delivered on purpose: RFC 6026 re-ACK)
                    assert self.final_deliveries == 1, "a retransmitted final response reached the TU twice"
            elif isinstance(a, Terminated):
                self.terminated_actions += 1
                assert a is actions[-1]
            elif isinstance(a, Timeout):
                assert any(isinstance(b, Terminated) for b in actions), "a timeout terminates the transaction"
            else:
                assert isinstance(a, Transmit)
        assert self.terminated_actions <= 1
        assert (self.terminated_actions == 1) == (self.txn.state is State.TERMINATED)
        if self.txn.state is State.TERMINATED:
            self.armed.clear()


client_events = st.lists(
    st.one_of(
        st.tuples(st.just("response"), st.sampled_from([100, 180, 183, 200, 202, 302, 404, 486, 500, 603])),
        st.tuples(st.just("timer"), st.integers(0, 20)),  # fires the n-th armed timer, if any
        st.tuples(st.just("transport_error"), st.none()),
    ),
    max_size=30,
)


@settings(max_examples=EXAMPLES * 4 // 3, deadline=None, database=None)
@given(st.sampled_from(["INVITE", "MESSAGE"]), st.booleans(), client_events)
def test_client_transaction_random_events(method, reliable, events):
    request = _request(method)
    txn = ClientTransaction(request, reliable=reliable)
    d = Driver(txn, reliable)
    d.apply(txn.start())
    for kind, arg in events:
        if kind == "response":
            d.apply(txn.receive(make_response(request, arg, to_tag="t")))
        elif kind == "timer":
            if d.armed:
                name = sorted(d.armed)[arg % len(d.armed)]
                del d.armed[name]  # one-shot: the driver forgets it as it fires
                d.apply(txn.timer(name))
        else:
            d.apply(txn.transport_error())


server_events = st.lists(
    st.one_of(
        st.tuples(st.just("retransmission"), st.none()),
        st.tuples(st.just("ack"), st.none()),
        st.tuples(st.just("respond"), st.sampled_from([100, 180, 200, 404, 486, 500])),
        st.tuples(st.just("timer"), st.integers(0, 20)),
        st.tuples(st.just("transport_error"), st.none()),
    ),
    max_size=30,
)


@settings(max_examples=EXAMPLES * 4 // 3, deadline=None, database=None)
@given(st.sampled_from(["INVITE", "MESSAGE"]), st.booleans(), server_events)
def test_server_transaction_random_events(method, reliable, events):
    request = _request(method)
    txn = ServerTransaction(request, reliable=reliable)
    d = Driver(txn, reliable)
    d.apply(txn.start())
    answered_with = None
    for kind, arg in events:
        if kind == "retransmission":
            actions = txn.receive(request)
            d.apply(actions)
            for a in actions:  # a retransmitted request is only ever answered with the last response again
                assert isinstance(a, Transmit) and a.message is txn.last_response
        elif kind == "ack":
            ack = _request("ACK") if method == "INVITE" else request
            d.apply(txn.receive(ack))
        elif kind == "respond":
            try:
                d.apply(txn.respond(make_response(request, arg, to_tag="t")))
            except LocalProtocolError:  # the TU answered twice: its bug, reported as such
                assert answered_with is not None and (answered_with >= 300 or not txn.invite) or txn.terminated
                continue
            if arg >= 200 and answered_with is None:
                answered_with = arg
        elif kind == "timer":
            if d.armed:
                name = sorted(d.armed)[arg % len(d.armed)]
                del d.armed[name]
                d.apply(txn.timer(name))
        else:
            d.apply(txn.transport_error())
