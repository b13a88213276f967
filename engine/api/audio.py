"""The audio fork: a live call's audio over a WebSocket, and audio injected back.

``ws://…/api/v1/calls/{id}/audio`` (control scope; an agent only on a call on their own
line, as for ``/play`` and ``/recording``). The first message is JSON::

    {"type": "start", "call_id": "…", "encoding": "pcm_s16le", "sample_rate": 16000,
     "frame_ms": 20, "channels": {"0": "caller", "1": "agent"}}

then binary messages, one 20 ms frame each: a channel byte (0 caller, 1 agent) and 640
bytes of 16 kHz mono little-endian PCM, as the recognizer hears it; a muted or held
agent sends none. When the call ends, after the last frame::

    {"type": "stop", "reason": "call ended", "frames": {"caller": n, "agent": m},
     "dropped": k}

and the socket closes with 1000. A consumer more than ``QUEUE_FRAMES`` frames behind
loses the oldest (counted in ``dropped``) rather than holding the call's memory.

Binary messages sent to the engine (up to 64 KiB each: send a second at a time) are
16 kHz mono s16le PCM played to the caller, queued after what is already playing, up
to the outbound queue's limit; over it: ``{"type": "error", …}``. Text is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from engine.api.auth import Principal
from engine.api.schemas import PathId
from engine.api.streams import UNKNOWN_CALL, WS_REFUSED, authorize_ws, close_when_refused
from engine.calls import CallManager
from media.audio import ANALYSIS_RATE, FRAME_MS, PcmFrame

router = APIRouter(prefix="/api/v1", tags=["audio"])
CHANNELS = {"caller": 0, "agent": 1}
QUEUE_FRAMES = 500  # 10 s


def may_fork(p: Principal) -> None:
    p.need("control")


@router.websocket("/calls/{call_id}/audio")
async def audio_fork(ws: WebSocket, call_id: PathId) -> None:
    await ws.accept()
    p = await authorize_ws(ws, may_fork)
    if p is None:
        return
    manager: CallManager = ws.app.state.calls
    call = manager.live(call_id)
    if call is None:
        await ws.close(UNKNOWN_CALL, "no live call")
        return
    # the fork hears and speaks on the call: the rule of Controls.on_line (play,
    # recording), where an agent acts only on their own call
    who = p.identity

    def on_line() -> bool:
        return who is None or who.role != "agent" or call.agent_id == who.user_id

    if not on_line():
        await ws.close(WS_REFUSED[403], "this call is not on your line")
        return
    frames: asyncio.Queue[bytes] = asyncio.Queue()
    counts = dict.fromkeys(CHANNELS, 0)
    dropped = 0

    left = False

    def fork(role: str, frame: PcmFrame) -> None:
        nonlocal dropped, left
        if left:
            return
        if not on_line():  # transferred away: not one more frame; b"" tells send()
            left = True
            frames.put_nowait(b"")
            return
        if frames.qsize() >= QUEUE_FRAMES:
            frames.get_nowait()
            dropped += 1
        frames.put_nowait(bytes([CHANNELS.get(role, 1)]) + frame.to_bytes())
        counts[role] = counts.get(role, 0) + 1

    call.forks.append(fork)
    start: dict[str, Any] = {
        "type": "start", "call_id": call_id, "encoding": "pcm_s16le",
        "sample_rate": ANALYSIS_RATE, "frame_ms": FRAME_MS,
        "channels": {str(v): k for k, v in CHANNELS.items()},
    }  # fmt: skip

    async def send() -> None:
        await ws.send_json(start)
        while not (call.ended.is_set() and frames.empty()):
            getter = asyncio.ensure_future(frames.get())
            ended = asyncio.ensure_future(call.ended.wait())
            done, _ = await asyncio.wait({getter, ended}, return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            if getter in done:
                if not getter.result():
                    await ws.close(WS_REFUSED[403], "the call left your line")
                    return
                await ws.send_bytes(getter.result())
            else:
                getter.cancel()
        await ws.send_json(
            {"type": "stop", "reason": "call ended", "frames": counts, "dropped": dropped}
        )
        await ws.close(1000)

    async def receive() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if not data:
                continue
            error = _inject(call.caller_leg().peer, data) if on_line() else "not on your line"
            if error:
                await ws.send_json({"type": "error", "message": error})

    sender = asyncio.create_task(send())
    receiver = asyncio.create_task(receive())
    guard = asyncio.create_task(close_when_refused(ws, may_fork))
    try:
        await asyncio.wait({sender, receiver, guard}, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        with contextlib.suppress(ValueError):
            call.forks.remove(fork)
        for task in (sender, receiver, guard):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _inject(peer: Any, data: bytes) -> str | None:
    """Queue PCM for the caller to hear; what went wrong, if anything."""
    if len(data) % 2:
        return "injected audio must be 16-bit samples (an even number of bytes)"
    if peer is None:
        return "the caller has no audio path yet"
    done = peer.outbound.play(np.frombuffer(data, dtype="<i2"), ANALYSIS_RATE)
    if done.done() and done.exception() is not None:
        return str(done.exception())
    return None
