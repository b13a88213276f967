"""SIP transactions (RFC 3261 §17): the state tables, their timers, and two endpoints
talking to each other in-process.

The table tests read ``TRANSITIONS`` and ``TIMERS`` themselves, so a row added there is a
row tested here. The pair tests wire a UAC endpoint to a UAS endpoint, move their
datagrams both ways with a fake clock until neither has anything to send, and compare
what each side told its application.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from media.sip import message as sm
from media.sip.endpoint import (
    Admission,
    CallCancelled,
    CallConfirmed,
    CallTerminated,
    Event,
    InviteReceived,
    OutboundAnswered,
    OutboundFailed,
    OutboundRinging,
    Peer,
    Registered,
    RegistrationChanged,
    SipEndpoint,
)
from media.sip.transaction import (
    INITIAL,
    T1,
    T2,
    T4,
    TIMER_64T1,
    TIMERS,
    TRANSITIONS,
    Input,
    Kind,
    State,
    Transaction,
    TransactionError,
    Transactions,
)

UDP = Peer("UDP", "192.0.2.10", 5060)
TCP = Peer("TCP", "192.0.2.10", 5060, conn=1)


def machine(kind: Kind, state: State, peer: Peer = UDP) -> Transaction:
    return Transaction(kind, peer, state)


# -- the table ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "state", "event"), list(TRANSITIONS), ids=lambda v: getattr(v, "value", v)
)
def test_every_transition_in_the_table(kind: Kind, state: State, event: Input) -> None:
    txn = machine(kind, state)
    expected = TRANSITIONS[kind, state, event]
    if expected is not state:
        expected = after_zero_timers(kind, expected, UDP)
    assert txn.step(event, 10.0) is expected


def after_zero_timers(kind: Kind, state: State, peer: Peer) -> State:
    """Where a machine entering ``state`` ends up: a zero timer fires at once."""
    for name, timer in TIMERS.items():
        if timer.kind is kind and state in timer.states and timer.delay(peer.reliable) == 0.0:
            return TRANSITIONS[kind, state, name]
    return state


def test_every_state_of_every_machine_is_reachable_and_can_end() -> None:
    for kind in Kind:
        seen, todo = {INITIAL[kind]}, [INITIAL[kind]]
        while todo:
            state = todo.pop()
            for (k, s, _), new in TRANSITIONS.items():
                if k is kind and s is state and new not in seen:
                    seen.add(new)
                    todo.append(new)
        assert State.TERMINATED in seen, kind
        assert {s for (k, s, _) in TRANSITIONS if k is kind} <= seen, kind


@pytest.mark.parametrize(
    ("kind", "state", "event"),
    [
        (Kind.INVITE_SERVER, State.COMPLETED, Input.SEND_2XX),  # a 2xx after a failure
        (Kind.INVITE_SERVER, State.ACCEPTED, Input.SEND_1XX),  # ringing after the answer
        (Kind.NON_INVITE_SERVER, State.COMPLETED, Input.SEND_FAILURE),  # answered twice
        (Kind.INVITE_CLIENT, State.COMPLETED, Input.RECV_2XX),
        (Kind.NON_INVITE_CLIENT, State.COMPLETED, Input.RECV_1XX),
        (Kind.INVITE_SERVER, State.PROCEEDING, Input.ACK),  # nothing to acknowledge yet
    ],
)
def test_an_input_without_a_row_is_refused(kind: Kind, state: State, event: Input) -> None:
    txn = machine(kind, state)
    with pytest.raises(TransactionError, match=f"no transition from {state} on {event}"):
        txn.step(event, 0.0)
    assert txn.state is state  # refused, not half-done


def test_each_timer_belongs_to_one_machine_and_moves_it() -> None:
    for name, timer in TIMERS.items():
        for state in timer.states:
            assert (timer.kind, state, name) in TRANSITIONS, (name, state)


# -- timers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "udp", "tcp"),
    [
        (Kind.INVITE_CLIENT, {Input.TIMER_A: T1, Input.TIMER_B: TIMER_64T1}, {Input.TIMER_B: 32.0}),
        (Kind.NON_INVITE_CLIENT, {Input.TIMER_E: T1, Input.TIMER_F: 32.0}, {Input.TIMER_F: 32.0}),
        (Kind.INVITE_SERVER, {}, {}),
        (Kind.NON_INVITE_SERVER, {}, {}),
    ],
)
def test_timers_armed_on_start(
    kind: Kind, udp: dict[Input, float], tcp: dict[Input, float]
) -> None:
    for peer, expected in ((UDP, udp), (TCP, tcp)):
        txn = Transaction(kind, peer, INITIAL[kind])
        txn.start(100.0)
        assert txn.deadlines == {n: 100.0 + d for n, d in expected.items()}, peer.transport


def run_timers(txn: Transaction, until: float) -> list[tuple[float, Input]]:
    """Fire each due timer at its deadline, as a transport armed on next_timer would."""
    fired: list[tuple[float, Input]] = []
    while txn.deadlines and txn.state is not State.TERMINATED:
        now = min(txn.deadlines.values())
        if now > until:
            break
        for name in txn.due(now):
            txn.fire(name, now)
            fired.append((now, name))
            if txn.state is State.TERMINATED:
                break
    return fired


def test_timer_a_doubles_without_a_cap_until_timer_b() -> None:
    txn = machine(Kind.INVITE_CLIENT, State.CALLING)
    txn.start(0.0)
    fired = run_timers(txn, 100.0)
    assert fired == [(t, Input.TIMER_A) for t in (0.5, 1.5, 3.5, 7.5, 15.5, 31.5)] + [
        (32.0, Input.TIMER_B)
    ]
    assert txn.state is State.TERMINATED


def test_timer_e_caps_at_t2_and_runs_every_t2_once_proceeding() -> None:
    txn = machine(Kind.NON_INVITE_CLIENT, State.TRYING)
    txn.start(0.0)
    assert [t for t, _ in run_timers(txn, 8.0)] == [0.5, 1.5, 3.5, 7.5]  # 0.5 1 2 4 (T2)
    txn.step(Input.RECV_1XX, 8.0)
    fired = run_timers(txn, 40.0)
    assert [t for t, n in fired if n is Input.TIMER_E] == [11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert fired[-1] == (32.0, Input.TIMER_F)  # F runs from the start, through Proceeding


def test_timer_g_until_timer_h_when_no_ack_comes() -> None:
    txn = machine(Kind.INVITE_SERVER, State.PROCEEDING)
    txn.step(Input.SEND_FAILURE, 0.0)
    fired = run_timers(txn, 100.0)
    g = [t for t, n in fired if n is Input.TIMER_G]
    assert g == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]  # capped at T2
    assert fired[-1] == (32.0, Input.TIMER_H)
    assert txn.state is State.TERMINATED


def test_ack_stops_timer_g_and_timer_i_absorbs_copies() -> None:
    txn = machine(Kind.INVITE_SERVER, State.PROCEEDING)
    txn.step(Input.SEND_FAILURE, 0.0)
    txn.step(Input.ACK, 1.0)
    assert txn.state is State.CONFIRMED and txn.deadlines == {Input.TIMER_I: 1.0 + T4}
    txn.step(Input.ACK, 2.0)  # a copy of the ACK
    assert run_timers(txn, 100.0) == [(1.0 + T4, Input.TIMER_I)]


@pytest.mark.parametrize(
    ("kind", "state", "event", "udp", "tcp"),
    [
        (Kind.INVITE_SERVER, State.PROCEEDING, Input.SEND_2XX, {Input.TIMER_L: 32.0}, 32.0),
        (Kind.NON_INVITE_SERVER, State.TRYING, Input.SEND_2XX, {Input.TIMER_J: 32.0}, None),
        (Kind.INVITE_SERVER, State.COMPLETED, Input.ACK, {Input.TIMER_I: T4}, None),
    ],
)
def test_zero_timers_over_tcp_end_the_transaction_at_once(
    kind: Kind, state: State, event: Input, udp: dict[Input, float], tcp: float | None
) -> None:
    over_udp = machine(kind, state, UDP)
    over_udp.step(event, 0.0)
    assert over_udp.deadlines == udp
    over_tcp = machine(kind, state, TCP)
    over_tcp.step(event, 0.0)
    if tcp is None:
        assert over_tcp.state is State.TERMINATED
    else:
        assert list(over_tcp.deadlines.values()) == [tcp]


def test_client_transactions_end_at_their_final_answer() -> None:
    """Timers D and K are zero here (a deviation from §17.1: the RFC keeps a UDP client
    transaction 32 s / T4 to absorb copies); the user agent handles the copies."""
    for kind, state in (
        (Kind.INVITE_CLIENT, State.CALLING),
        (Kind.NON_INVITE_CLIENT, State.TRYING),
    ):
        txn = machine(kind, state)
        assert txn.step(Input.RECV_FAILURE, 1.0) is State.TERMINATED


# -- the layer: retransmitted requests absorbed ----------------------------------------------


def invite_bytes(branch: str = "z9hG4bKlayer") -> sm.SipRequest:
    req = sm.parse(
        (
            "INVITE sip:x@198.51.100.7 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch}\r\n"
            "From: <sip:a@192.0.2.10>;tag=f\r\nTo: <sip:x@198.51.100.7>\r\n"
            "Call-ID: layer@a\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(req, sm.SipRequest)
    return req


def test_a_retransmitted_request_gets_the_last_answer_again() -> None:
    sent: list[tuple[Peer, bytes]] = []
    txns = Transactions(lambda peer, data: sent.append((peer, data)))
    req = invite_bytes()
    key = (sm.branch(req), "INVITE")
    txn = txns.open(key, req, UDP, 0.0)
    assert txns.absorb(key, UDP, 0.1) and sent == []  # nothing answered yet: silence
    txns.respond(txn, sm.response(req, 486, to_tag="t"), 0.2)
    assert txns.absorb(key, UDP, 0.3)
    assert [d.split(b"\r\n", 1)[0] for _, d in sent] == [b"SIP/2.0 486 Busy Here"] * 2
    assert txns.ack(key, 0.4) and txn.state is State.CONFIRMED
    assert not txns.absorb(("z9hG4bKother", "INVITE"), UDP, 0.5)
    txns.handle_timer(0.4 + T4)
    assert txns.server == {}


# -- pairs: a UAC endpoint and a UAS endpoint, in-process ------------------------------------

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 203.0.113.1\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\n"
)


class Pair:
    """Two endpoints and a wire between them, with a clock that only moves when told."""

    def __init__(self) -> None:
        self.uac = SipEndpoint("203.0.113.1", 5060)
        self.uas = SipEndpoint(
            "198.51.100.7",
            5060,
            Admission(realm="carrier", trunks=["203.0.113.1/32"], passwords={"acct": "pw"}.get),
        )
        self.now = 0.0
        self.wire: list[str] = []  # "uac> INVITE", "uas> 200", ... in the order sent
        self.got: dict[str, list[Event]] = {"uac": [], "uas": []}
        self.drop: Callable[[str, bytes], bool] = lambda _who, _data: False

    def peer(self, ep: SipEndpoint) -> Peer:
        return Peer("UDP", ep.local_host, ep.local_port)

    @property
    def to_uas(self) -> Peer:
        return self.peer(self.uas)

    def shuttle(self, rounds: int = 20) -> None:
        """Move datagrams both ways until neither side sends anything."""
        for _ in range(rounds):
            moved = False
            for who, src, dst in (("uac", self.uac, self.uas), ("uas", self.uas, self.uac)):
                for t in src.transmit():
                    moved = True
                    first = t.data.split(b"\r\n", 1)[0].decode()
                    words = first.split(" ")
                    self.wire.append(f"{who}> {words[1] if first.startswith('SIP/') else words[0]}")
                    if not self.drop(who, t.data):
                        dst.receive(t.data, self.peer(src), self.now)
                self.got[who] += src.events()
            if not moved:
                return
        raise AssertionError(f"no quiescence after {rounds} rounds: {self.wire[-10:]}")

    def run_until(self, until: float) -> None:
        """Run both sides' timers in time order up to ``until``."""
        for _ in range(1000):
            due = [t for t in (self.uac.next_timer(), self.uas.next_timer()) if t is not None]
            if not due or min(due) > until:
                break
            self.now = max(self.now, min(due))
            self.uac.handle_timer(self.now)
            self.uas.handle_timer(self.now)
            self.shuttle()
        self.now = until

    def take(self, who: str) -> list[Event]:
        out, self.got[who] = self.got[who], []
        return out

    def take_wire(self) -> list[str]:
        out, self.wire = self.wire, []
        return out


