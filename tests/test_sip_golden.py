"""Golden SIP messages from real peers, fed to our endpoint in-process.

``tests/fixtures/sip/sipp/`` (SIPp 3.6.1) and ``tests/fixtures/sip/baresip/`` (baresip
1.0.0, Debian 1.0.0-4) hold what those peers sent to our endpoint on 127.0.0.1, captured
once by ``tests/fixtures/sip/capture.py`` (see its docstring and the README there). No
peer runs here: each message is read from its file and given to a ``SipEndpoint`` with a
fake clock, and our answers are checked against RFC 3261 for that message.

The peers' dialog tags and our Call-IDs and branches were made up at capture time; a test
that continues a dialog swaps the captured values for the ones this endpoint just made,
and touches nothing else. The digest answers verify as captured: the capture's
``DigestServer`` had a fixed secret, and its nonces carry the second they were issued.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from media.sip import message as sm
from media.sip.digest import DigestServer
from media.sip.endpoint import (
    ALLOW,
    Admission,
    CallCancelled,
    CallConfirmed,
    CallTerminated,
    InviteReceived,
    OutboundAnswered,
    OutboundRinging,
    Peer,
    Registered,
    SipEndpoint,
)
from media.sip.message import SipRequest, SipResponse
from media.sip.transaction import TIMER_64T1

FIXTURES = Path(__file__).parent / "fixtures" / "sip"
SECRET = b"ccengine golden fixtures, not a real secret"  # as in capture.py
SIPP = Peer("UDP", "127.0.0.1", 5060)
BARESIP = Peer("UDP", "127.0.0.1", 15082)
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\n"
)


def golden(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def endpoint(*, trunk: bool = False, password: str = "wonderland") -> SipEndpoint:
    admission = Admission(
        realm="ccengine",
        trunks=["127.0.0.1/32"] if trunk else [],
        passwords={"alice": password}.get,
    )
    return SipEndpoint("127.0.0.1", 5070, admission, digest=DigestServer("ccengine", secret=SECRET))


def issued(data: bytes) -> float:
    """When the nonce a captured Authorization answers was issued: the time to replay it."""
    m = re.search(rb'nonce="(\d+)\.', data)
    assert m is not None
    return float(m.group(1)) + 0.5


def answers(ep: SipEndpoint) -> list[SipResponse]:
    out = [sm.parse(t.data) for t in ep.transmit()]
    assert all(isinstance(m, SipResponse) for m in out), out
    return out  # type: ignore[return-value]


def requests(ep: SipEndpoint) -> list[SipRequest]:
    out = [sm.parse(t.data) for t in ep.transmit()]
    assert all(isinstance(m, SipRequest) for m in out), out
    return out  # type: ignore[return-value]


def h(msg: SipRequest | SipResponse, name: str) -> str:
    return msg.headers.get_first(name) or ""


def allowed(resp: SipResponse) -> set[str]:
    """The methods an Allow header lists (the parser may split it at its commas)."""
    return {m.strip() for v in resp.headers.get("allow") for m in v.split(",")}


def assert_echoes(data: bytes, resp: SipResponse, *, tagged: bool = True) -> str | None:
    """§8.2.6.2: Via, From, Call-ID and CSeq copied; To copied, with our tag added unless
    the peer's To already had one (or this is a 100). Returns our To tag."""
    req = sm.parse(data)
    assert isinstance(req, SipRequest)
    assert resp.headers.get("via") == req.headers.get("via")
    for name in ("from", "call-id", "cseq"):
        assert h(resp, name) == h(req, name), name
    to_tag = sm.tag(h(req, "to"))
    ours = sm.tag(h(resp, "to"))
    if to_tag is not None:
        assert h(resp, "to") == h(req, "to")
    elif tagged:
        assert ours and h(resp, "to").startswith(h(req, "to")), h(resp, "to")
    else:
        assert h(resp, "to") == h(req, "to")
    return ours


def swap(data: bytes, values: dict[str, str]) -> bytes:
    """The captured message with its made-up values replaced (old -> new)."""
    for old, new in values.items():
        assert old.encode() in data, old
        data = data.replace(old.encode(), new.encode())
    return data


