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

from engine.events import AgentPresenceChanged, CallOffered, EventBase, OfferWithdrawn
from tests.controlplane import CLIENT, ControlPlane

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
async def two_agents(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, list[str], list[str]]]:
    """Ann, then Bob, signed in and available (Ann idle longest); their ids and tokens."""
    async with ControlPlane(tmp_path / "engine", agent_disconnect_after=GRACE) as cp:
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
