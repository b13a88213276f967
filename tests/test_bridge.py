"""The forwarded video track on its own: sources come and go without stalling it."""

from __future__ import annotations

import asyncio

import av
import numpy as np
from aiortc import VideoStreamTrack
from aiortc.contrib.media import MediaRelay

from media.bridge import ForwardedVideoTrack


class Grey(VideoStreamTrack):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), self.level, np.uint8), "rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


def level(frame: av.VideoFrame) -> float:
    return float(frame.to_ndarray(format="rgb24").mean())


async def test_sources_come_and_go_and_timestamps_only_move_forward() -> None:
    out = ForwardedVideoTrack()
    idle = await asyncio.wait_for(out.recv(), 2)
    assert level(idle) < 20  # nobody to show: black
    relay, camera = MediaRelay(), Grey(200)
    out.attach(relay.subscribe(camera, buffered=False))
    shown = [await asyncio.wait_for(out.recv(), 2) for _ in range(5)]
    assert all(abs(level(f) - 200) < 5 for f in shown) and out.frames_forwarded == 5
    # detach while a recv waits on the relay: it must come back (black), not hang
    pending = asyncio.ensure_future(out.recv())
    await asyncio.sleep(0)
    out.attach(None)
    after = await asyncio.wait_for(pending, 2.5)
    if level(after) > 20:  # the camera's frame won the race; the next one is black
        after = await asyncio.wait_for(out.recv(), 2.5)
    assert level(after) < 20
    pts = [f.pts for f in [idle, *shown, after]]
    assert pts == sorted(pts)
    out.stop()
    camera.stop()