def retag(data: bytes, ours: str) -> bytes:
    """A captured in-dialog request, addressed to the To tag this endpoint made."""
    req = sm.parse(data)
    captured = sm.tag(h(req, "to"))
    assert captured is not None
    return swap(data, {captured: ours})


ALL = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.glob("*/*.sip"))


@pytest.mark.parametrize("name", ALL)
def test_every_captured_message_parses(name: str) -> None:
    """Each captured message passes our strict parser as what its name says it is."""
    msg = sm.parse(golden(name))
    what = name.split("/")[1].split("-", 1)[1].removesuffix(".sip")
    if isinstance(msg, SipResponse):
        status, method = what.split("-")
        assert (msg.status_code, sm.cseq(msg)[1]) == (int(status), method)
    else:
        assert msg.method == what.split("-")[0] == sm.cseq(msg)[1]
        assert ("authorization" in msg.headers) == what.endswith("-auth")
    assert msg.call_id and sm.branch(msg).startswith("z9hG4bK")


def test_fixture_set_is_complete() -> None:
    """What issue 14 asks for is there: from each peer an INVITE with SDP, its ACK and
    BYE, a CANCEL, REGISTER without and with credentials; OPTIONS from baresip; SIPp's
    180/200 to our INVITE."""
    names = {n.split("-", 1)[0].split("/")[0] + "/" + n.split("-", 1)[1] for n in ALL}
    for peer in ("sipp", "baresip"):
        for what in ("INVITE", "ACK", "CANCEL", "REGISTER", "REGISTER-auth"):
            assert f"{peer}/{what}.sip" in names, (peer, what)
    assert {"sipp/BYE.sip", "baresip/BYE-auth.sip", "baresip/OPTIONS.sip"} <= names
    assert {"sipp/180-INVITE.sip", "sipp/200-INVITE.sip", "sipp/200-BYE.sip"} <= names
    for name in ("sipp/01-INVITE.sip", "baresip/05-INVITE-auth.sip"):
        assert b"\r\n\r\nv=0\r\n" in golden(name) and b"m=audio " in golden(name)


# -- SIPp as the caller ------------------------------------------------------------------


def test_sipp_uac_call_is_answered_acknowledged_and_hung_up() -> None:
    """SIPp's built-in uac: INVITE with SDP (100, then 180 and 200 with our tag and SDP),
    its ACK confirms the call, its BYE ends it with a 200."""
    ep = endpoint(trunk=True)
    invite = golden("sipp/01-INVITE.sip")
    ep.receive(invite, SIPP, 0.0)
    [ev] = ep.events()
    assert isinstance(ev, InviteReceived) and ev.trunk and ev.user is None
    assert ev.call_id == "1-7152@127.0.0.1" and b"m=audio 6000" in ev.request.body
    [trying] = answers(ep)
    assert trying.status_code == 100
    assert_echoes(invite, trying, tagged=False)
    ep.ring(ev.call_id, 0.1)
    ep.answer(ev.call_id, SDP, 0.2)
    ringing, ok = answers(ep)
    assert (ringing.status_code, ok.status_code) == (180, 200)
    tag = assert_echoes(invite, ringing)
    assert tag is not None and assert_echoes(invite, ok) == tag
    assert ok.body == SDP and h(ok, "content-type") == "application/sdp"
    assert h(ok, "contact") == "<sip:ccengine@127.0.0.1:5070>"
    assert allowed(ok) == set(ALLOW.split(", "))

    ep.receive(retag(golden("sipp/02-ACK.sip"), tag), SIPP, 0.3)
    assert ep.transmit() == [] and ep.events() == [CallConfirmed(ev.call_id)]
    bye = retag(golden("sipp/03-BYE.sip"), tag)
    ep.receive(bye, SIPP, 5.0)
    [done] = answers(ep)
    assert done.status_code == 200
    assert_echoes(bye, done)
    assert ep.events() == [CallTerminated(ev.call_id, "remote_bye")]
    ep.handle_timer(100.0)
    assert ep.dialogs == {} and ep.next_timer() is None


