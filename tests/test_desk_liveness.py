"""An agent's desk that goes away (issue 16): the engine in-process
(tests/controlplane.py), the desks' event streams opened over ASGI as a browser's
WebSocket would be (the real endpoint, no socket), escalated chats routed by the real
ACD.

The failure: a closed desk tab left its agent available, so an escalated caller rang
them for the whole offer timeout (20 s) before anyone else was tried."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.events import AgentPresenceChanged, CallOffered, EventBase, OfferWithdrawn
from engine.routinglog import RoutingUnavailable
from tests import redisd
from tests.controlplane import CLIENT, ControlPlane
from tests.redisd import RedisServer

GRACE = 1.0  # CCENGINE_AGENT_DISCONNECT_AFTER, short for the test
OPEN: list[DeskStream] = []  # closed at each test's end, before its engine stops


class DeskStream:
    """``/api/v1/events`` as the desk page opens it, over ASGI: the messages a browser's
    WebSocket would send, and its close."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        OPEN.append(self)

    async def open(self) -> DeskStream:
        path = "/api/v1/events"
        scope = {
            "type": "websocket", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "scheme": "ws", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": b"after=0", "client": CLIENT, "server": ("127.0.0.1", 80),
            "headers": [(b"host", b"127.0.0.1"),
                        (b"authorization", f"Bearer {self.token}".encode())],
            "subprotocols": [], "state": {},
        }  # fmt: skip
        self.task = asyncio.create_task(self.app(scope, self.to_app.get, self.from_app.put))
        await self.to_app.put({"type": "websocket.connect"})
        async with asyncio.timeout(5):
            accepted = await self.from_app.get()
        assert accepted["type"] == "websocket.accept", accepted
        return self

    async def close(self) -> None:
        """The tab is closed: the browser's socket goes."""
        if self.task is None or self.task.done():
            return
        await self.to_app.put({"type": "websocket.disconnect", "code": 1001})
        async with asyncio.timeout(5):
            await self.task


