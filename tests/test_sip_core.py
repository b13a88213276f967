"""The sans-IO SIP core: parsing, transactions, dialogs, registrar, admission.

Every RFC 3261 timer is driven by the ``now`` we pass, so nothing here sleeps.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from aiosipua import SipMessage, SipResponse

from media.sip import message as sm
from media.sip.digest import DigestServer
from media.sip.endpoint import (
    T1,
    T2,
    Admission,
    AuthFailed,
    AuthLockedOut,
    CallCancelled,
    CallConfirmed,
    CallTerminated,
    InviteReceived,
    Peer,
    Registered,
    ReinviteReceived,
    SipEndpoint,
)
from media.sip.throttle import Lockout

PHONE = Peer("UDP", "192.0.2.10", 5062)
TRUNK = Peer("UDP", "198.51.100.7", 5060)
SDP = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def request(
    method: str = "INVITE",
    *,
    branch: str = "z9hG4bKone",
    cseq: int = 1,
    call_id: str = "c1@phone",
    to_tag: str | None = None,
    uri: str = "sip:support@engine.example",
    body: str = "",
    extra: str = "",
    from_user: str = "alice",
) -> bytes:
    to = "<sip:support@engine.example>" + (f";tag={to_tag}" if to_tag else "")
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5062;branch={branch}\r\n"
        f"From: <sip:{from_user}@phone.example>;tag=ft1\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:alice@192.0.2.10:5062>\r\n"
        "Max-Forwards: 70\r\n"
        f"{extra}{ctype}Content-Length: {len(body.encode())}\r\n\r\n{body}"
    ).encode()


def endpoint(**kw: object) -> SipEndpoint:
    admission = Admission(
        trunks=["198.51.100.0/24"],
        passwords={"alice": "wonderland"}.get,
        **kw,  # type: ignore[arg-type]
    )
    return SipEndpoint("203.0.113.1", 5060, admission)


def sent(ep: SipEndpoint) -> list[SipResponse]:
    out = []
    for t in ep.transmit():
        msg = SipMessage.parse(t.data)
        out.append(msg)
    return out  # type: ignore[return-value]


def statuses(ep: SipEndpoint) -> list[int]:
    return [getattr(m, "status_code", 0) for m in sent(ep)]


def answered_call(ep: SipEndpoint, now: float = 0.0) -> str:
    ep.receive(request(body=SDP), TRUNK, now)
    [ev] = ep.events()
    assert isinstance(ev, InviteReceived) and ev.trunk
    ep.ring(ev.call_id, now)
    ep.answer(ev.call_id, SDP.encode(), now)
    assert statuses(ep) == [100, 180, 200]
    return ev.call_id


def local_tag(ep: SipEndpoint, call_id: str) -> str:
    return ep.dialogs[call_id].local_tag


# -- parsing ------------------------------------------------------------------------------


TORTURE_INVALID = {
    # RFC 4475 §3.1.2.2 clerr: Content-Length larger than the body
    "clerr": (re.sub(rb"Content-Length: \d+", b"Content-Length: 9999", request(body=SDP)), 400),
    # §3.1.2.3 ncl: negative Content-Length
    "ncl": (re.sub(rb"Content-Length: \d+", b"Content-Length: -999", request(body=SDP)), 400),
    # §3.1.2.4 scalar02: overlarge CSeq and Max-Forwards
    "scalar02": (request().replace(b"CSeq: 1 INVITE", b"CSeq: 36893488147419103232 INVITE"), 400),
    "maxfwd300": (request().replace(b"Max-Forwards: 70", b"Max-Forwards: 300"), 400),
    # §3.1.2.6 quotbal: unterminated quoted string in a display name
    "quotbal": (request().replace(b"From: <sip", b'From: "Mr J. User <sip'), 400),
    # §3.1.2.7 ltgtruri: Request-URI in <>
    "ltgtruri": (
        request().replace(
            b"INVITE sip:support@engine.example", b"INVITE <sip:support@engine.example>"
        ),
        400,
    ),  # noqa: E501
    # §3.1.2.8 lwsruri: LWS inside the Request-URI / §3.1.2.9 lwsstart: extra spaces
    "lwsruri": (
        request().replace(
            b"INVITE sip:support@engine.example", b"INVITE sip:support @engine.example"
        ),
        400,
    ),  # noqa: E501
    "lwsstart": (request().replace(b"INVITE sip:", b"INVITE  sip:"), 400),
    # §3.1.2.10 trws: trailing whitespace in the Request-Line
    "trws": (request().replace(b" SIP/2.0\r\nVia", b" SIP/2.0 \r\nVia"), 400),
    # §3.1.2.12 mismatch01: CSeq method differs from the request method
    "mismatch01": (request("OPTIONS").replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"), 400),
    # §3.1.2.16 badvers: SIP/7.0
    "badvers": (request().replace(b" SIP/2.0\r\nVia", b" SIP/7.0\r\nVia"), 505),
    # §3.1.2.1 badinv01: a Via full of empty parameters
    "badinv01": (request().replace(b";branch=z9hG4bKone", b";;,;,,"), 400),
    # §3.1.3.x insuf: no Call-ID
    "insuf": (request().replace(b"Call-ID: c1@phone\r\n", b""), 400),
    # unknown URI scheme: 416
    "unkscm": (
        request().replace(
            b"INVITE sip:support@engine.example", b"INVITE nope:support@engine.example"
        ),
        416,
    ),  # noqa: E501
    # Max-Forwards reached 0
    "maxfwd0": (request().replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), 483),
}


DROPPED = {"badinv01", "insuf", "quotbal", "scalar02"}


@pytest.mark.parametrize("name", sorted(TORTURE_INVALID))
def test_torture_messages_get_the_right_error(name: str) -> None:
    data, status = TORTURE_INVALID[name]
    with pytest.raises(sm.SipSyntaxError) as err:
        sm.parse(data)
    assert err.value.status == status
    ep = endpoint()
    ep.receive(data, TRUNK, 0.0)
    # a request whose Via, From, To, Call-ID or CSeq is itself broken cannot be answered
    # with a valid response: it is dropped (RFC 4475 allows either)
    assert statuses(ep) == ([] if name in DROPPED else [status])
    assert ep.events() == [] and ep.dialogs == {}


def test_wellformed_tortuous_invite_parses() -> None:
    """RFC 4475 §3.1.1.1 wsinv style: folding, odd spacing, compact headers."""
    data = (
        b"INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n"
        b"TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n"
        b'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\r\n'
        b"  ;\r\n  tag = 98asjd8\r\n"
        b"MaX-fOrWaRdS: 0068\r\nCall-ID: wsinv.ndaksdj@192.0.2.1\r\nContent-Length   : 0\r\n"
        b"cseq: 0009\r\n  INVITE\r\n"
        b"Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n"
        b"s :\r\nNewFangledHeader:   newfangled value\r\n continued newfangled value\r\n\r\n"
    )
    msg = sm.parse(data)
    assert msg.method == "INVITE" and sm.cseq(msg) == (9, "INVITE")  # type: ignore[union-attr]
    assert sm.tag(msg.headers.get_first("to")) == "1918181833n"


def test_garbage_is_dropped_silently() -> None:
    ep = endpoint()
    for junk in (
        b"",
        b"\r\n\r\n",
        b"\x00\x01\x02 hello",
        b"SIP/2.0 abc\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ):
        ep.receive(junk, PHONE, 0.0)
    assert ep.transmit() == [] and ep.events() == []


# -- INVITE server transaction and dialog -------------------------------------------------


def test_invite_retransmission_is_absorbed() -> None:
    ep = endpoint()
    ep.receive(request(body=SDP), TRUNK, 0.0)
    assert len(ep.events()) == 1 and statuses(ep) == [100]
    ep.receive(request(body=SDP), TRUNK, 0.5)  # the phone did not hear our 100
    assert ep.events() == [] and statuses(ep) == [100]


def test_2xx_retransmitted_until_ack_then_confirmed() -> None:
    ep = endpoint()
    call_id = answered_call(ep)
    times: list[float] = []
    while len(times) < 5:
        now = ep.next_timer() or 0.0
        ep.handle_timer(now)
        assert statuses(ep) == [200]
        times.append(now)
    # T1, then doubling, capped at T2 (RFC 3261 §13.3.1.4)
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5]
    ack = request("ACK", branch="z9hG4bKack", to_tag=local_tag(ep, call_id))
    ep.receive(ack, TRUNK, now)
    assert ep.events() == [CallConfirmed(call_id)]
    ep.handle_timer(now + 10)
    assert ep.transmit() == []  # no more 200s


def test_dialog_responses_carry_the_proxies_record_route_in_order() -> None:
    """Behind a proxy (Kamailio) the 180 and the 200 name the record-routed proxies,
    as the INVITE listed them (RFC 3261 §12.1.1): the caller's ACK and BYE then come
    back through them. Without it the proxy dropped the ACK and answered the BYE 404."""
    ep = endpoint()
    routes = "Record-Route: <sip:198.51.100.7;lr;ftag=ft1>\r\nRecord-Route: <sip:10.0.0.1;lr>\r\n"
    ep.receive(request(body=SDP, extra=routes), TRUNK, 0.0)
    [ev] = ep.events()
    ep.ring(ev.call_id, 0.0)
    ep.answer(ev.call_id, SDP.encode(), 0.0)
    trying, ringing, ok = sent(ep)
    assert trying.headers.get("record-route") == []  # no dialog yet
    want = ["<sip:198.51.100.7;lr;ftag=ft1>", "<sip:10.0.0.1;lr>"]
    assert list(ringing.headers.get("record-route")) == want
    assert list(ok.headers.get("record-route")) == want
    # our own requests inside the dialog go through the same proxies, nearest (the
    # top one) first (§12.1.1: the UAS keeps the Record-Route order)
    ep.hangup(ev.call_id, 1.0)
    [bye] = [m for m in sent(ep) if getattr(m, "method", "") == "BYE"]
    assert list(bye.headers.get("route")) == want


def test_no_ack_ends_the_call_with_bye() -> None:
    ep = endpoint()
    call_id = answered_call(ep)
    for step in range(1, 80):
        ep.handle_timer(step * 0.5)
    out = sent(ep)
    assert any(getattr(m, "method", "") == "BYE" for m in out)
    assert CallTerminated(call_id, "no_ack") in ep.events()
    assert call_id not in ep.dialogs


def test_rejection_retransmitted_until_its_ack() -> None:
    ep = endpoint()
    ep.receive(request(body=SDP), TRUNK, 0.0)
    [ev] = ep.events()
    ep.reject(ev.call_id, 486, 0.0)
    assert statuses(ep) == [100, 486]
    ep.handle_timer(T1)
    assert statuses(ep) == [486]  # Timer G
    ep.receive(request("ACK", to_tag="x"), TRUNK, T1 + 0.1)  # same branch as the INVITE
    ep.handle_timer(T1 * 3)
    ep.handle_timer(T2 * 2)
    assert ep.transmit() == []


def test_cancel_before_answer() -> None:
    ep = endpoint()
    ep.receive(request(body=SDP), TRUNK, 0.0)
    [ev] = ep.events()
    ep.ring(ev.call_id, 0.1)
    ep.transmit()
    ep.receive(request("CANCEL"), TRUNK, 0.2)
    assert statuses(ep) == [200, 487]
    assert ep.events() == [CallCancelled(ev.call_id)]
    ep.answer(ev.call_id, SDP.encode(), 0.3)  # the application was too slow: nothing happens
    assert ep.transmit() == []


def test_cancel_for_nothing_is_481() -> None:
    ep = endpoint()
    ep.receive(request("CANCEL", branch="z9hG4bKnothing"), TRUNK, 0.0)
    assert statuses(ep) == [481]


def test_bye_ends_the_dialog_and_its_retransmission_gets_the_same_200() -> None:
    ep = endpoint()
    call_id = answered_call(ep)
    tag = local_tag(ep, call_id)
    bye = request("BYE", branch="z9hG4bKbye", cseq=2, to_tag=tag)
    ep.receive(bye, TRUNK, 1.0)
    assert statuses(ep) == [200]
    assert ep.events() == [CallTerminated(call_id, "remote_bye")]
    ep.receive(bye, TRUNK, 1.5)
    assert statuses(ep) == [200] and ep.events() == []


def test_in_dialog_requests_are_checked() -> None:
    ep = endpoint()
    call_id = answered_call(ep)
    tag = local_tag(ep, call_id)
    ep.receive(request("BYE", branch="z9hG4bK1", cseq=2, to_tag="wrong"), TRUNK, 1.0)
    assert statuses(ep) == [481]
    ep.receive(request("BYE", branch="z9hG4bK2", cseq=2, call_id="other", to_tag=tag), TRUNK, 1.0)
    assert statuses(ep) == [481]
    ep.receive(request("BYE", branch="z9hG4bK3", cseq=1, to_tag=tag), TRUNK, 1.0)
    assert statuses(ep) == [500]  # CSeq did not go up
    assert call_id in ep.dialogs


def test_reinvite_for_hold_and_glare() -> None:
    ep = endpoint()
    call_id = answered_call(ep)
    tag = local_tag(ep, call_id)
    ep.receive(request("ACK", branch="z9hG4bKack", to_tag=tag), TRUNK, 0.1)
    ep.events()
    hold = SDP.replace("a=rtpmap:101", "a=sendonly\r\na=rtpmap:101")
    ep.receive(request(branch="z9hG4bKre", cseq=2, to_tag=tag, body=hold), TRUNK, 1.0)
    [ev] = ep.events()
    assert isinstance(ev, ReinviteReceived) and "sendonly" in ev.request.text
    assert statuses(ep) == [100]
    ep.receive(request(branch="z9hG4bKre2", cseq=3, to_tag=tag, body=SDP), TRUNK, 1.1)
    assert statuses(ep) == [491]  # one offer at a time
    ep.answer_reinvite(call_id, b"v=0\r\n", 1.2)
    assert statuses(ep) == [200]


def test_engine_hangup_sends_bye_that_is_retransmitted() -> None:
    ep = endpoint()
    call_id = answered_call(ep)
    ep.receive(request("ACK", branch="z9hG4bKack", to_tag=local_tag(ep, call_id)), TRUNK, 0.1)
    ep.hangup(call_id, 1.0)
    [bye] = sent(ep)
    assert bye.method == "BYE" and "ft1" in bye.headers.get_first("to")  # type: ignore[attr-defined]
    ep.handle_timer(1.0 + T1)
    assert [getattr(m, "method", "") for m in sent(ep)] == ["BYE"]
    ok = (
        "SIP/2.0 200 OK\r\n"
        + "".join(
            f"{k}: {v}\r\n"
            for k in ("Via", "From", "To", "Call-ID", "CSeq")
            for v in bye.headers.get(k)
        )  # fmt: skip
        + "Content-Length: 0\r\n\r\n"
    )
    ep.receive(ok.encode(), TRUNK, 1.6)
    ep.handle_timer(5.0)
    assert ep.transmit() == []


def test_methods_and_extensions() -> None:
    ep = endpoint()
    ep.receive(request("OPTIONS", branch="z9hG4bKo"), PHONE, 0.0)
    [ok] = sent(ep)
    assert ok.status_code == 200 and "INVITE" in (ok.headers.get_first("allow") or "")
    ep.receive(request("SUBSCRIBE", branch="z9hG4bKs"), PHONE, 0.0)
    ep.receive(request("FROBNICATE", branch="z9hG4bKf"), PHONE, 0.0)
    ep.receive(request("OPTIONS", branch="z9hG4bKr", extra="Require: foo\r\n"), PHONE, 0.0)
    assert statuses(ep) == [405, 501, 420]
    ep.receive(request(branch="z9hG4bKt", body="hello", extra=""), TRUNK, 0.0)
    ep.receive(
        request(branch="z9hG4bKt2", call_id="c2", body="x").replace(
            b"application/sdp", b"text/plain"
        ),
        TRUNK,
        0.0,
    )
    assert 415 in statuses(ep)


# -- admission -----------------------------------------------------------------------------


def test_options_answers_503_while_the_node_takes_no_new_calls() -> None:
    """Regression for draining (engine/drain.py): OPTIONS, the health check Kamailio's
    dispatcher pings its destinations with, was answered 200 whatever the node's state,
    so a draining node stayed in rotation and every INVITE sent to it got 503. Now it is
    503 with Retry-After from the drain on, while a call in progress goes on: its BYE
    is still answered 200."""
    retry: list[int | None] = [None]
    ep = endpoint(unavailable=lambda: retry[0])
    call_id = answered_call(ep)
    ep.receive(request("OPTIONS", branch="z9hG4bKo1", call_id="ping1"), PHONE, 1.0)
    [ok] = sent(ep)
    assert ok.status_code == 200
    retry[0] = 5  # the node drains
    ep.receive(request("OPTIONS", branch="z9hG4bKo2", call_id="ping2"), PHONE, 2.0)
    [busy] = sent(ep)
    assert busy.status_code == 503 and busy.headers.get_first("retry-after") == "5"
    assert busy.headers.get_first("to") and ";tag=" in (busy.headers.get_first("to") or "")
    bye = request("BYE", branch="z9hG4bKbye", cseq=2, to_tag=local_tag(ep, call_id))
    ep.receive(bye, TRUNK, 3.0)
    assert statuses(ep) == [200]
    assert ep.events() == [CallTerminated(call_id, "remote_bye")]


def digest(challenge: str, user: str, password: str, method: str, uri: str, nc: int = 1) -> str:
    """An Authorization answering ``challenge``, as the ``nc``-th use of its nonce."""
    params = dict(p.strip().split("=", 1) for p in challenge[len("Digest ") :].split(","))
    realm, nonce = params["realm"].strip('"'), params["nonce"].strip('"')

    def md5(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()

    ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"{method}:{uri}")
    response = md5(f"{ha1}:{nonce}:{nc:08x}:abc:auth:{ha2}")
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", qop=auth, nc={nc:08x}, cnonce="abc", algorithm=MD5'
    )


def challenge_for(ep: SipEndpoint, data: bytes) -> str:
    ep.receive(data, PHONE, 0.0)
    [r] = sent(ep)
    assert r.status_code == 401
    return r.headers.get_first("www-authenticate") or ""


def test_phones_need_digest_and_wrong_or_unknown_users_look_the_same() -> None:
    ep = endpoint()
    ch = challenge_for(ep, request(body=SDP))
    assert ep.events() == []
    uri = "sip:support@engine.example"
    answers = {}
    for n, (user, pw) in enumerate([("alice", "nope"), ("mallory", "nope")]):
        auth = digest(ch, user, pw, "INVITE", uri)
        ep.receive(
            request(branch=f"z9hG4bKw{n}", call_id=f"w{n}", body=SDP,
                    extra=f"Authorization: {auth}\r\n", from_user=user),
            PHONE, 0.1,
        )  # fmt: skip
        [r] = sent(ep)
        answers[user] = (r.status_code, r.reason_phrase, sorted(k for k, _ in r.headers.items()))
    assert answers["alice"] == answers["mallory"] and answers["alice"][0] == 403
    failed = ep.events()
    assert failed == [
        AuthFailed("wrong", "alice", PHONE.host),
        AuthFailed("wrong", "mallory", PHONE.host),
    ]
    auth = digest(ch, "alice", "wonderland", "INVITE", uri)
    ep.receive(
        request(branch="z9hG4bKgood", call_id="g", body=SDP, extra=f"Authorization: {auth}\r\n"),
        PHONE, 0.2,
    )  # fmt: skip
    [ev] = ep.events()
    assert isinstance(ev, InviteReceived) and ev.user == "alice" and not ev.trunk


def test_stale_nonce_is_challenged_again() -> None:
    server = DigestServer("ccengine", nonce_ttl=10)
    ch = server.challenge(0.0)
    auth = digest(ch, "alice", "wonderland", "INVITE", "sip:x@y")
    assert server.verify("INVITE", auth, {"alice": "wonderland"}.get, 5).verdict.value == "ok"
    assert server.verify("INVITE", auth, {"alice": "wonderland"}.get, 50).verdict.value == "stale"
    forged = auth.replace(ch.split('nonce="')[1].split('"')[0], "99999.deadbeef")
    assert server.verify("INVITE", forged, {"alice": "wonderland"}.get, 5).verdict.value == "wrong"


def test_a_right_answer_to_another_engines_nonce_is_stale_not_wrong() -> None:
    """Behind the edge a phone moves to another engine when its own drains or dies, and
    its next REGISTER answers the old engine's nonce. That was WRONG (a plain 401, which
    a phone takes as a wrong password, and a failure counted towards a lockout); a right
    answer is now STALE (401 stale=true: the phone answers the new nonce at once). A
    wrong one stays WRONG, and a replay of it gets only a fresh challenge."""
    password = {"alice": "wonderland"}.get
    first, second = DigestServer("ccengine"), DigestServer("ccengine")
    ch = first.challenge(0.0)
    auth = digest(ch, "alice", "wonderland", "REGISTER", "sip:ccengine")
    moved = second.verify("REGISTER", auth, password, 1.0)
    assert (moved.verdict.value, moved.username) == ("stale", "alice")
    guess = digest(ch, "alice", "guess", "REGISTER", "sip:ccengine")
    assert second.verify("REGISTER", guess, password, 1.0).verdict.value == "wrong"
    again = digest(second.challenge(1.0), "alice", "wonderland", "REGISTER", "sip:ccengine")
    assert second.verify("REGISTER", again, password, 1.5).verdict.value == "ok"
    assert second.verify("REGISTER", auth, password, 2.0).verdict.value == "stale"


def invite_with(auth: str, n: int, call_id: str | None = None) -> bytes:
    return request(
        branch=f"z9hG4bKa{n}", call_id=call_id or f"a{n}", body=SDP,
        extra=f"Authorization: {auth}\r\n",
    )  # fmt: skip


def test_a_captured_answer_does_not_replay() -> None:
    """A captured Authorization sent again later used to be let in (200): the nonce
    count was not tracked. Now the same answer, or a count that does not go up, is
    challenged afresh (401, stale=true) and reported; a UA that reuses its nonce with
    a higher count is fine."""
    ep = endpoint()
    uri = "sip:support@engine.example"
    ch = challenge_for(ep, request(body=SDP))
    auth = digest(ch, "alice", "wonderland", "INVITE", uri)
    ep.receive(invite_with(auth, 1), PHONE, 1.0)
    [ev] = ep.events()
    assert isinstance(ev, InviteReceived) and ev.user == "alice"
    sent(ep)
    eavesdropper = Peer("UDP", "192.0.2.99", 5060)  # not a trunk: it must authenticate
    for n, (peer, nc) in enumerate([(eavesdropper, 1), (PHONE, 1)], start=2):
        answer = auth if nc == 1 else digest(ch, "alice", "wonderland", "INVITE", uri, nc=nc)
        ep.receive(invite_with(answer, n), peer, 2.0)
        [r] = sent(ep)
        assert r.status_code == 401 and "stale=true" in (
            r.headers.get_first("www-authenticate") or ""
        )
        assert ep.events() == [AuthFailed("replay", "alice", peer.host)]
    ep.receive(invite_with(digest(ch, "alice", "wonderland", "INVITE", uri, nc=2), 4), PHONE, 3.0)
    assert [type(e) for e in ep.events()] == [InviteReceived]
    # the count went to 2: 2 again, or back to 1, is a replay
    ep.receive(invite_with(digest(ch, "alice", "wonderland", "INVITE", uri, nc=2), 5), PHONE, 3.0)
    assert [e.reason for e in ep.events() if isinstance(e, AuthFailed)] == ["replay"]


def test_an_answer_without_qop_is_good_once() -> None:
    server = DigestServer("ccengine")
    ch = server.challenge(0.0)
    nonce = ch.split('nonce="')[1].split('"')[0]
    ha1 = hashlib.md5(b"alice:ccengine:wonderland").hexdigest()
    ha2 = hashlib.md5(b"INVITE:sip:x@y").hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    auth = (
        f'Digest username="alice", realm="ccengine", nonce="{nonce}", uri="sip:x@y", '
        f'response="{response}"'
    )
    verdicts = [server.verify("INVITE", auth, {"alice": "wonderland"}.get, 1).verdict for _ in "ab"]
    assert [v.value for v in verdicts] == ["ok", "replay"]


def test_nonce_table_is_bounded_and_an_evicted_nonce_is_stale_not_new() -> None:
    server = DigestServer("ccengine", max_tracked=3)
    password = {"alice": "wonderland"}.get
    challenges = [server.challenge(float(t)) for t in range(5)]
    for t, ch in enumerate(challenges):
        auth = digest(ch, "alice", "wonderland", "INVITE", "sip:x@y")
        assert server.verify("INVITE", auth, password, t + 0.5).verdict.value == "ok"
    assert len(server._used) == 3
    # the first two nonces were forgotten: their replay must not pass as new
    first = digest(challenges[0], "alice", "wonderland", "INVITE", "sip:x@y")
    assert server.verify("INVITE", first, password, 6).verdict.value == "stale"


def test_password_guessing_is_throttled_and_alerted() -> None:
    """2,363 guesses a second went through unthrottled. Now: five wrong answers for a
    user lock that user out (from addresses it has not signed in from), ten from an
    address lock the address out; a locked-out guess gets 503 with Retry-After before
    its password is checked, so even the right one learns nothing. Each lockout is an
    event (the brute-force alarm), and doubles the next. The user's own phone, which
    signed in before, keeps working."""
    checks: list[str] = []

    def passwords(user: str) -> str | None:
        checks.append(user)
        return {"alice": "wonderland"}.get(user)

    ep = SipEndpoint("203.0.113.1", 5060, Admission(passwords=passwords))
    uri = "sip:support@engine.example"
    ch = challenge_for(ep, request(body=SDP))
    ep.receive(invite_with(digest(ch, "alice", "wonderland", "INVITE", uri), 0), PHONE, 0.5)
    assert [type(e) for e in ep.events()] == [InviteReceived]  # alice's phone signs in
    sent(ep)
    checks.clear()
    attacker = Peer("UDP", "192.0.2.66", 5060)
    answers = []
    for n in range(1, 2001):  # as fast as the old attack: all within a second
        guess = digest(ch, "alice", f"guess{n}", "INVITE", uri)
        ep.receive(invite_with(guess, n), attacker, 1.0 + n / 2400)
        [r] = sent(ep)
        answers.append((r.status_code, r.headers.get_first("retry-after")))
    assert len(checks) == 5  # five passwords tried, 1,995 refused unchecked
    assert answers[:5] == [(403, None)] * 5 and set(answers[5:]) == {(503, "30")}
    events = ep.events()
    [alarm] = [e for e in events if isinstance(e, AuthLockedOut)]
    assert alarm.lockout == Lockout("user", "alice", 5, 30.0) and alarm.host == attacker.host
    assert sum(isinstance(e, AuthFailed) and e.reason == "throttled" for e in events) == 1995
    # the right password from the attacker's address is refused the same way
    ep.receive(
        invite_with(digest(ch, "alice", "wonderland", "INVITE", uri, nc=2), 9000), attacker, 3.0
    )
    assert statuses(ep) == [503] and len(checks) == 5
    assert ep.events() == [AuthFailed("throttled", "alice", attacker.host)]
    # alice's own phone is not locked out by someone failing in her name
    ep.receive(
        invite_with(digest(ch, "alice", "wonderland", "INVITE", uri, nc=3), 9001), PHONE, 3.0
    )
    assert [type(e) for e in ep.events()] == [InviteReceived]
    sent(ep)
    # an address trying many names is locked out at ten
    scanner = Peer("UDP", "192.0.2.77", 5060)
    codes = []
    for n in range(15):
        guess = digest(ch, f"user{n}", "123456", "INVITE", uri)
        ep.receive(invite_with(guess, 10_000 + n), scanner, 4.0)
        codes += statuses(ep)
    assert codes == [403] * 10 + [503] * 5
    assert any(isinstance(e, AuthLockedOut) and e.lockout.kind == "address" for e in ep.events())
    # after the lockout, guessing resumes; the next lockout lasts twice as long
    for n in range(5):
        guess = digest(ch, "alice", f"again{n}", "INVITE", uri)
        ep.receive(invite_with(guess, 20_000 + n), attacker, 40.0 + n)
    assert statuses(ep) == [403] * 5
    lockouts = [e.lockout for e in ep.events() if isinstance(e, AuthLockedOut)]
    # alice's second lockout doubles; the address has failed ten times in the minute
    assert lockouts == [
        Lockout("address", attacker.host, 10, 30.0),
        Lockout("user", "alice", 5, 60.0),
    ]


def test_throttle_tables_are_bounded() -> None:
    from media.sip.throttle import MAX_KEYS, AuthThrottle

    throttle = AuthThrottle()
    for n in range(MAX_KEYS + 500):
        throttle.failed(f"user{n}", f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 1.0)
        throttle.succeeded(f"user{n}", "192.0.2.1", 1.0)
    assert len(throttle._addresses.records) == len(throttle._users.records) == MAX_KEYS
    assert len(throttle._good) == MAX_KEYS


def test_guessing_behind_the_edge_locks_out_that_phone_not_the_edge() -> None:
    """Behind the SIP edge every REGISTER comes from the edge's address: ten wrong
    answers from one phone locked that address out, and with it every phone behind the
    edge. Failures now count against the address the edge says the phone sent from (its
    X-Ccengine-Source header), and never against an address the phone wrote itself in
    its Vias."""
    ep = SipEndpoint("203.0.113.1", 5060, Admission(trunks=["198.51.100.7"], passwords={
        "alice": "wonderland", "bob": "builder"}.get))  # fmt: skip

    def through_edge(user: str, phone: str, n: int, auth: str = "") -> bytes:
        return (
            f"REGISTER sip:engine.example SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKedge{user}{n}\r\n"
            f"Via: SIP/2.0/UDP {phone}:5062;received=6.6.6.{n};branch=z9hG4bK{user}{n}\r\n"
            f"X-Ccengine-Source: {phone}\r\n"
            f"From: <sip:{user}@engine.example>;tag=t{n}\r\nTo: <sip:{user}@engine.example>\r\n"
            f"Call-ID: reg-{user}@{phone}\r\nCSeq: {n} REGISTER\r\n"
            f"Contact: <sip:{user}@{phone}:5062>\r\nExpires: 600\r\nMax-Forwards: 69\r\n"
            + (f"Authorization: {auth}\r\n" if auth else "")
            + "Content-Length: 0\r\n\r\n"
        ).encode()

    ep.receive(through_edge("bob", "192.0.2.50", 1), TRUNK, 0.0)
    [r] = sent(ep)
    ch = r.headers.get_first("www-authenticate") or ""
    for n in range(2, 14):  # a phone with the wrong password, retrying
        wrong = digest(ch, "bob", f"wrong{n}", "REGISTER", "sip:engine.example", nc=n)
        ep.receive(through_edge("bob", "192.0.2.50", n, wrong), TRUNK, 0.1 * n)
    assert statuses(ep)[-1] == 503  # that phone (and the user bob) are refused a while
    locked = [e for e in ep.events() if isinstance(e, AuthLockedOut)]
    assert locked and all(e.host == "192.0.2.50" for e in locked)
    # another phone behind the same edge still signs in
    ep.receive(through_edge("alice", "192.0.2.51", 1), TRUNK, 2.0)
    [r] = sent(ep)
    ch = r.headers.get_first("www-authenticate") or ""
    right = digest(ch, "alice", "wonderland", "REGISTER", "sip:engine.example")
    ep.receive(through_edge("alice", "192.0.2.51", 2, right), TRUNK, 2.1)
    assert statuses(ep) == [200]


def test_registrar() -> None:
    ep = endpoint()
    reg = request(
        "REGISTER", branch="z9hG4bKr1", uri="sip:engine.example", extra="Expires: 600\r\n"
    )
    reg = reg.replace(b"To: <sip:support@engine.example>", b"To: <sip:alice@engine.example>")
    ch = challenge_for(ep, reg)
    auth = digest(ch, "alice", "wonderland", "REGISTER", "sip:engine.example")
    ok = reg.replace(b"z9hG4bKr1", b"z9hG4bKr2").replace(b"CSeq: 1", b"CSeq: 2")
    ok = ok.replace(b"Max-Forwards", f"Authorization: {auth}\r\nMax-Forwards".encode())
    ep.receive(ok, PHONE, 1.0)
    [r] = sent(ep)
    assert r.status_code == 200 and "expires=600" in (r.headers.get_first("contact") or "")
    assert ep.events() == [Registered("alice", "sip:alice@192.0.2.10:5062", 600)]
    assert [b.peer for b in ep.lookup("alice", 2.0)] == [PHONE]
    # someone else's address of record (the same nonce again, its count going up)
    auth2 = digest(ch, "alice", "wonderland", "REGISTER", "sip:engine.example", nc=2)
    other = ok.replace(b"To: <sip:alice@", b"To: <sip:bob@").replace(b"z9hG4bKr2", b"z9hG4bKr3")
    ep.receive(other.replace(auth.encode(), auth2.encode()), PHONE, 1.0)
    assert statuses(ep) == [403]
    # too short
    auth3 = digest(ch, "alice", "wonderland", "REGISTER", "sip:engine.example", nc=3)
    short = ok.replace(b"Expires: 600", b"Expires: 5").replace(b"z9hG4bKr2", b"z9hG4bKr4")
    short = short.replace(auth.encode(), auth3.encode())
    ep.receive(short, PHONE, 1.0)
    [r] = sent(ep)
    assert r.status_code == 423 and r.headers.get_first("min-expires") == "60"
    # expiry
    ep.handle_timer(700.0)
    assert ep.lookup("alice", 700.0) == []
    assert ep.events() == [Registered("alice", "sip:alice@192.0.2.10:5062", 0)]


# -- fuzzing ---------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

VALID = request(body=SDP)


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup_line", "cut"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(
                st.sampled_from(
                    [b"\r\n", b";", b":", b" ", b"<", b'"', b"\x00", b"\r\n\r\n", b"=" * 40]
                )
            )
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 30))]
        elif op == "dup_line":
            lines = bytes(data).split(b"\r\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            data = bytearray(b"\r\n".join(lines))
        elif op == "cut":
            data = data[:pos]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mangled(), st.binary(max_size=2000)))
def test_fuzzed_messages_never_break_the_endpoint(data: bytes) -> None:
    ep = endpoint()
    ep.receive(data, TRUNK, 0.0)
    for t in ep.transmit():
        reply = sm.parse(t.data)  # whatever we send is itself valid SIP
        assert isinstance(reply, SipResponse)
    ep.events()
    ep.handle_timer(40.0)
    ep.transmit()
    # and the next caller is served normally
    ep.receive(request(branch="z9hG4bKnext", call_id="next@phone", body=SDP), TRUNK, 41.0)
    assert [type(e) for e in ep.events()] == [InviteReceived]


def test_registrar_limits_bindings_per_user() -> None:
    ep = endpoint()
    base = request("REGISTER", branch="z9hG4bKq0", uri="sip:engine.example")
    base = base.replace(b"To: <sip:support@engine.example>", b"To: <sip:alice@engine.example>")
    ch = challenge_for(ep, base)
    got = []
    for n in range(11):
        auth = digest(ch, "alice", "wonderland", "REGISTER", "sip:engine.example", nc=n + 1)
        msg = base.replace(b"z9hG4bKq0", f"z9hG4bKq{n + 1}".encode())
        msg = msg.replace(b"CSeq: 1", f"CSeq: {n + 2}".encode())
        msg = msg.replace(b"alice@192.0.2.10:5062", f"alice@192.0.2.{n + 20}:5062".encode())
        msg = msg.replace(b"Max-Forwards", f"Authorization: {auth}\r\nMax-Forwards".encode())
        ep.receive(msg, PHONE, 1.0)
        got += statuses(ep)
    assert got == [200] * 10 + [403]
    assert len(ep.lookup("alice", 2.0)) == 10


# -- calls we place (UAC) ------------------------------------------------------------------

from media.sip.endpoint import OutboundAnswered, OutboundFailed, OutboundRinging  # noqa: E402
from media.sip.transaction import TIMER_64T1  # noqa: E402
from media.sip.uac import TIMER_C  # noqa: E402


def last_request(ep: SipEndpoint) -> list[sm.SipRequest]:
    return [m for m in sent(ep) if isinstance(m, sm.SipRequest)]  # type: ignore[misc]


def reply(ep: SipEndpoint, req: sm.SipRequest, status: int, now: float, **kw: object) -> None:
    resp = sm.response(req, status, to_tag="callee1", **kw)  # type: ignore[arg-type]
    if 200 <= status < 300 and not resp.headers.get("contact"):
        resp.headers.set_single("Contact", "<sip:callee@198.51.100.7:5060>")
    ep.receive(bytes(resp), TRUNK, now)


def test_outbound_call_with_trunk_digest() -> None:
    ep = endpoint()
    trunk = DigestServer("carrier")
    call_id = ep.invite("sip:15551230001@198.51.100.7", TRUNK, SDP.encode(), 0.0,
                        caller="ccengine", auth=("acct", "trunk-pass"))  # fmt: skip
    [first] = last_request(ep)
    assert first.method == "INVITE" and first.body == SDP.encode()
    reply(ep, first, 401, 0.1, headers=[("WWW-Authenticate", trunk.challenge(0.1))])
    ack, second = last_request(ep)
    assert ack.method == "ACK" and sm.branch(ack) == sm.branch(first)  # same transaction
    assert second.method == "INVITE" and sm.cseq(second) == (2, "INVITE")
    verdict = trunk.verify(
        "INVITE", second.headers.get_first("authorization"), {"acct": "trunk-pass"}.get, 0.2
    )
    assert verdict.verdict.value == "ok"
    reply(ep, second, 180, 0.3)
    assert ep.events() == [OutboundRinging(call_id)]
    reply(ep, second, 200, 1.0, body=SDP.encode())
    [ack2] = last_request(ep)
    assert ack2.method == "ACK" and ack2.uri == "sip:callee@198.51.100.7:5060"
    assert sm.branch(ack2) != sm.branch(second)  # the ACK of a 2xx is its own transaction
    assert ep.events() == [OutboundAnswered(call_id, SDP.encode())]
    reply(ep, second, 200, 1.5, body=SDP.encode())  # our ACK was lost: ACK again
    assert [r.method for r in last_request(ep)] == ["ACK"] and ep.events() == []
    # the callee hangs up
    bye = (
        f"BYE sip:ccengine@203.0.113.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKcalleebye\r\n"
        f"From: {second.headers.get_first('to')};tag=callee1\r\n"
        f"To: {second.headers.get_first('from')}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    ep.receive(bye.encode(), TRUNK, 5.0)
    assert statuses(ep) == [200]
    assert ep.events() == [CallTerminated(call_id, "remote_bye")]


def test_outbound_call_nobody_answers_then_cancelled_ringing() -> None:
    ep = endpoint()
    silent = ep.invite("sip:1@198.51.100.7", TRUNK, SDP.encode(), 0.0)
    sent(ep)
    resent = 0
    for step in range(1, 70):
        ep.handle_timer(step * 0.5)
        resent += len(ep.transmit())
    assert resent == 6  # Timer A: at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; Timer B at 32 s
    assert ep.events() == [OutboundFailed(silent, 408, "Request Timeout")]

    ringing = ep.invite("sip:2@198.51.100.7", TRUNK, SDP.encode(), 40.0)
    [inv] = last_request(ep)
    reply(ep, inv, 180, 40.1)
    ep.events()
    ep.hangup(ringing, 45.0)
    [cancel] = last_request(ep)
    assert cancel.method == "CANCEL" and sm.branch(cancel) == sm.branch(inv)
    reply(ep, inv, 487, 45.1)
    [ack] = last_request(ep)
    assert ack.method == "ACK"
    assert ep.events() == [OutboundFailed(ringing, 487, "Request Terminated")]


def test_outbound_call_ended_by_us() -> None:
    ep = endpoint()
    call_id = ep.invite("sip:3@198.51.100.7", TRUNK, SDP.encode(), 0.0)
    [inv] = last_request(ep)
    reply(ep, inv, 200, 0.5, body=SDP.encode())
    last_request(ep)
    ep.events()
    ep.handle_timer(100.0)  # a long call: the INVITE's bookkeeping is long gone
    ep.hangup(call_id, 100.0)
    [bye] = last_request(ep)
    assert bye.method == "BYE" and bye.uri == "sip:callee@198.51.100.7:5060"
    assert sm.tag(bye.headers.get_first("to")) == "callee1"
    assert sm.cseq(bye) == (2, "BYE")


def test_the_ack_of_a_2xx_follows_the_proxies_record_route() -> None:
    """Through record-routing proxies (the edge relaying an engine's INVITE to a desk
    phone) the ACK of the 200 carries the route set in reverse, as the BYE does. It
    carried none: Kamailio dropped it, and the phone resent its 200 until it gave up."""
    ep = endpoint()
    call_id = ep.invite("sip:desk7@192.0.2.7:5060", TRUNK, SDP.encode(), 0.0)
    [inv] = last_request(ep)
    proxies = ["<sip:198.51.100.2;lr>", "<sip:198.51.100.1;lr>"]  # nearest the phone first
    reply(ep, inv, 200, 0.5, body=SDP.encode(),
          headers=[("Record-Route", r) for r in proxies])  # fmt: skip
    [ack] = last_request(ep)
    assert ack.method == "ACK" and ack.headers.get("route") == proxies[::-1]
    ep.events()
    ep.hangup(call_id, 10.0)
    [bye] = last_request(ep)
    assert bye.headers.get("route") == ack.headers.get("route")
    # a failure's ACK is hop by hop, in the INVITE's transaction: no route set (§17.1.1.3)
    ep.invite("sip:desk7@192.0.2.7:5060", TRUNK, SDP.encode(), 20.0)
    [inv] = last_request(ep)
    reply(ep, inv, 486, 20.5, headers=[("Record-Route", r) for r in proxies])
    [busy_ack] = last_request(ep)
    assert busy_ack.method == "ACK" and busy_ack.headers.get("route") == []


def test_we_register_to_a_carrier_and_refresh() -> None:
    from media.sip.endpoint import RegistrationChanged

    ep = endpoint()
    carrier = DigestServer("carrier")
    ep.register_to("sip:carrier.example", "acct", TRUNK, 0.0, auth=("acct", "pw"), expires=300)
    [first] = last_request(ep)
    assert first.method == "REGISTER" and first.headers.get_first("expires") == "300"
    assert sm.address_uri(first.headers.get_first("to") or "") == "sip:acct@carrier.example"
    reply(ep, first, 401, 0.1, headers=[("WWW-Authenticate", carrier.challenge(0.1))])
    [second] = last_request(ep)
    auth = second.headers.get_first("authorization")
    assert carrier.verify("REGISTER", auth, {"acct": "pw"}.get, 0.2).verdict.value == "ok"
    ours = "<sip:acct@203.0.113.1:5060>;expires=120"
    reply(ep, second, 200, 0.2, headers=[("Contact", ours)])
    assert ep.events() == [RegistrationChanged("sip:carrier.example", "registered", 200, 120)]
    assert ep.next_timer() == pytest.approx(0.2 + 96)  # 80 % of what was granted
    ep.handle_timer(96.2)
    [refresh] = last_request(ep)
    assert refresh.method == "REGISTER" and sm.cseq(refresh)[0] == 3
    reply(ep, refresh, 403, 96.3)
    assert ep.events() == [RegistrationChanged("sip:carrier.example", "failed", 403)]
    assert ep.next_timer() == pytest.approx(156.3)  # and tries again in a minute


# -- regressions: nothing is left behind ----------------------------------------------------


def ack_for(data: bytes) -> bytes:
    """The ACK a caller sends for a failure: the INVITE's branch, our To tag (§17.1.1.3)."""
    resp = SipMessage.parse(data)
    head = "".join(
        f"{k}: {resp.headers.get_first(k)}\r\n" for k in ("Via", "From", "To", "Call-ID")
    )
    cseq = resp.headers.get_first("CSeq").split()[0]  # type: ignore[union-attr]
    uri = "sip:support@engine.example"
    return f"ACK {uri} SIP/2.0\r\n{head}CSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n".encode()