@pytest.mark.parametrize("name", ["sipp/03-BYE.sip", "baresip/07-BYE-auth.sip"])
def test_a_bye_for_a_dialog_we_do_not_have_is_481(name: str) -> None:
    ep = endpoint(trunk=True)
    bye = golden(name)
    ep.receive(bye, SIPP, 0.0)
    [resp] = answers(ep)
    assert resp.status_code == 481
    assert_echoes(bye, resp)
    assert ep.events() == []


def test_sipp_cancel_while_we_ring() -> None:
    """tests/sipp.py's cancel scenario: CANCEL after our 100 and 180. 200 to the CANCEL,
    487 to the INVITE (§9.2) with the 180's tag; its ACK ends the INVITE's transaction."""
    ep = endpoint(trunk=True)
    invite = golden("sipp/09-INVITE.sip")
    ep.receive(invite, SIPP, 0.0)
    [ev] = ep.events()
    ep.ring(ev.call_id, 0.0)
    trying, ringing = answers(ep)
    cancel = golden("sipp/10-CANCEL.sip")
    ep.receive(cancel, SIPP, 0.1)
    cancelled, terminated = answers(ep)
    assert (cancelled.status_code, terminated.status_code) == (200, 487)
    assert_echoes(cancel, cancelled)
    assert assert_echoes(invite, terminated) == sm.tag(h(ringing, "to"))
    assert ep.events() == [CallCancelled(ev.call_id)]
    ep.receive(golden("sipp/11-ACK.sip"), SIPP, 0.2)  # the 487's ACK: same branch
    assert ep.transmit() == []
    ep.handle_timer(100.0)
    assert ep._txns.server == {} and ep.dialogs == {} and ep.next_timer() is None


def test_sipp_register_is_challenged_then_bound() -> None:
    """tests/sipp.py's REGISTER scenario: 401 with a digest challenge, then its answer
    (verified as captured) gets 200 with the binding and its expiry."""
    ep = endpoint()
    first = golden("sipp/07-REGISTER.sip")
    ep.receive(first, SIPP, 0.0)
    [challenge] = answers(ep)
    assert challenge.status_code == 401
    assert_echoes(first, challenge)
    assert h(challenge, "www-authenticate").startswith('Digest realm="ccengine", nonce="')
    second = golden("sipp/08-REGISTER-auth.sip")
    ep.receive(second, SIPP, issued(second))
    [ok] = answers(ep)
    assert ok.status_code == 200
    assert_echoes(second, ok)
    assert ok.headers.get("contact") == ["<sip:alice@127.0.0.1:5060>;expires=600"]
    assert ep.events() == [Registered("alice", "sip:alice@127.0.0.1:5060", 600)]


def test_sipp_register_with_a_wrong_password_is_403() -> None:
    ep = endpoint(password="not-wonderland")
    second = golden("sipp/08-REGISTER-auth.sip")
    ep.receive(second, SIPP, issued(second))
    [resp] = answers(ep)
    assert resp.status_code == 403 and ep.lookup("alice", 10.0) == []


# -- SIPp as the callee: its answers to our INVITE ----------------------------------------


