"""WebSocket event streams: one per call, and one for everything.

On connect the stream replays what the bus still holds after ``after`` (default:
everything it holds), then follows live. Each message is one event as JSON with
its ``id``; a client that reconnects with ``?after=<last id>`` misses nothing
the bus still holds. A client too slow to keep up is closed with code 1013 and
resumes the same way.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from engine.calls import CallManager
from engine.events import EventBus

router = APIRouter(prefix="/api/v1")

LAGGED = 1013  # "try again later"
UNKNOWN_CALL = 4404


async def _follow(ws: WebSocket, bus: EventBus, call_id: str | None, after: int) -> None:
    sub = bus.subscribe(call_id)
    try:
        last = after
        for event in bus.replay(call_id, after):
            await ws.send_text(event.model_dump_json())
            last = event.id
        async for event in sub:
            if event.id <= last:
                continue
            await ws.send_text(event.model_dump_json())
            last = event.id
        if sub.lagged:
            await ws.close(LAGGED, "subscriber lagged; reconnect with ?after=<last id>")
    finally:
        sub.close()


async def _serve(ws: WebSocket, call_id: str | None, after: int) -> None:
    await ws.accept()
    manager: CallManager = ws.app.state.calls
    if call_id is not None and call_id not in manager.calls:
        if await manager.store.get_call(call_id) is None:
            await ws.close(UNKNOWN_CALL, "unknown call")
            return
    sender = asyncio.create_task(_follow(ws, manager.bus, call_id, after))
    try:
        # Clients have nothing to say; reading only notices that they left.
        while not sender.done():
            receive = asyncio.create_task(ws.receive())
            done, _ = await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
            if receive in done:
                if receive.result()["type"] == "websocket.disconnect":
                    break
            else:
                receive.cancel()
    except WebSocketDisconnect:
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


@router.websocket("/calls/{call_id}/events")
async def call_events(ws: WebSocket, call_id: str, after: int = Query(0, ge=0)) -> None:
    await _serve(ws, call_id, after)


@router.websocket("/events")
async def all_events(ws: WebSocket, after: int = Query(0, ge=0)) -> None:
    await _serve(ws, None, after)