def test_pair_invite_200_ack_bye() -> None:
    p = Pair()
    call_id = p.uac.invite("sip:support@198.51.100.7", p.to_uas, SDP, p.now)
    p.shuttle()
    [invite] = p.take("uas")
    assert isinstance(invite, InviteReceived) and invite.call_id == call_id and invite.trunk
    assert p.take_wire() == ["uac> INVITE", "uas> 100"]
    p.now = 1.0
    p.uas.answer(call_id, SDP, p.now)
    p.shuttle()
    assert p.take_wire() == ["uas> 200", "uac> ACK"]
    assert p.take("uac") == [OutboundAnswered(call_id, SDP)]
    assert p.take("uas") == [CallConfirmed(call_id)]
    p.run_until(60.0)  # no retransmissions once acknowledged, both sides forget
    assert p.take_wire() == []
    p.uac.hangup(call_id, p.now)
    p.shuttle()
    assert p.take_wire() == ["uac> BYE", "uas> 200"]
    assert p.take("uas") == [CallTerminated(call_id, "remote_bye")]
    assert call_id not in p.uac.dialogs and call_id not in p.uas.dialogs
    p.run_until(200.0)
    assert p.take_wire() == [] and p.uac.next_timer() is None and p.uas.next_timer() is None


def test_pair_cancel_while_ringing() -> None:
    p = Pair()
    call_id = p.uac.invite("sip:support@198.51.100.7", p.to_uas, SDP, p.now)
    p.shuttle()
    p.uas.ring(call_id, p.now)
    p.shuttle()
    # the 100 came first: ringing is still reported, at the 180 (it was not: only a
    # first provisional that was a 180/183 counted)
    assert p.take("uac") == [OutboundRinging(call_id)]
    p.take("uas")
    assert p.take_wire() == ["uac> INVITE", "uas> 100", "uas> 180"]
    # ringing, the INVITE's transaction has ended: the call is matched by its Call-ID
    # from here, so a trunk that goes quiet leaves no transaction behind
    assert not p.uac._txns.client
    p.now = 2.0
    p.uac.hangup(call_id, p.now)
    p.shuttle()
    assert p.take_wire() == ["uac> CANCEL", "uas> 200", "uas> 487", "uac> ACK"]
    assert p.take("uas") == [CallCancelled(call_id)]
    assert p.take("uac") == [OutboundFailed(call_id, 487, "Request Terminated")]
    p.run_until(100.0)
    assert p.take_wire() == []  # the ACK stopped Timer G: no 487 copies
    assert p.uas.next_timer() is None and p.uac.next_timer() is None


