"""Event streams: WebSocket or Server-Sent Events, one call's or everything.

A stream first replays what the durable event log holds after ``after`` (default:
nothing older for the all-events stream; the whole call for a call's stream), then
follows live. Every message is one event as JSON with its ``id``; a client that
reconnects with ``after=<last id>`` (or, for SSE, the ``Last-Event-ID`` header
EventSource sends by itself; the later of the two counts) gets exactly what it missed,
across engine restarts too. The pages' event client (engine/web/static/events.js) uses
SSE; the agent's desk keeps its WebSocket (below).
A client too slow to keep up is closed (WebSocket code 1013) and resumes the same way.

Who may listen: ``read`` scope for everything; a call's own caller token for its call;
pages on the engine's own origin (or allowed ones) only. A caller hears less than staff
(``CALLER_EVENTS``): what their page shows, never what the engine or the staff concluded
about them (mood, escalation, the agent's assist, notes, alerts), nor what the agents
said to each other while the caller was held for a consult (``caller_heard``).

An agent's WebSocket stream of everything is also how the engine knows they are at
their desk (the desk page and ``ccengine phone`` hold one open while they run): routing
is told when one opens and closes (engine/liveness.py, engine/desks.py). WebSocket pings
(uvicorn's, every ``ws_ping_interval``) find a stream whose host vanished without
closing it. An SSE stream has no pings, and is not a desk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from engine.api.auth import Principal, Who, principal, until_refused
from engine.api.schemas import PathId
from engine.calls import CallManager
from engine.eventlog import EventLog
from engine.events import EventBus
from engine.store.db import Store

router = APIRouter(prefix="/api/v1", tags=["events"])

LAGGED = 1013  # "try again later"
UNKNOWN_CALL = 4404
HEARTBEAT = 15.0  # seconds; keeps proxies from closing a quiet SSE stream
WS_REFUSED = {401: 4401, 403: 4403, 429: 4429}
# A caller's own stream: only what the caller page (engine/web/static/call.js) shows
# them. An allowlist: an event type added later stays with the staff until someone
# decides a caller should read it.
CALLER_EVENTS = frozenset(
    {
        "call.state_changed",
        "transcript.partial",
        "transcript.final",
        "bot.said",
        "queue.updated",
        "call.verified",
        "call.verification_failed",
        "dtmf.received",
        "callback.requested",
        "call.ended",
    }
)
# ... and of those, fields written for the staff: a callback's summary of the call, the
# priority in line (an escalation rule raised it: that says what the rule concluded)
CALLER_HIDDEN = {
    "callback.requested": ("summary",),
    "queue.updated": ("priority",),
    # which agent said it, by their user id: the page names the agent by display name
    "transcript.partial": ("agent_id",),
    "transcript.final": ("agent_id",),
}
# a state change's reason is the staff's words ("ann", "ann: consult cancelled", "handed
# over to bob": logins, which the caller is never told); only the end's reason, a code
# the page turns into a sentence ("agent_hangup"), is theirs
STAFF_REASON = "call.state_changed"
# words the caller did not hear (agents consulting while they were held) are the
# staff's: the event says so (engine/events.py ``caller_heard``)
TRANSCRIPTS = ("transcript.partial", "transcript.final")


class Lagged(Exception):
    pass


def for_caller(body: str) -> str | None:
    """An event as its call's caller may read it (``body``: its JSON), or None: not
    for them."""
    event = json.loads(body)
    kind = event.get("type")
    if kind not in CALLER_EVENTS:
        return None
    if kind in TRANSCRIPTS and event.get("caller_heard") is False:
        return None
    hidden = CALLER_HIDDEN.get(kind, ())
    if kind == STAFF_REASON and event.get("state") != "ended":
        hidden = ("reason",)
    if not any(field in event for field in hidden):
        return body
    for field in hidden:
        event.pop(field, None)
    return json.dumps(event, separators=(",", ":"))


async def _events(
    request_app: object, call_id: str | None, after: int, caller: bool = False
) -> AsyncIterator[tuple[int, str]]:
    """Replay then live, without gaps or repeats; raises Lagged if the client fell
    behind. ``caller``: the call's caller listens, who reads only what is for them."""
    async for event_id, body in _all_events(request_app, call_id, after):
        if caller:
            mine = for_caller(body)
            if mine is None:
                continue
            body = mine
        yield event_id, body


