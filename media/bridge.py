"""Video between the parties of a call: each side's camera to the other, when both send.

Theory of operation
-------------------
Audio is bridged frame by frame by the call manager (it also feeds the analysis
pipeline); video is only relayed. A leg that offered video gets, in our answer, a
``ForwardedVideoTrack``: it sends what its ``source`` gives, and while there is no
source (no agent yet, on hold, the other side has no camera) a black frame once a
second, which keeps the stream alive for almost no CPU.

Every incoming video track is read at once through an unbuffered ``MediaRelay``
subscription that drops frames (``sink``): aiortc queues decoded frames without
bound until someone reads them, so an unread camera would grow memory for the
whole call. The other side's forwarded track is a second, equally unbuffered
subscription, so a slow encoder drops frames instead of building a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time

import av
from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError

VIDEO_CLOCK = 90_000
IDLE_FPS = 1.0
IDLE_SIZE = (320, 240)


class ForwardedVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.source: MediaStreamTrack | None = None
        self._changed = asyncio.Event()
        self._start = time.monotonic()
        self.frames_forwarded = 0

    def attach(self, source: MediaStreamTrack | None) -> None:
        old, self.source = self.source, source
        if old is not None and old is not source:
            old.stop()
        self._changed.set()  # a recv waiting on the old source or idling moves on now

    async def recv(self) -> av.VideoFrame:
        while self.readyState == "live":
            self._changed.clear()
            source = self.source
            if source is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 1 / IDLE_FPS)
                    continue  # a source arrived: no black frame in between
                return self._stamp(self._black())
            frame = await self._next_from(source)
            if frame is not None:
                self.frames_forwarded += 1
                return self._stamp(frame)
        raise MediaStreamError

    async def _next_from(self, source: MediaStreamTrack) -> av.VideoFrame | None:
        """The source's next frame; None if the source ended or was replaced first (a
        relay proxy that is stopped never wakes its reader, so we do not wait on it alone)."""
        get = asyncio.ensure_future(source.recv())
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({get, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
        if not get.done():
            get.cancel()
            return None
        try:
            frame = get.result()
        except MediaStreamError:
            if self.source is source:
                self.source = None
            return None
        return frame if isinstance(frame, av.VideoFrame) else None

    @staticmethod
    def _black() -> av.VideoFrame:
        black = av.VideoFrame(*IDLE_SIZE, "yuv420p")
        for plane, value in zip(black.planes, (16, 128, 128), strict=True):
            plane.update(bytes([value]) * plane.buffer_size)
        return black

    def _stamp(self, frame: av.VideoFrame) -> av.VideoFrame:
        # our own clock: a new source must not make the timestamps jump back
        frame.pts = self._pts()
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame

    def _pts(self) -> int:
        return int((time.monotonic() - self._start) * VIDEO_CLOCK)

    def stop(self) -> None:
        self.attach(None)
        super().stop()


class VideoIn:
    """A leg's incoming camera: drained from the moment it arrives, shareable."""

    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        self._sink: asyncio.Task[None] | None = None

    def arrived(self, track: MediaStreamTrack) -> None:
        if self.track.done():
            return
        self.track.set_result(track)
        self._sink = asyncio.create_task(self._drain(self.relay.subscribe(track, buffered=False)))

    @staticmethod
    async def _drain(proxy: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await proxy.recv()

    def subscribe(self) -> MediaStreamTrack | None:
        """A new unbuffered view of the camera, or None if there is none (yet)."""
        if not self.track.done():
            return None
        return self.relay.subscribe(self.track.result(), buffered=False)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.cancel()
        if not self.track.done():
            self.track.cancel()
