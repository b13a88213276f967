"""SIP transactions (RFC 3261 §17), sans-IO: retransmissions, absorbed copies, timers.

Theory of operation
-------------------
A transaction is one request and the responses to it, matched by the Via branch and
the method (an ACK belongs to its INVITE). Four machines, one per kind; each row is
``state  input -> next state``. Inputs are what the peer sent (``request``: a copy of
the request; ``ack``; ``recv_1xx`` / ``recv_2xx`` / ``recv_failure``: a response),
what our side sent (``send_1xx`` / ``send_2xx`` / ``send_failure``: 3xx-6xx) and
timers firing.

INVITE server (§17.2.1; Accepted from RFC 6026)::

    proceeding  request       -> proceeding   (the last provisional again)
    proceeding  send_1xx      -> proceeding
    proceeding  send_2xx      -> accepted     (the dialog retransmits the 2xx)
    proceeding  send_failure  -> completed    (Timer G re-sends it, Timer H gives up)
    accepted    request       -> accepted     (the 2xx again)
    accepted    timer_l       -> terminated
    completed   request       -> completed    (the failure again)
    completed   timer_g       -> completed    (the failure again, T1 doubling to T2)
    completed   ack           -> confirmed    (Timer I absorbs ACK copies)
    completed   timer_h       -> terminated   (no ACK came)
    confirmed   request       -> confirmed    (the failure again)
    confirmed   ack           -> confirmed
    confirmed   timer_i       -> terminated

non-INVITE server (§17.2.2)::

    trying      request       -> trying       (nothing to re-send yet)
    trying      send_1xx      -> proceeding
    trying      send_2xx      -> completed
    trying      send_failure  -> completed
    proceeding  request       -> proceeding   (the provisional again)
    proceeding  send_1xx      -> proceeding
    proceeding  send_2xx      -> completed
    proceeding  send_failure  -> completed
    completed   request       -> completed    (the final answer again)
    completed   timer_j       -> terminated

INVITE client (§17.1.1)::

    calling     timer_a       -> calling      (the INVITE again, T1 doubling, no cap)
    calling     timer_b       -> terminated   (nobody answered: 408 to the user)
    calling     recv_1xx      -> terminated   (see below: no Proceeding)
    calling     recv_2xx      -> terminated   (the 2xx and its ACK belong to the dialog)
    calling     recv_failure  -> completed    (the user agent ACKs it in this branch)
    completed   recv_failure  -> completed    (a copy: absorbed)
    completed   timer_d       -> terminated

non-INVITE client (§17.1.2)::

    trying      timer_e       -> trying       (the request again, T1 doubling to T2)
    trying      timer_f       -> terminated   (nobody answered: 408 to the user)
    trying      recv_1xx      -> proceeding
    trying      recv_2xx      -> completed
    trying      recv_failure  -> completed
    proceeding  timer_e       -> proceeding   (the request again, every T2)
    proceeding  timer_f       -> terminated
    proceeding  recv_1xx      -> proceeding
    proceeding  recv_2xx      -> completed
    proceeding  recv_failure  -> completed
    completed   recv_2xx      -> completed    (a copy: absorbed)
    completed   recv_failure  -> completed
    completed   timer_k       -> terminated

``TRANSITIONS`` is the only place these live, and ``TIMERS`` the only place the timers
do: which machine and states arm each, for how long over UDP and over TCP, and whether
it re-sends. A timer starts when its machine enters one of its states from outside them
and stops when it leaves them; a zero timer fires at once. An input with no row is
refused with :class:`TransactionError`: our own misuse is a bug and raises; the layer
drops a peer's out-of-place message instead.

Where this deviates from RFC 3261 §17, on purpose (the behaviour the endpoint had):

* An INVITE client transaction ends at its first provisional answer: it has nothing
  left to re-send, and what follows (more provisionals, the final answer, copies of
  it) is matched to the call by its Call-ID in ``uac.py``. RFC 3261's Proceeding has
  no timer of its own, so a trunk that rang and then went quiet, or never answered a
  CANCEL with 487, kept a Proceeding transaction for ever.
* Timers D and K are zero over UDP too (the RFC asks for 32 s and T4): a client
  transaction is forgotten at its final answer. A copy of a failure to our INVITE is
  ACKed again by the user agent, which matches it by Call-ID.
* An INVITE server transaction that sent a 2xx lingers in RFC 6026's Accepted state for
  Timer L (64*T1) and answers INVITE copies with the 2xx again (RFC 6026 absorbs them
  silently; the dialog retransmits the 2xx on its own clock either way).
* Copies of the request in Confirmed get the failure again (§17.2.1 says nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from media.sip import message as sm
from media.sip.events import Peer
from media.sip.message import SipRequest, SipResponse

log = logging.getLogger(__name__)

T1, T2, T4 = 0.5, 4.0, 5.0  # RTT estimate, cap on non-INVITE retransmits, max lifetime
TIMER_64T1 = 64 * T1
MAX_TRANSACTIONS = 20_000  # server transactions; a new request beyond gets 503

Key = tuple[str, str]  # (Via branch, method); an ACK is keyed as its INVITE


class Kind(StrEnum):
    INVITE_SERVER = "invite_server"
    NON_INVITE_SERVER = "non_invite_server"
    INVITE_CLIENT = "invite_client"
    NON_INVITE_CLIENT = "non_invite_client"


class State(StrEnum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Input(StrEnum):
    REQUEST = "request"
    ACK = "ack"
    SEND_1XX = "send_1xx"
    SEND_2XX = "send_2xx"
    SEND_FAILURE = "send_failure"
    RECV_1XX = "recv_1xx"
    RECV_2XX = "recv_2xx"
    RECV_FAILURE = "recv_failure"
    TIMER_A = "timer_a"
    TIMER_B = "timer_b"
    TIMER_D = "timer_d"
    TIMER_E = "timer_e"
    TIMER_F = "timer_f"
    TIMER_G = "timer_g"
    TIMER_H = "timer_h"
    TIMER_I = "timer_i"
    TIMER_J = "timer_j"
    TIMER_K = "timer_k"
    TIMER_L = "timer_l"


IS, NIS = Kind.INVITE_SERVER, Kind.NON_INVITE_SERVER
IC, NIC = Kind.INVITE_CLIENT, Kind.NON_INVITE_CLIENT
S, E = State, Input

TRANSITIONS: dict[tuple[Kind, State, Input], State] = {
    (IS, S.PROCEEDING, E.REQUEST): S.PROCEEDING,
    (IS, S.PROCEEDING, E.SEND_1XX): S.PROCEEDING,
    (IS, S.PROCEEDING, E.SEND_2XX): S.ACCEPTED,
    (IS, S.PROCEEDING, E.SEND_FAILURE): S.COMPLETED,
    (IS, S.ACCEPTED, E.REQUEST): S.ACCEPTED,
    (IS, S.ACCEPTED, E.TIMER_L): S.TERMINATED,
    (IS, S.COMPLETED, E.REQUEST): S.COMPLETED,
    (IS, S.COMPLETED, E.TIMER_G): S.COMPLETED,
    (IS, S.COMPLETED, E.ACK): S.CONFIRMED,
    (IS, S.COMPLETED, E.TIMER_H): S.TERMINATED,
    (IS, S.CONFIRMED, E.REQUEST): S.CONFIRMED,
    (IS, S.CONFIRMED, E.ACK): S.CONFIRMED,
    (IS, S.CONFIRMED, E.TIMER_I): S.TERMINATED,
    (NIS, S.TRYING, E.REQUEST): S.TRYING,
    (NIS, S.TRYING, E.SEND_1XX): S.PROCEEDING,
    (NIS, S.TRYING, E.SEND_2XX): S.COMPLETED,
    (NIS, S.TRYING, E.SEND_FAILURE): S.COMPLETED,
    (NIS, S.PROCEEDING, E.REQUEST): S.PROCEEDING,
    (NIS, S.PROCEEDING, E.SEND_1XX): S.PROCEEDING,
    (NIS, S.PROCEEDING, E.SEND_2XX): S.COMPLETED,
    (NIS, S.PROCEEDING, E.SEND_FAILURE): S.COMPLETED,
    (NIS, S.COMPLETED, E.REQUEST): S.COMPLETED,
    (NIS, S.COMPLETED, E.TIMER_J): S.TERMINATED,
    (IC, S.CALLING, E.TIMER_A): S.CALLING,
    (IC, S.CALLING, E.TIMER_B): S.TERMINATED,
    (IC, S.CALLING, E.RECV_1XX): S.TERMINATED,
    (IC, S.CALLING, E.RECV_2XX): S.TERMINATED,
    (IC, S.CALLING, E.RECV_FAILURE): S.COMPLETED,
    (IC, S.COMPLETED, E.RECV_FAILURE): S.COMPLETED,
    (IC, S.COMPLETED, E.TIMER_D): S.TERMINATED,
    (NIC, S.TRYING, E.TIMER_E): S.TRYING,
    (NIC, S.TRYING, E.TIMER_F): S.TERMINATED,
    (NIC, S.TRYING, E.RECV_1XX): S.PROCEEDING,
    (NIC, S.TRYING, E.RECV_2XX): S.COMPLETED,
    (NIC, S.TRYING, E.RECV_FAILURE): S.COMPLETED,
    (NIC, S.PROCEEDING, E.TIMER_E): S.PROCEEDING,
    (NIC, S.PROCEEDING, E.TIMER_F): S.TERMINATED,
    (NIC, S.PROCEEDING, E.RECV_1XX): S.PROCEEDING,
    (NIC, S.PROCEEDING, E.RECV_2XX): S.COMPLETED,
    (NIC, S.PROCEEDING, E.RECV_FAILURE): S.COMPLETED,
    (NIC, S.COMPLETED, E.RECV_2XX): S.COMPLETED,
    (NIC, S.COMPLETED, E.RECV_FAILURE): S.COMPLETED,
    (NIC, S.COMPLETED, E.TIMER_K): S.TERMINATED,
}

INITIAL: dict[Kind, State] = {IS: S.PROCEEDING, NIS: S.TRYING, IC: S.CALLING, NIC: S.TRYING}


@dataclass(frozen=True, slots=True)
class Timer:
    kind: Kind
    states: frozenset[State]  # armed while the machine is in these
    udp: float  # its first delay over UDP
    reliable: float | None  # over TCP; None: not armed (retransmissions are UDP's)
    resends: bool = False  # re-sends the request (client) or the last response (server)
    cap: float | None = None  # the doubling interval stops here; None: no cap

    def delay(self, reliable: bool) -> float | None:
        return self.reliable if reliable else self.udp


def _in(*states: State) -> frozenset[State]:
    return frozenset(states)


# In firing order within one tick: a client whose Timer B/F is due gives up without one
# more copy, a server sends its last Timer G copy before Timer H ends it.
TIMERS: dict[Input, Timer] = {
    E.TIMER_B: Timer(IC, _in(S.CALLING), TIMER_64T1, TIMER_64T1),
    E.TIMER_D: Timer(IC, _in(S.COMPLETED), 0.0, 0.0),  # RFC: >= 32 s over UDP
    E.TIMER_F: Timer(NIC, _in(S.TRYING, S.PROCEEDING), TIMER_64T1, TIMER_64T1),
    E.TIMER_K: Timer(NIC, _in(S.COMPLETED), 0.0, 0.0),  # RFC: T4 over UDP
    E.TIMER_A: Timer(IC, _in(S.CALLING), T1, None, resends=True),
    E.TIMER_E: Timer(NIC, _in(S.TRYING, S.PROCEEDING), T1, None, resends=True, cap=T2),
    E.TIMER_G: Timer(IS, _in(S.COMPLETED), T1, None, resends=True, cap=T2),
    E.TIMER_H: Timer(IS, _in(S.COMPLETED), TIMER_64T1, TIMER_64T1),
    E.TIMER_I: Timer(IS, _in(S.CONFIRMED), T4, 0.0),
    E.TIMER_J: Timer(NIS, _in(S.COMPLETED), TIMER_64T1, 0.0),
    E.TIMER_L: Timer(IS, _in(S.ACCEPTED), TIMER_64T1, TIMER_64T1),  # RFC 6026
}


class TransactionError(Exception):
    """An input the table has no row for: a bug when it is ours to give."""

    def __init__(self, kind: Kind, state: State, event: Input) -> None:
        super().__init__(f"{kind}: no transition from {state} on {event}")
        self.kind, self.state, self.event = kind, state, event


def kind_of(method: str, server: bool) -> Kind:
    if server:
        return IS if method == "INVITE" else NIS
    return IC if method == "INVITE" else NIC


def response_input(status: int, sent: bool) -> Input:
    if status < 200:
        return E.SEND_1XX if sent else E.RECV_1XX
    if status < 300:
        return E.SEND_2XX if sent else E.RECV_2XX
    return E.SEND_FAILURE if sent else E.RECV_FAILURE


@dataclass(slots=True)
class Transaction:
    """One machine of the table: its state, its armed timers, its retransmit interval."""

    kind: Kind
    peer: Peer
    state: State
    deadlines: dict[Input, float] = field(default_factory=dict)
    interval: float = T1  # the re-sending timer's next interval (A, E or G)

    def start(self, now: float) -> None:
        self._arm(None, now)

    def step(self, event: Input, now: float) -> State:
        """Move on ``event``; raise :class:`TransactionError` if the table has no row."""
        new = TRANSITIONS.get((self.kind, self.state, event))
        if new is None:
            raise TransactionError(self.kind, self.state, event)
        old, self.state = self.state, new
        for name in [n for n in self.deadlines if new not in TIMERS[n].states]:
            del self.deadlines[name]
        if new is not old:
            self._arm(old, now)
        return self.state  # a zero timer may have moved it on already

    def fire(self, name: Input, now: float) -> bool:
        """Run timer ``name`` (it must be due); True if it asks for a copy to be re-sent."""
        timer = TIMERS[name]
        if timer.resends:
            # §17.1.2.2: in Proceeding a non-INVITE request is re-sent every T2
            doubled = self.interval * 2
            self.interval = T2 if self.state is S.PROCEEDING else min(doubled, timer.cap or doubled)
            self.deadlines[name] = now + self.interval
        self.step(name, now)
        return timer.resends

    def due(self, now: float) -> list[Input]:
        return [n for n in TIMERS if n in self.deadlines and now >= self.deadlines[n]]

    def _arm(self, old: State | None, now: float) -> None:
        for name, timer in TIMERS.items():
            if timer.kind is not self.kind or self.state not in timer.states:
                continue
            if old is not None and old in timer.states:
                continue  # still running from an earlier state (Timer E, F)
            delay = timer.delay(self.peer.reliable)
            if delay is None:
                continue
            if timer.resends:
                self.interval = delay
            self.deadlines[name] = now + delay
            if delay == 0.0 and self.state is not S.TERMINATED:
                self.step(name, now)  # a zero timer fires at once
                return


@dataclass(slots=True, kw_only=True)
class ServerTransaction(Transaction):
    request: SipRequest
    last: bytes | None = None  # the last response sent, re-sent for a copy of the request
    status: int = 0

    @property
    def method(self) -> str:
        return self.request.method


@dataclass(slots=True, kw_only=True)
class ClientTransaction(Transaction):
    data: bytes  # the request as sent, re-sent by Timer A/E
    method: str
    call_id: str = ""


class Transactions:
    """The server and client transactions of one endpoint, keyed by branch and method.

    Everything sent goes out through ``send``, so the order of the endpoint's
    datagrams is the order things happened."""

    def __init__(self, send: Callable[[Peer, bytes], None]) -> None:
        self.send = send
        self.server: dict[Key, ServerTransaction] = {}
        self.client: dict[Key, ClientTransaction] = {}

    # -- server side -----------------------------------------------------------------

    def full(self) -> bool:
        return len(self.server) >= MAX_TRANSACTIONS

    def absorb(self, key: Key, peer: Peer, now: float) -> bool:
        """A copy of a request we have: answer it again (if we have answered); True if
        it was one."""
        txn = self.server.get(key)
        if txn is None:
            return False
        txn.step(E.REQUEST, now)
        if txn.last is not None:
            self.send(peer, txn.last)  # where the copy came from: symmetric signalling
        return True

    def open(self, key: Key, request: SipRequest, peer: Peer, now: float) -> ServerTransaction:
        kind = kind_of(request.method, server=True)
        txn = ServerTransaction(kind, peer, INITIAL[kind], request=request)
        txn.start(now)
        self.server[key] = txn
        return txn

    def respond(self, txn: ServerTransaction, resp: SipResponse, now: float) -> bytes:
        """Send ``resp`` in ``txn``; a status its state does not allow is our bug."""
        txn.step(response_input(resp.status_code, sent=True), now)
        data = bytes(resp)
        txn.last, txn.status = data, resp.status_code
        self.send(txn.peer, data)
        self._forget_server(txn)
        return data

    def ack(self, key: Key, now: float) -> bool:
        """An ACK for a failure we sent (True: taken here); an ACK for a 2xx, or for
        nothing we know, is the dialog's."""
        txn = self.server.get(key)
        if txn is None or txn.state not in (S.COMPLETED, S.CONFIRMED):
            return False
        txn.step(E.ACK, now)
        self._forget_server(txn)
        return True

    def _forget_server(self, txn: ServerTransaction) -> None:
        if txn.state is S.TERMINATED:
            self.server.pop((sm.branch(txn.request), txn.method), None)

    # -- client side -----------------------------------------------------------------

    def start(self, req: SipRequest, peer: Peer, now: float) -> ClientTransaction:
        data = bytes(req)
        self.send(peer, data)
        kind = kind_of(req.method, server=False)
        txn = ClientTransaction(
            kind, peer, INITIAL[kind], data=data, method=req.method, call_id=req.call_id or ""
        )
        txn.start(now)
        self.client[(sm.branch(req), req.method)] = txn
        return txn

    def on_response(self, resp: SipResponse, now: float) -> ClientTransaction | None:
        """The client transaction ``resp`` belongs to, moved on by it; None for a stray
        (no such transaction, or nothing it expects in its state)."""
        key = (sm.branch(resp), sm.cseq(resp)[1])
        txn = self.client.get(key)
        if txn is None:
            return None
        try:
            txn.step(response_input(resp.status_code, sent=False), now)
        except TransactionError:
            return None  # the peer's mistake: dropped here
        if txn.state is S.TERMINATED:
            del self.client[key]
        return txn

    # -- time ------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        times = [t for x in self.server.values() for t in x.deadlines.values()]
        times += [t for x in self.client.values() for t in x.deadlines.values()]
        return min(times) if times else None

    @staticmethod
    def _fire(txn: Transaction, name: Input, now: float) -> bool | None:
        """Timer ``name`` of ``txn``: whether to re-send, or None if the table has no
        row for it (a bug: that one transaction is dropped, not the timers of all)."""
        try:
            return txn.fire(name, now)
        except TransactionError:
            log.exception("SIP transaction %s dropped", txn.kind)
            return None

    def handle_timer(self, now: float) -> list[ClientTransaction]:
        """Run due timers; the client transactions that timed out (B or F) come back,
        for their user agent to fail them with a 408."""
        for key, stxn in list(self.server.items()):
            for name in stxn.due(now):
                resend = self._fire(stxn, name, now)
                if resend is None:
                    del self.server[key]
                    break
                if resend and stxn.last:
                    self.send(stxn.peer, stxn.last)
                if name is E.TIMER_H:
                    log.info("no ACK for %s to %s", stxn.status, stxn.request.call_id)
                if stxn.state is S.TERMINATED:
                    del self.server[key]
                    break
        timed_out: list[ClientTransaction] = []
        for key, ctxn in list(self.client.items()):
            for name in ctxn.due(now):
                resend = self._fire(ctxn, name, now)
                if resend is None:
                    del self.client[key]
                    break
                if resend:
                    self.send(ctxn.peer, ctxn.data)
                if ctxn.state is S.TERMINATED:
                    del self.client[key]
                    if name in (E.TIMER_B, E.TIMER_F):
                        timed_out.append(ctxn)
                    break
        return timed_out