def test_sipp_uas_answers_are_accepted_by_our_uac() -> None:
    """SIPp's built-in uas rang (180) and answered (200 with SDP) our INVITE, and took our
    BYE (200). Addressed to this endpoint's call, they give OutboundRinging and
    OutboundAnswered, our ACK goes to SIPp's Contact, and the BYE's 200 ends its
    transaction."""
    ep = endpoint()
    sipp_uas = Peer("UDP", "127.0.0.1", 15070)
    call_id = ep.invite("sip:service@127.0.0.1:15070", sipp_uas, SDP, 0.0)
    [invite] = requests(ep)
    ringing = golden("sipp/04-180-INVITE.sip")
    captured = sm.parse(ringing)
    ours = {
        sm.branch(captured): sm.branch(invite),
        captured.call_id or "": call_id,
        sm.tag(h(captured, "from")) or "": sm.tag(h(invite, "from")) or "",
    }
    ep.receive(swap(ringing, ours), sipp_uas, 0.1)
    assert ep.events() == [OutboundRinging(call_id)]
    ok = golden("sipp/05-200-INVITE.sip")
    ep.receive(swap(ok, ours), sipp_uas, 0.2)
    [answered] = ep.events()
    assert isinstance(answered, OutboundAnswered) and b"m=audio 6000" in answered.sdp
    [ack] = requests(ep)
    assert ack.method == "ACK" and ack.uri == "sip:127.0.0.1:15070;transport=UDP"
    assert sm.tag(h(ack, "to")) == "7161SIPpTag011" and sm.cseq(ack) == (1, "ACK")
    assert call_id in ep.dialogs

    ep.hangup(call_id, 1.0)
    [bye] = requests(ep)
    assert bye.method == "BYE" and sm.tag(h(bye, "to")) == "7161SIPpTag011"
    bye_ok = golden("sipp/06-200-BYE.sip")
    del ours[sm.branch(captured)]
    ours[sm.branch(sm.parse(bye_ok))] = sm.branch(bye)
    ep.receive(swap(bye_ok, ours), sipp_uas, 1.1)
    ep.handle_timer(100.0)
    assert ep.transmit() == []  # the 200 ended the BYE's transaction: no copies
    assert ep._uac.outbound == {} and ep.next_timer() is None


# -- baresip as a phone ------------------------------------------------------------------


def test_baresip_registers_with_digest_and_unregisters() -> None:
    """baresip's REGISTER gets a 401 challenge (qop=auth, MD5); its answer, verified as
    captured, gets 200 and the binding; when it quits, its REGISTER with expires=0 is
    challenged and, answered, removes the binding."""
    ep = endpoint()
    first = golden("baresip/01-REGISTER.sip")
    ep.receive(first, BARESIP, 0.0)
    [challenge] = answers(ep)
    assert challenge.status_code == 401
    assert_echoes(first, challenge)
    www = h(challenge, "www-authenticate")
    assert 'realm="ccengine"' in www and 'qop="auth"' in www and "algorithm=MD5" in www
    second = golden("baresip/02-REGISTER-auth.sip")
    ep.receive(second, BARESIP, issued(second))
    [ok] = answers(ep)
    assert ok.status_code == 200
    assert_echoes(second, ok)
    contact = "sip:alice-0x55b799d5acc0@127.0.0.1:15082"
    assert ok.headers.get("contact") == [f"<{contact}>;expires=600"]
    assert ep.events() == [Registered("alice", contact, 600)]
    assert [b.contact for b in ep.lookup("alice", 1.0)] == [contact]

    leave = golden("baresip/14-REGISTER.sip")
    ep.receive(leave, BARESIP, 10.0)
    [challenge] = answers(ep)
    assert challenge.status_code == 401
    leave_auth = golden("baresip/15-REGISTER-auth.sip")
    ep.receive(leave_auth, BARESIP, issued(leave_auth))
    [ok] = answers(ep)
    assert ok.status_code == 200 and ok.headers.get("contact") == []
    assert ep.events() == [Registered("alice", contact, 0)]
    assert ep.lookup("alice", 11.0) == []


def test_baresip_register_with_a_wrong_password_is_403() -> None:
    ep = endpoint(password="not-wonderland")
    second = golden("baresip/02-REGISTER-auth.sip")
    ep.receive(second, BARESIP, issued(second))
    [resp] = answers(ep)
    assert resp.status_code == 403 and ep.lookup("alice", 1.0) == []


