"""Consults and conferences, in-process: the consult's state table (engine/consult.py),
who hears whom (engine/conference.py), the refusals, and the ACD's consult ring.

What must not break: while consulting the caller hears neither agent (a wrong pair
would let the caller hear a colleague discuss them); a conference is everyone; a
consult never rings a busy colleague, and its ring, declined, frees the colleague
without queueing the call."""

from __future__ import annotations

from itertools import product

import pytest

from engine.acd import Acd, AcdError, Offer, OfferExpired, PresenceChanged, QueueConfig
from engine.callstate import NotAllowed
from engine.conference import HEARS, PARTIES, hears, speaks
from engine.consult import TRANSITIONS, Consult, may_start


def consult(phase: str = "ringing") -> Consult:
    c = Consult("u-ann", "ann", "u-bob", "bob")
    c.phase = phase  # type: ignore[assignment]  # a test sets any phase
    return c


def test_a_consult_moves_as_its_table_says() -> None:
    c = consult()
    assert c.move("answer") == "consulting" and c.phase == "consulting"
    assert c.party("u-bob") == "guest" and c.party("u-ann") == "host"
    assert c.move("conference") == "conference" and c.heard == "conference"
    assert c.move("leave") is None
    # the table, written out: every other (phase, event) pair is refused with the reason
    expected = {
        ("ringing", "answer"): "consulting",
        ("ringing", "decline"): None,
        ("ringing", "no_answer"): None,
        ("ringing", "failed"): None,
        ("ringing", "cancel"): None,
        ("ringing", "host_left"): None,
        ("consulting", "complete"): None,
        ("consulting", "conference"): "conference",
        ("consulting", "cancel"): None,
        ("consulting", "guest_left"): None,
        ("consulting", "host_left"): None,
        ("conference", "leave"): None,
    }
    assert TRANSITIONS == expected
    events = ("answer", "decline", "no_answer", "failed", "cancel", "complete", "conference",
              "guest_left", "host_left", "leave")  # fmt: skip
    for phase, event in product(("ringing", "consulting", "conference"), events):
        if (phase, event) in expected:
            assert consult(phase).next(event) == expected[(phase, event)]  # type: ignore[arg-type]
        else:
            with pytest.raises(NotAllowed):
                consult(phase).next(event)  # type: ignore[arg-type]
    with pytest.raises(NotAllowed, match="not answered yet"):
        consult("ringing").next("complete")
    # a guest still ringing is no party yet: the bridge is the plain one
    assert consult("ringing").heard == "none" and consult("ringing").party("u-bob") == "host"


def pairs(phase: str, state: str, muted: tuple[str, ...] = ()) -> set[tuple[str, str]]:
    return {
        (s, listener)
        for s, listener in product(PARTIES, PARTIES)
        if s != listener and hears(phase, s, listener, state=state, muted=muted)  # type: ignore[arg-type]
    }


def test_who_hears_whom() -> None:
    # consulting: the caller is held; the agents hear each other, the caller nobody
    assert pairs("consulting", "held") == {("host", "guest"), ("guest", "host")}
    # a conference: all six pairs while bridged; on hold nobody
    assert (
        pairs("conference", "bridged") == set(HEARS["conference"]) and len(HEARS["conference"]) == 6
    )
    assert pairs("conference", "held") == set()
    # the plain bridge: caller and host, only while bridged
    assert pairs("none", "bridged") == {("caller", "host"), ("host", "caller")}
    assert pairs("none", "held") == set()
    # a muted host is heard by nobody, but still hears
    assert pairs("conference", "bridged", ("host",)) == {
        ("caller", "guest"), ("guest", "caller"), ("caller", "host"), ("guest", "host")
    }  # fmt: skip
    assert not speaks("none", "host", state="held") and speaks("consulting", "host", state="held")
    assert not speaks("consulting", "caller", state="held")


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"channel": "chat"}, "chat"),
        ({"consult": Consult("a", "a", "b", "b")}, "already consulting"),
        ({"guest_id": None}, "no such agent"),
        ({"guest_id": "u-ann"}, "yourself"),
        ({"guest_presence": "on_call"}, "not available"),
        ({"state": "queued"}, "not with you"),
    ],
)
def test_refusals_say_why(kw: dict[str, object], why: str) -> None:
    args: dict[str, object] = {
        "channel": "webrtc", "state": "bridged", "consult": None, "guest_id": "u-bob",
        "host_id": "u-ann", "guest_presence": "available",
    }  # fmt: skip
    may_start(**args)  # type: ignore[arg-type]
    with pytest.raises(NotAllowed, match=why):
        may_start(**{**args, **kw})  # type: ignore[arg-type]


def acd() -> Acd:
    a = Acd([QueueConfig(name="general")], offer_timeout=20.0)
    for agent in ("ann", "bob", "cat"):
        a.add_agent(agent)
        a.presence(agent, "login", 0.0)
        a.presence(agent, "available", 0.0)
    return a


def test_the_consult_ring_is_an_offer_that_queues_nothing() -> None:
    a = acd()
    out = a.offer_to("bob", "c1", 1.0)
    assert isinstance(out[-1], Offer) and a.agents["bob"].presence == "ringing"
    assert "c1" not in a.waiting
    with pytest.raises(AcdError):
        a.offer_to("bob", "c2", 1.0)  # ringing already: not available
    # declined: bob is available again, and the call is offered to nobody else
    out = a.decline("bob", "c1", 2.0)
    assert a.agents["bob"].presence == "available"
    assert not [x for x in out if isinstance(x, Offer)] and a.agents["cat"].offered is None
    # withdrawn (the host cancelled): likewise, and told as an expired offer
    a.offer_to("bob", "c1", 3.0)
    out = a.withdraw("bob", "c1", 3.5)
    assert isinstance(out[0], OfferExpired) and a.agents["bob"].presence == "available"
    assert a.withdraw("bob", "c1", 3.6) == []  # once
    # rung out: missed, as any offer
    a.offer_to("bob", "c1", 4.0)
    out = a.tick(30.0)
    assert any(isinstance(x, OfferExpired) for x in out) and a.agents["bob"].presence == "away"
    # answered: on a call
    a.offer_to("cat", "c1", 31.0)
    assert isinstance(a.accept("cat", "c1", 32.0)[0], PresenceChanged)
    assert a.agents["cat"].presence == "on_call"


def test_each_agents_words_say_which_agent() -> None:
    """Two agents on a consult are both the ``agent`` side of the transcript (analytics
    and the summary read that), and each final names the agent who said it."""
    from engine.events import TranscriptFinal
    from engine.livecall import Leg
    from tests.test_analysis import final, new_call, published, run_stages

    call = new_call()
    call.legs[1].user_id = "u-ann"
    call.legs.append(Leg("leg-bob", "agent", "webrtc", user_id="u-bob", offset=40.0))
    out = run_stages([final("leg-caller", 0, "hello"), final("leg-agent", 0, "one moment"),
                      final("leg-bob", 0, "i can help")], call)  # fmt: skip
    said = [(e.speaker, e.agent_id) for e in published(out, TranscriptFinal)]
    assert said == [("caller", None), ("agent", "u-ann"), ("agent", "u-bob")]