def test_pair_register_answers_the_digest_challenge() -> None:
    p = Pair()
    p.uac.register_to("sip:198.51.100.7", "acct", p.to_uas, p.now, auth=("acct", "pw"), expires=300)
    p.shuttle()
    assert p.take_wire() == ["uac> REGISTER", "uas> 401", "uac> REGISTER", "uas> 200"]
    contact = "sip:acct@203.0.113.1:5060"
    assert p.take("uas") == [Registered("acct", contact, 300)]
    assert p.take("uac") == [RegistrationChanged("sip:198.51.100.7", "registered", 200, 300)]
    assert [b.contact for b in p.uas.lookup("acct", 1.0)] == [contact]
    p.run_until(240.0)  # refreshed a minute before it runs out, answering a new challenge
    assert p.take_wire() == ["uac> REGISTER", "uas> 401", "uac> REGISTER", "uas> 200"]
    assert p.uas.lookup("acct", 340.0) != []


def test_pair_register_with_a_wrong_password_fails() -> None:
    p = Pair()
    p.uac.register_to("sip:198.51.100.7", "acct", p.to_uas, p.now, auth=("acct", "nope"))
    p.shuttle()
    assert p.take_wire() == ["uac> REGISTER", "uas> 401", "uac> REGISTER", "uas> 403"]
    assert p.take("uac") == [RegistrationChanged("sip:198.51.100.7", "failed", 403)]
    assert p.uas.lookup("acct", 1.0) == []


