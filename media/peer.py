"""What the engine needs from one party of a call, whatever carries it (WebRTC, SIP)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiortc import MediaStreamTrack

from media.bridge import VideoIn
from media.outbound import OutboundAudioTrack


class CallPeer(Protocol):
    # what this party hears: prompts, the other party, hold audio
    outbound: OutboundAudioTrack
    # this party's voice, once it arrives (48 kHz or the codec's rate, any frame size)
    audio_track: asyncio.Future[MediaStreamTrack]
    # this party's camera, if any
    video_in: VideoIn

    def show_video_of(self, other: CallPeer | None) -> None: ...

    async def send_dtmf(self, digits: str) -> str:
        """Send keys to this party; how: "rfc4733" events or "inband" tones."""
        ...

    async def close(self) -> None: ...