def test_bye_on_an_early_dialog_ends_the_invite_with_487() -> None:
    """A caller hangs up with a BYE after our 180 (an early dialog, §15): its INVITE was
    left in Proceeding, which has no timer, so each such call kept a transaction for
    ever and, 20 000 later, every request got 503. Now the INVITE gets 487 (§15.1.2)
    and both transactions end; the BYE still gets its 200 and the hang-up is told."""
    ep = endpoint()
    for n in range(50):
        branch, call = f"z9hG4bKearly{n}", f"early{n}@phone"
        ep.receive(request(body=SDP, branch=branch, call_id=call), TRUNK, float(n))
        [ev] = ep.events()
        ep.ring(ev.call_id, float(n))
        tag = local_tag(ep, call)
        ep.transmit()
        bye = request("BYE", branch=f"z9hG4bKbye{n}", cseq=2, call_id=call, to_tag=tag)
        ep.receive(bye, TRUNK, n + 0.5)
        out = [t.data for t in ep.transmit()]
        assert [d.split(b"\r\n", 1)[0] for d in out] == [
            b"SIP/2.0 200 OK",
            b"SIP/2.0 487 Request Terminated",
        ]
        assert sm.tag(SipMessage.parse(out[1]).headers.get_first("to")) == tag
        assert ep.events() == [CallTerminated(call, "remote_bye")]
        ep.receive(ack_for(out[1]), TRUNK, n + 0.6)  # absorbed by the INVITE's transaction
        assert ep.transmit() == []
    ep.handle_timer(200.0)
    assert ep._txns.server == {} and ep.dialogs == {} and ep.next_timer() is None