def test_pair_lost_200_is_retransmitted_until_acknowledged() -> None:
    """The callee's 200 is lost on the wire: the UAS re-sends it at T1 (§13.3.1.4), the
    UAC answers the copy with its ACK, and each side reports the call once."""
    p = Pair()
    call_id = p.uac.invite("sip:support@198.51.100.7", p.to_uas, SDP, p.now)
    p.shuttle()
    p.take("uas")
    p.take_wire()
    lost: list[bytes] = []

    def lose_first_200(who: str, data: bytes) -> bool:
        if who == "uas" and data.startswith(b"SIP/2.0 200") and not lost:
            lost.append(data)
            return True
        return False

    p.drop = lose_first_200
    p.uas.answer(call_id, SDP, p.now)
    p.shuttle()
    assert p.take_wire() == ["uas> 200"] and lost and p.take("uac") == []
    p.run_until(T1)
    assert p.take_wire() == ["uas> 200", "uac> ACK"]
    assert p.take("uac") == [OutboundAnswered(call_id, SDP)]
    assert p.take("uas") == [CallConfirmed(call_id)]
    p.run_until(T1 + T2 * 10)
    assert p.take_wire() == []  # acknowledged: no more copies, no BYE for a missing ACK


def test_pair_lost_ack_is_sent_again_for_each_200_copy() -> None:
    p = Pair()
    call_id = p.uac.invite("sip:support@198.51.100.7", p.to_uas, SDP, p.now)
    p.shuttle()
    p.take_wire()
    acks = 0

    def lose_two_acks(who: str, data: bytes) -> bool:
        nonlocal acks
        if who == "uac" and data.startswith(b"ACK"):
            acks += 1
            return acks <= 2
        return False

    p.drop = lose_two_acks
    p.uas.answer(call_id, SDP, p.now)
    p.shuttle()
    p.run_until(10.0)
    assert p.take_wire() == ["uas> 200", "uac> ACK"] * 3  # at 0, T1 and 3*T1
    assert p.take("uac") == [OutboundAnswered(call_id, SDP)]
    assert [e for e in p.take("uas") if not isinstance(e, InviteReceived)] == [
        CallConfirmed(call_id)
    ]


def test_pair_a_refused_call_is_reported_once_when_the_ack_is_lost() -> None:
    """The callee refuses (486) and our ACK is lost: the 486 comes again (Timer G), is
    ACKed again, and the refusal is reported once (it was reported for each copy)."""
    p = Pair()
    call_id = p.uac.invite("sip:support@198.51.100.7", p.to_uas, SDP, p.now)
    p.shuttle()
    p.take("uas")
    p.take_wire()
    acks = 0

    def lose_first_ack(who: str, data: bytes) -> bool:
        nonlocal acks
        if who == "uac" and data.startswith(b"ACK"):
            acks += 1
            return acks == 1
        return False

    p.drop = lose_first_ack
    p.uas.reject(call_id, 486, p.now)
    p.shuttle()
    p.run_until(10.0)
    assert p.take_wire() == ["uas> 486", "uac> ACK"] * 2
    assert p.take("uac") == [OutboundFailed(call_id, 486, "Busy Here")]
