"""A phone caller as a :class:`~media.peer.CallPeer`: its RTP session and its dialog."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aiortc import MediaStreamTrack

from media.bridge import VideoIn
from media.dtmf import tones
from media.outbound import OutboundAudioTrack
from media.peer import CallPeer
from media.rtp import RtpSession


class SipPeer:
    def __init__(self, rtp: RtpSession, hangup: Callable[[], None]) -> None:
        self.rtp = rtp
        self.outbound = OutboundAudioTrack()
        self.audio_track: asyncio.Future[MediaStreamTrack] = (
            asyncio.get_running_loop().create_future()
        )
        self.audio_track.set_result(rtp.track)
        self.video_in = VideoIn()  # phones send no video here: the agent sees black
        self._hangup = hangup
        self.remote_ended = False
        self._closed = False
        self._sender = asyncio.create_task(rtp.send_from(self.outbound), name="rtp-send")

    def show_video_of(self, other: CallPeer | None) -> None:
        return None  # audio only: SIP video is declined in the SDP answer

    async def send_dtmf(self, digits: str) -> str:
        if await self.rtp.send_digits(digits):
            return "rfc4733"
        self.outbound.play(tones(digits), 16000)
        return "inband"

    async def close(self) -> None:
        """Our end of the call: a BYE unless the caller already hung up."""
        if self._closed:
            return
        self._closed = True
        if not self.remote_ended:
            self._hangup()
        self.outbound.stop()
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender
        self.rtp.close()
        self.video_in.close()