def test_bye_while_a_reinvite_is_pending_ends_the_reinvite_with_487() -> None:
    """The caller hangs up while the application still decides on its re-INVITE: the
    re-INVITE's transaction was stranded in Proceeding; now it gets 487 and ends."""
    ep = endpoint()
    call_id = answered_call(ep)
    tag = local_tag(ep, call_id)
    ep.receive(request("ACK", branch="z9hG4bKack", to_tag=tag), TRUNK, 0.1)
    ep.receive(request(branch="z9hG4bKre", cseq=2, to_tag=tag, body=SDP), TRUNK, 1.0)
    assert statuses(ep) == [100]
    ep.receive(request("BYE", branch="z9hG4bKbye", cseq=3, to_tag=tag), TRUNK, 2.0)
    out = [t.data for t in ep.transmit()]
    assert [d.split(b"\r\n", 1)[0] for d in out] == [
        b"SIP/2.0 200 OK",
        b"SIP/2.0 487 Request Terminated",
    ]
    assert b"CSeq: 2 INVITE" in out[1]
    ep.answer_reinvite(call_id, SDP.encode(), 2.5)  # the application, too late: nothing
    assert ep.transmit() == []
    ep.receive(ack_for(out[1]), TRUNK, 2.1)
    ep.handle_timer(100.0)
    assert ep._txns.server == {} and ep.next_timer() is None