def test_baresip_call_is_challenged_answered_acknowledged_and_hung_up() -> None:
    """baresip calls: its INVITE without credentials gets 401 (and its ACK is taken by
    the transaction), the INVITE with them lets alice in; ring, answer, its ACK (which
    carries credentials again) confirms the call, its BYE ends it."""
    ep = endpoint()
    bare = golden("baresip/03-INVITE.sip")
    ep.receive(bare, BARESIP, 0.0)
    [challenge] = answers(ep)
    assert challenge.status_code == 401
    assert_echoes(bare, challenge)
    ep.receive(golden("baresip/04-ACK.sip"), BARESIP, 0.1)
    assert ep.transmit() == [] and ep.events() == []

    invite = golden("baresip/05-INVITE-auth.sip")
    now = issued(invite)
    ep.receive(invite, BARESIP, now)
    [ev] = ep.events()
    assert isinstance(ev, InviteReceived) and ev.user == "alice" and not ev.trunk
    assert b"a=rtpmap:101 telephone-event/8000" in ev.request.body
    [trying] = answers(ep)
    assert trying.status_code == 100
    ep.ring(ev.call_id, now)
    ep.answer(ev.call_id, SDP, now)
    ringing, ok = answers(ep)
    tag = assert_echoes(invite, ok)
    assert tag is not None and assert_echoes(invite, ringing) == tag
    assert ep.dialogs[ev.call_id].remote_target == "sip:alice-0x55b799d5acc0@127.0.0.1:15082"

    ep.receive(retag(golden("baresip/06-ACK-auth.sip"), tag), BARESIP, now + 0.1)
    assert ep.transmit() == [] and ep.events() == [CallConfirmed(ev.call_id)]
    bye = retag(golden("baresip/07-BYE-auth.sip"), tag)
    ep.receive(bye, BARESIP, now + 2.0)
    [done] = answers(ep)
    assert done.status_code == 200
    assert_echoes(bye, done)
    assert ep.events() == [CallTerminated(ev.call_id, "remote_bye")]


def test_baresip_cancel_while_we_ring() -> None:
    """baresip hangs up while we ring: 200 to its CANCEL, 487 to its INVITE, and its ACK
    of the 487 ends the INVITE's transaction."""
    ep = endpoint()
    invite = golden("baresip/10-INVITE-auth.sip")
    now = issued(invite)
    ep.receive(invite, BARESIP, now)
    [ev] = ep.events()
    ep.ring(ev.call_id, now)
    _trying, ringing = answers(ep)
    cancel = golden("baresip/11-CANCEL.sip")
    ep.receive(cancel, BARESIP, now + 1.0)
    cancelled, terminated = answers(ep)
    assert (cancelled.status_code, terminated.status_code) == (200, 487)
    assert_echoes(cancel, cancelled)
    assert assert_echoes(invite, terminated) == sm.tag(h(ringing, "to"))
    assert ep.events() == [CallCancelled(ev.call_id)]
    ep.receive(golden("baresip/12-ACK.sip"), BARESIP, now + 1.1)
    assert ep.transmit() == []
    ep.handle_timer(now + 100.0)
    assert ep._txns.server == {} and ep.dialogs == {}


def test_baresip_options_gets_200_with_allow() -> None:
    ep = endpoint()
    options = golden("baresip/13-OPTIONS.sip")
    ep.receive(options, BARESIP, 0.0)
    [ok] = answers(ep)
    assert ok.status_code == 200
    assert_echoes(options, ok)
    assert allowed(ok) >= {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"}
    assert h(ok, "accept") == "application/sdp"
    assert ep.events() == [] and ep.dialogs == {}


def test_a_bye_on_a_captured_early_dialog_ends_the_invite() -> None:
    """SIPp's BYE sent while we still ring (the early dialog of its INVITE): 200 to the
    BYE, 487 to the INVITE, and nothing is left once the timers ran (regression: the
    INVITE's transaction stayed in Proceeding for ever)."""
    ep = endpoint(trunk=True)
    ep.receive(golden("sipp/01-INVITE.sip"), SIPP, 0.0)
    [ev] = ep.events()
    ep.ring(ev.call_id, 0.0)
    _trying, ringing = answers(ep)
    tag = sm.tag(h(ringing, "to"))
    assert tag is not None
    ep.receive(retag(golden("sipp/03-BYE.sip"), tag), SIPP, 1.0)
    assert [r.status_code for r in answers(ep)] == [200, 487]
    ep.handle_timer(1.0 + TIMER_64T1 + 1.0)  # no ACK for the 487: Timer H ends it
    ep.transmit()
    assert ep._txns.server == {} and ep.dialogs == {} and ep.next_timer() is None