async def _all_events(
    request_app: object, call_id: str | None, after: int
) -> AsyncIterator[tuple[int, str]]:
    bus: EventBus = request_app.state.bus  # type: ignore[attr-defined]
    log: EventLog = request_app.state.event_log  # type: ignore[attr-defined]
    sub = bus.subscribe(call_id)  # before the replay: nothing falls in between
    if call_id is None and after == 0:  # everything, from the start of time: too much
        after = max(0, bus.oldest_id - 1)
    try:
        last = after
        async for event_id, body in log.replay(call_id, after):
            yield event_id, body
            last = event_id
        async for event in sub:
            if event.id > last:
                yield event.id, event.model_dump_json()
                last = event.id
        if sub.lagged:
            raise Lagged
    finally:
        sub.close()


async def _known_call(app: object, call_id: str) -> bool:
    manager: CallManager = app.state.calls  # type: ignore[attr-defined]
    store: Store = app.state.store  # type: ignore[attr-defined]
    return manager.live(call_id) is not None or await store.get_call(call_id) is not None


async def authorize_ws(ws: WebSocket, check: Callable[[Principal], None]) -> Principal | None:
    """Who is on this accepted socket, if ``check`` lets them in; otherwise None, after
    closing it with 4401/4403/4429 and the reason (a browser cannot read HTTP refusals
    of a WebSocket handshake). A page on another origin is refused whatever the
    credential: a browser opens its sockets with our cookies."""
    why = ws.app.state.origins.refusal(ws)
    if why is not None:
        await ws.close(WS_REFUSED[403], why)
        return None
    try:
        p = await principal(ws)
        check(p)
    except HTTPException as exc:
        await ws.close(WS_REFUSED.get(exc.status_code, 4400), str(exc.detail)[:120])
        return None
    return p


def _may_listen(call_id: str | None) -> Callable[[Principal], None]:
    if call_id is None:
        return lambda p: p.need("read")
    return lambda p: p.need_call(call_id, "read")


def _agent(p: Principal | None, call_id: str | None) -> str | None:
    """The agent whose presence this WebSocket stream keeps alive: a signed-in agent's
    stream of everything (a call's stream is not a desk)."""
    if call_id is None and p is not None and p.kind == "user" and p.identity is not None:
        if p.identity.role == "agent":
            return p.identity.user_id
    return None


@contextlib.contextmanager
def _at_desk(app: object, agent: str | None) -> Iterator[None]:
    """While the stream is open, it counts as the agent's desk. Counting it never
    waits (routing is told in the background, engine/desks.py), so a stream cancelled
    anywhere (the client left) is always counted out as it was counted in."""
    if agent is None:
        yield
        return
    manager: CallManager = app.state.calls  # type: ignore[attr-defined]
    manager.agent_stream(agent, opened=True)
    try:
        yield
    finally:
        manager.agent_stream(agent, opened=False)


async def close_when_refused(ws: WebSocket, check: Callable[[Principal], None]) -> None:
    """Close an open socket once its credential no longer holds (``until_refused``)."""
    exc = await until_refused(ws, check)
    await ws.close(WS_REFUSED.get(exc.status_code, 4400), str(exc.detail)[:120])


async def _serve(ws: WebSocket, call_id: str | None, after: int) -> None:
    await ws.accept()
    check = _may_listen(call_id)
    if (p := await authorize_ws(ws, check)) is None:
        return
    if call_id is not None and not await _known_call(ws.app, call_id):
        await ws.close(UNKNOWN_CALL, "unknown call")
        return
    with _at_desk(ws.app, _agent(p, call_id)):
        await _follow(ws, call_id, after, check, caller=p.kind == "caller")