def test_reject_after_answer_ends_the_call_with_a_bye_once_acknowledged() -> None:
    """``reject()`` after ``answer()`` removed the dialog and sent nothing: the caller
    stayed in a call nobody served. A 2xx cannot be taken back; the call ends with a BYE
    (§15), which the callee may send only once its 2xx is acknowledged."""
    ep = endpoint()
    call_id = answered_call(ep)
    ep.reject(call_id, 486, 0.2)
    assert ep.transmit() == [] and call_id in ep.dialogs  # no 486 after a 200, no BYE yet
    ep.receive(request("ACK", branch="z9hG4bKack", to_tag=local_tag(ep, call_id)), TRUNK, 0.3)
    [bye] = last_request(ep)
    assert bye.method == "BYE" and sm.tag(bye.headers.get_first("to")) == "ft1"
    assert ep.events() == [] and call_id not in ep.dialogs  # the application is done with it

    ep2 = endpoint()
    call_id = answered_call(ep2)
    ep2.receive(request("ACK", branch="z9hG4bKack", to_tag=local_tag(ep2, call_id)), TRUNK, 0.1)
    ep2.events()
    ep2.reject(call_id, 486, 1.0)  # confirmed already: the BYE goes at once
    assert [r.method for r in last_request(ep2)] == ["BYE"] and call_id not in ep2.dialogs


