"""A call's routing through the shared log (engine/routinglog.py) on a real
redis-server, seen from the engine running the call: the control plane in this
process (tests/controlplane.py) with ``redis_url`` set, so every routing step of
``CallManager`` is an operation of the shared log. Regressions of b697810: a step of a
call's end that routing refused, or an answer the log could not take, must not leave
the call or the agent's connection behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.calls import CallManager
from engine.livecall import Call
from engine.routinglog import RoutingUnavailable
from engine.store.models import UserRow
from media.rtp import RtpSession
from media.sip.peer import SipPeer
from media.sip.sdp import parse_offer
from tests import redisd
from tests.controlplane import PHONE_SDP, ControlPlane, phone_call
from tests.redisd import RedisServer

PASSWORD = "pw-ann-123"


class DeskPhone:
    """The agent's SIP desk phone as ``accept_peer`` is given it: a real ``SipPeer``
    (no network media) that counts the BYEs it sends, i.e. its closes."""

    def __init__(self) -> None:
        self.byes = 0
        self.peer = SipPeer(RtpSession(parse_offer(PHONE_SDP), lambda _d: None), self._bye)

    def _bye(self) -> None:
        self.byes += 1


async def ringing_ann(cp: ControlPlane) -> tuple[Call, UserRow]:
    """A phone caller on ``cp`` who waits in the shared line and rings ann, signed in
    and available."""
    m = cp.calls
    await cp.add_user("ann", PASSWORD)
    await cp.agent("ann", PASSWORD, "login", "available")
    ann = await cp.store.user_by_name("ann")
    assert ann is not None
    call, _caller = await phone_call(m, "+15550001234")
    await m._route(m.routing.requested(call))  # asks the log; its effects applied here
    assert m.routing_copy is not None
    assert m.routing_copy.routing.offered_to(ann.id, call.id)
    assert call.state == "queued"
    return call, ann


async def test_a_refused_step_does_not_keep_a_call_from_ending(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Regression (b697810, ``SharedCalls.leave``): a call's last routing steps
    (its agent to wrap-up, the caller out of the line) went to the shared log as one
    ``_route``: when routing refused one, here the agent's hang-up because another
    engine had already sent her to wrap-up (a survivor does, for an engine it thought
    dead: ``SharedCalls.calls_lost``) and she is available again, ``AcdError`` came out of
    ``end_call``: the call was never recorded ended, its legs stayed open (the caller
    and the agent's phone never got a BYE) and it stayed live on the engine. Now each
    step is asked on its own, a refusal is skipped, and the call ends."""
    async with ControlPlane(
        tmp_path / "engine", redis_url=redis_server.url, redis_prefix=redisd.prefix()
    ) as cp:
        m: CallManager = cp.calls
        assert m.routing_log is not None and m.routing_copy is not None
        call, ann = await ringing_ann(cp)
        desk = DeskPhone()
        await m.accept_peer(ann.id, call.id, desk.peer, "sip", "PCMU")
        assert call.state == "bridged" and call.agent_id == ann.id
        assert m.routing_copy.routing.presence_of(ann.id) == "on_call"

        # another engine sends ann to wrap-up; she makes herself available again
        await m.routing_log.submit({"op": "hung_up", "agent": ann.id, "handle_time": 0.0})
        await cp.agent("ann", PASSWORD, "available")
        assert m.routing_copy.routing.presence_of(ann.id) == "available"

        await m.end_call(call.id, "caller_hangup")  # raised AcdError ("cannot 'hangup'")

        assert call.state == "ended" and call.id not in m.calls
        record = await cp.store.get_call(call.id)
        assert record is not None
        assert record.call.end_reason == "caller_hangup" and record.call.ended_at is not None
        assert record.call.legs and all(leg.ended_at is not None for leg in record.call.legs)
        assert desk.byes == 1  # the agent's phone was hung up
        assert (
            m.shared is not None and not m.shared.background
        )  # nothing left to ask again: the refusal was the answer
        assert m.routing_copy.routing.presence_of(ann.id) == "available"  # unchanged
        assert call.id not in m.routing_copy.routing.acd.waiting


async def test_an_answer_the_log_cannot_take_hangs_up_the_agents_phone(tmp_path: Path) -> None:
    """Regression (b697810, ``CallManager._bridge_agent``): an agent answered on their
    desk phone while the shared routing log could not be reached. The answer is asked
    of the log, which raised ``RoutingUnavailable``; only ``AcdError`` closed the
    agent's peer, so the phone's connection leaked: no BYE, its RTP left open, and the
    call not bridged to it. Now the peer is closed (the phone gets its BYE), the error
    goes to whoever asked, and the call still waits, its offer ringing."""
    own_redis = RedisServer().start()  # this test's alone: it stops it
    cp = ControlPlane(tmp_path / "engine", redis_url=own_redis.url, redis_prefix=redisd.prefix())
    try:
        await cp.start()
        m: CallManager = cp.calls
        call, ann = await ringing_ann(cp)
        own_redis.stop()  # the shared log away (a real redis-server that is gone)

        desk = DeskPhone()
        with pytest.raises(RoutingUnavailable):
            await m.accept_peer(ann.id, call.id, desk.peer, "sip", "PCMU")

        assert desk.byes == 1  # was 0: the peer was left open
        assert call.state == "queued" and call.agent_id is None
        assert all(leg.peer is not desk.peer for leg in call.legs)
        assert m.routing_copy is not None
        assert m.routing_copy.routing.offered_to(ann.id, call.id)
    finally:
        own_redis.stop()
        # the same port again, so that the app's Redis clients stop promptly
        back = RedisServer(port=own_redis.port).start()
        try:
            await asyncio.wait_for(cp.stop(), 30)
        finally:
            back.stop()