async def until(predicate: Any, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110  # polls routing state the app changes
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def two_agents(
    tmp_path: Path, grace: float = GRACE, **settings: Any
) -> AsyncIterator[tuple[ControlPlane, list[str], list[str]]]:
    """Ann, then Bob, signed in and available (Ann idle longest); their ids and tokens."""
    async with ControlPlane(tmp_path / "engine", agent_disconnect_after=grace, **settings) as cp:
        ids, tokens = [], []
        for name in ("ann", "bob"):
            await cp.add_user(name, f"pw-{name}-123")
            client = cp.client()
            out = await client.login(name, f"pw-{name}-123")
            for event in ("login", "available"):
                await client.set_presence(event)  # type: ignore[arg-type]
            ids.append(out.user.id)
            tokens.append(out.token)
        try:
            yield cp, ids, tokens
        finally:
            while OPEN:
                await OPEN.pop().close()


async def next_of(cp: ControlPlane, sub: Any, kind: type[EventBase], within: float) -> Any:
    event = await cp.next_event(sub, kind.model_fields["type"].default, within)
    assert isinstance(event, kind)
    return event


async def test_a_ringing_desk_that_closes_hands_the_call_on_at_once(tmp_path: Path) -> None:
    """Ann's desk rings with a chat and her tab closes: within the grace (not the 20 s
    offer timeout) the offer is withdrawn from her, she is away saying why, and the chat
    rings Bob. Her tab reopened, she is still away: she chooses when to come back."""
    async with two_agents(tmp_path) as (cp, (ann, bob), (ann_token, bob_token)):
        ann_desk = await DeskStream(cp.app, ann_token).open()
        await DeskStream(cp.app, bob_token).open()
        liveness = cp.calls.routing.liveness
        await until(lambda: liveness.state(ann) == liveness.state(bob) == "present")
        async with cp.events() as sub:
            chat = await cp.calls.create_chat("en", None, "10.0.0.1")
            cp.calls.chat_message(chat.id, None, "I want to speak to a person please")
            first = await next_of(cp, sub, CallOffered, 10)
            assert (first.agent_id, first.call_id) == (ann, chat.id)
            closed = time.monotonic()
            await ann_desk.close()
            withdrawn = await next_of(cp, sub, OfferWithdrawn, 5)
            took = time.monotonic() - closed
            assert (withdrawn.agent_id, withdrawn.reason) == (ann, "disconnected")
            assert GRACE <= took < GRACE + 2.0  # after the grace, long before 20 s
            changed = await next_of(cp, sub, AgentPresenceChanged, 2)
            assert (changed.agent_id, changed.presence, changed.reason) == (
                ann, "away", "disconnected",
            )  # fmt: skip
            again = await next_of(cp, sub, CallOffered, 2)
            assert (again.agent_id, again.call_id) == (bob, chat.id)
        await DeskStream(cp.app, ann_token).open()  # the tab reopened
        await until(lambda: liveness.state(ann) == "present")
        assert cp.calls.presence_of(ann) == "away"
        await cp.calls.end_call(chat.id, "hangup")


async def test_a_closed_desk_is_away_and_the_next_caller_rings_the_other_agent(
    tmp_path: Path,
) -> None:
    """The issue's acceptance: an available agent's tab closes; within the grace they
    are away, and the next escalated caller rings the other agent."""
    async with two_agents(tmp_path) as (cp, (ann, bob), (ann_token, bob_token)):
        ann_desk = await DeskStream(cp.app, ann_token).open()
        await DeskStream(cp.app, bob_token).open()
        liveness = cp.calls.routing.liveness
        await until(lambda: liveness.state(ann) == liveness.state(bob) == "present")
        async with cp.events() as sub:
            await ann_desk.close()
            changed = await next_of(cp, sub, AgentPresenceChanged, GRACE + 3)
            assert (changed.agent_id, changed.presence, changed.reason) == (
                ann, "away", "disconnected",
            )  # fmt: skip
            chat = await cp.calls.create_chat("en", None, "10.0.0.1")
            cp.calls.chat_message(chat.id, None, "I want to speak to a person please")
            offered = await next_of(cp, sub, CallOffered, 10)
            assert offered.agent_id == bob
        await cp.calls.end_call(chat.id, "hangup")


class HeldReports:
    """Routing's answer to one agent's stream reports held back (a slow shared log):
    ``entered`` once one is being told, let go with ``gate``."""

    def __init__(self, cp: ControlPlane, agent: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        m, routing = cp.calls, cp.calls.routing
        clients, route = routing.clients, m._route

        def tagged(user_id: str, holder: str, streams: int) -> Any:
            effects = Tagged(clients(user_id, holder, streams))  # routing has the count
            effects.user_id = user_id
            return effects

        async def held(effects: Any) -> None:
            if getattr(effects, "user_id", None) == agent:
                self.entered.set()
                await self.gate.wait()  # ... and this engine waits for its answer
            await route(effects)

        monkeypatch.setattr(routing, "clients", tagged)
        monkeypatch.setattr(m, "_route", held)


class Tagged(list[Any]):
    user_id = ""


async def test_a_desk_that_leaves_while_its_open_is_reported_is_counted_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of 3b37cd4: the stream's count went up before the open was reported, and
    the ``finally`` that takes it down only began after that report. Ann's client left
    (the handler cancelled) while routing was still being told: her count stayed up and
    she was "present" for ever, offered calls with no desk. Now the open never waits:
    her stream is counted out, routing is told, and after the grace she is away."""
    async with two_agents(tmp_path) as (cp, (ann, _bob), (ann_token, _bob_token)):
        held = HeldReports(cp, ann, monkeypatch)
        desk = await DeskStream(cp.app, ann_token).open()
        await asyncio.wait_for(held.entered.wait(), 5)  # her open is being told
        liveness = cp.calls.routing.liveness
        assert liveness.state(ann) == "present" and desk.task is not None
        desk.task.cancel()  # the client left: the server cancels the stream
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(desk.task, 5)
        held.gate.set()
        await until(lambda: liveness.state(ann) is None, GRACE + 3)  # away, dealt with
        assert cp.calls.presence_of(ann) == "away"


async def test_one_agents_slow_report_does_not_hold_up_anothers_desk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of 3b37cd4: one lock covered every agent's report, held for a whole round
    trip to the shared log (up to 15 s): while Ann's open was being told, Bob's desk
    waited to start, and routing did not know he was there. Now each agent's report goes
    on its own, in the background."""
    async with two_agents(tmp_path) as (cp, (ann, bob), (ann_token, bob_token)):
        held = HeldReports(cp, ann, monkeypatch)
        await DeskStream(cp.app, ann_token).open()
        await asyncio.wait_for(held.entered.wait(), 5)
        await DeskStream(cp.app, bob_token).open()
        liveness = cp.calls.routing.liveness
        await until(lambda: liveness.state(bob) == "present", 2)
        held.gate.set()
        await until(lambda: liveness.state(ann) == "present", 2)


async def test_reports_the_shared_log_could_not_take_are_told_when_it_is_back(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of 3b37cd4: a report the shared routing log could not take (Redis away)
    was logged and dropped. Ann reloads her desk: the close is told, the open is lost,
    and she was set away after the grace at a live desk; later she closes it, that is
    lost, and she stayed "present", offered calls, with no desk at all. Now each is
    tried again, with her count as it is then, until the log takes it."""
    grace = 3.0
    settings = {"redis_url": redis_server.url, "redis_prefix": redisd.prefix()}
    async with two_agents(tmp_path, grace, **settings) as (cp, (ann, _bob), (ann_token, _b)):
        m, liveness = cp.calls, cp.calls.routing.liveness
        assert m.routing_log is not None
        append = m.routing_log._append

        async def away(_op: Any) -> bytes:
            raise RoutingUnavailable("the shared routing log cannot be reached: test")

        first = await DeskStream(cp.app, ann_token).open()
        await until(lambda: liveness.state(ann) == "present")
        await first.close()  # the reload: told
        await until(lambda: liveness.state(ann) == "absent")
        monkeypatch.setattr(m.routing_log, "_append", away)
        second = await DeskStream(cp.app, ann_token).open()  # ... and its open lost
        await asyncio.sleep(0.3)
        monkeypatch.setattr(m.routing_log, "_append", append)  # Redis back
        await asyncio.sleep(grace + 1.0)
        assert liveness.state(ann) == "present"
        assert m.presence_of(ann) == "available"

        monkeypatch.setattr(m.routing_log, "_append", away)
        await second.close()  # the desk closed for good while Redis is away
        await asyncio.sleep(0.3)
        monkeypatch.setattr(m.routing_log, "_append", append)
        await until(lambda: m.presence_of(ann) == "away", grace + 3)


async def test_streams_told_again_do_not_overwrite_a_newer_close(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of 9187a62: the streams told again after a reset of the shared routing
    were read when it happened and sent later, in tasks of their own: Ann's desk closing
    meanwhile was told first, then her old count (1) over it, and she stayed "present"
    with no desk. Now they go through the same per-agent reports, each count read when
    sent, in order."""
    settings = {"redis_url": redis_server.url, "redis_prefix": redisd.prefix()}
    async with two_agents(tmp_path, 5.0, **settings) as (cp, (ann, _bob), (ann_token, _b)):
        m, liveness = cp.calls, cp.calls.routing.liveness
        assert m.routing_log is not None and m.shared is not None
        desk = await DeskStream(cp.app, ann_token).open()
        await until(lambda: liveness.state(ann) == "present")
        append = m.routing_log._append

        async def slow(op: Any) -> bytes:  # an open's report slower than a close's
            if op.get("op") == "clients" and op.get("streams"):
                await asyncio.sleep(0.3)
            return await append(op)

        monkeypatch.setattr(m.routing_log, "_append", slow)
        m.shared.reset()  # the routing started afresh: her streams told again
        await desk.close()
        await asyncio.sleep(1.0)
        assert liveness.state(ann) == "absent"