def test_provisionals_are_sent_at_the_time_given() -> None:
    """Our 100 and 180 went through their transaction at time 0.0 whatever the clock
    said; a timer armed on a provisional would have fired at once."""
    ep = endpoint()
    times: list[tuple[int, float]] = []
    respond = ep._txns.respond

    def spy(txn, resp, now):  # type: ignore[no-untyped-def]
        times.append((resp.status_code, now))
        return respond(txn, resp, now)

    ep._txns.respond = spy  # type: ignore[method-assign]
    ep.receive(request(body=SDP), TRUNK, 7.0)
    [ev] = ep.events()
    ep.ring(ev.call_id, 8.0)
    assert times == [(100, 7.0), (180, 8.0)]


def test_a_cancel_never_answered_with_487_is_given_up_after_64_t1() -> None:
    """A trunk answers our CANCEL with 200 but never sends the INVITE's 487: the call's
    record stayed for ever. After 64*T1 the INVITE is taken as ended (§9.1): 487 to the
    application, and the record goes."""
    ep = endpoint()
    call_id = ep.invite("sip:2@198.51.100.7", TRUNK, SDP.encode(), 0.0)
    [inv] = last_request(ep)
    reply(ep, inv, 180, 0.1)
    ep.events()
    ep.hangup(call_id, 5.0)
    [cancel] = last_request(ep)
    reply(ep, cancel, 200, 5.1)
    ep.handle_timer(5.0 + TIMER_64T1 - 0.1)
    assert ep.events() == [] and len(ep._uac.outbound) == 1
    ep.handle_timer(5.0 + TIMER_64T1)
    assert ep.events() == [OutboundFailed(call_id, 487, "Request Terminated")]
    assert len(ep._uac.outbound) == 0 and ep.next_timer() is None