async def _follow(
    ws: WebSocket,
    call_id: str | None,
    after: int,
    check: Callable[[Principal], None],
    caller: bool = False,
) -> None:

    async def send_all() -> None:
        try:
            async for _id, body in _events(ws.app, call_id, after, caller):
                await ws.send_text(body)
        except Lagged:
            await ws.close(LAGGED, "subscriber lagged; reconnect with ?after=<last id>")

    sender = asyncio.create_task(send_all())
    guard = asyncio.create_task(close_when_refused(ws, check))
    try:
        # Clients have nothing to say; reading only notices that they left.
        while not sender.done() and not guard.done():
            receive = asyncio.create_task(ws.receive())
            done, _ = await asyncio.wait(
                {receive, sender, guard}, return_when=asyncio.FIRST_COMPLETED
            )
            if receive in done:
                if receive.result()["type"] == "websocket.disconnect":
                    break
            else:
                receive.cancel()
    except WebSocketDisconnect:
        pass
    finally:
        for task in (sender, guard):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _sse(
    request: Request, call_id: str | None, after: int, caller: bool = False
) -> StreamingResponse:
    """Not an agent's desk: nothing finds an SSE stream whose host vanished (there are no
    pings, and a keep-alive write only fills a buffer) until TCP gives up, many minutes
    later, so it would keep the agent "present" that long. The desks use WebSockets."""

    async def body() -> AsyncIterator[bytes]:
        async with contextlib.aclosing(_sse_body(request, call_id, after, caller)) as chunks:
            async for chunk in chunks:
                yield chunk

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


async def _sse_body(
    request: Request, call_id: str | None, after: int, caller: bool = False
) -> AsyncGenerator[bytes, None]:
    yield b"retry: 2000\n\n"
    events = _events(request.app, call_id, after, caller).__aiter__()
    next_event: asyncio.Task[tuple[int, str]] | None = None
    # the stream ends once its credential no longer holds; EventSource comes back
    # and is refused
    guard = asyncio.ensure_future(until_refused(request, _may_listen(call_id)))
    try:
        while True:
            if next_event is None:
                next_event = asyncio.ensure_future(events.__anext__())
            done, _ = await asyncio.wait(
                {next_event, guard}, timeout=HEARTBEAT, return_when=asyncio.FIRST_COMPLETED
            )
            if guard in done:
                return
            if not done:
                yield b": keep-alive\n\n"
                continue
            try:
                event_id, text = next_event.result()
            except (StopAsyncIteration, Lagged):
                return  # the client reconnects with Last-Event-ID by itself
            next_event = None
            yield f"id: {event_id}\ndata: {text}\n\n".encode()
    finally:
        for task in (next_event, guard):
            if task is not None:  # the client left while we waited for an event
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await events.aclose()  # type: ignore[attr-defined]


def _resume_from(after: int | None, last_event_id: str | None, default: int) -> int:
    """Where a stream starts: after the later of ``after`` and Last-Event-ID. An
    EventSource opened with ``?after=N`` comes back to the same URL with the id it saw
    last, which is the newer of the two: taking ``after`` would replay all since N."""
    resume = after
    if last_event_id is not None:
        try:
            seen = max(0, int(last_event_id))
        except ValueError:
            raise HTTPException(422, "Last-Event-ID must be an event id") from None
        resume = seen if resume is None else max(resume, seen)
    return default if resume is None else resume


SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "an endless event stream"}
}


@router.get("/calls/{call_id}/events", responses=SSE_DOC, response_class=StreamingResponse)
async def call_events_sse(
    call_id: PathId,
    request: Request,
    p: Who,
    after: int | None = Query(None, ge=0, le=2**62),
    last_event_id: str | None = Header(None, max_length=20),
) -> StreamingResponse:
    """One call's events as Server-Sent Events: everything since the call began (or
    after ``after`` / Last-Event-ID), then live."""
    p.need_call(call_id, "read")
    if not await _known_call(request.app, call_id):
        raise HTTPException(404, f"no call {call_id}")
    caller = p.kind == "caller"  # reads only what is for them (CALLER_EVENTS)
    return _sse(request, call_id, _resume_from(after, last_event_id, 0), caller)


@router.get("/events", responses=SSE_DOC, response_class=StreamingResponse)
async def all_events_sse(
    request: Request,
    p: Who,
    after: int | None = Query(None, ge=0, le=2**62),
    last_event_id: str | None = Header(None, max_length=20),
) -> StreamingResponse:
    """Every event as Server-Sent Events, from after ``after`` / Last-Event-ID (default
    or 0: the most recent events the engine holds in memory), then live."""
    p.need("read")
    return _sse(request, None, _resume_from(after, last_event_id, 0))


@router.websocket("/calls/{call_id}/events")
async def call_events(
    ws: WebSocket, call_id: PathId, after: int = Query(0, ge=0, le=2**62)
) -> None:
    await _serve(ws, call_id, after)


@router.websocket("/events")
async def all_events(ws: WebSocket, after: int = Query(0, ge=0, le=2**62)) -> None:
    await _serve(ws, None, after)