def test_a_call_that_rings_for_ever_is_cancelled_after_timer_c() -> None:
    """A callee that rings and never answers kept its record for as long as it rang
    (for ever, if the application forgot it). After Timer C we CANCEL it and tell the
    application 408; a crossing 200 still gets ACK (the engine BYEs it), and then the
    record goes."""
    ep = endpoint()
    call_id = ep.invite("sip:2@198.51.100.7", TRUNK, SDP.encode(), 0.0)
    [inv] = last_request(ep)
    reply(ep, inv, 180, 1.0)
    assert ep.events() == [OutboundRinging(call_id)]
    reply(ep, inv, 180, 100.0)  # each provisional restarts Timer C
    ep.handle_timer(1.0 + TIMER_C)
    assert last_request(ep) == [] and ep.events() == []
    ep.handle_timer(100.0 + TIMER_C)
    [cancel] = last_request(ep)
    assert cancel.method == "CANCEL" and sm.branch(cancel) == sm.branch(inv)
    assert ep.events() == [OutboundFailed(call_id, 408, "Request Timeout")]
    reply(ep, inv, 487, 100.5 + TIMER_C)  # the callee's answer to it: ACKed, not told
    assert [r.method for r in last_request(ep)] == ["ACK"] and ep.events() == []
    ep.handle_timer(100.0 + TIMER_C + TIMER_64T1)
    assert len(ep._uac.outbound) == 0 and ep.next_timer() is None
