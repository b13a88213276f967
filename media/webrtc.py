"""aiortc peer connections: answer an offer, pump the caller's audio into a pipeline.

A leg ends, with a reason, when the peer closes (DTLS close / BYE-equivalent),
when ICE fails (aioice consent freshness gives up), or when no audio has arrived
for ``media_timeout`` seconds: a browser sends Opus packets continuously, even
in silence, so a long gap means the caller is gone (tab killed, network lost).

Audio that does not reach analysis is counted as it is lost (media/loss.py): frames
missing from the stream (its timestamps jump), and frames skipped because more than
``MAX_BEHIND`` seconds of decoded audio were waiting to be read (a node that fell
behind catches up instead of analysing, and bridging, ever later audio).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.codecs import get_decoder
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from media import stun
from media.bridge import ForwardedVideoTrack, VideoIn
from media.dtmf import tones
from media.loss import FRAME_SECONDS, OnLost, frames_in
from media.outbound import OutboundAudioTrack
from media.peer import CallPeer
from media.sdp import OfferSummary, SdpError, parse_offer

log = logging.getLogger(__name__)
stun.guard_aioice()  # a malformed STUN packet at a call's ICE port is dropped quietly


class WebRtcLeg:
    """One browser/app peer. Owns its RTCPeerConnection."""

    def __init__(
        self,
        on_ended: Callable[[str], Awaitable[None]],
        *,
        ice_servers: Sequence[RTCIceServer],
    ) -> None:
        # always a list, never None: given None, aiortc asks stun.l.google.com on every
        # call (a lookup and a request nobody configured, which leaks call timing and
        # stalls gathering where there is no DNS); empty means host candidates only
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers)))
        self._on_ended = on_ended
        self._ended = False
        # what the caller hears: prompts now, the agent once bridged
        self.outbound = OutboundAudioTrack()
        self.audio_track: asyncio.Future[MediaStreamTrack] = (
            asyncio.get_running_loop().create_future()
        )
        # video is relayed, never analysed: see media/bridge.py
        self.video_in = VideoIn()
        self.video_out: ForwardedVideoTrack | None = None

        @self.pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and not self.audio_track.done():
                self.audio_track.set_result(track)
            elif track.kind == "video":
                self.video_in.arrived(track)

        @self.pc.on("connectionstatechange")
        async def _on_state() -> None:
            state = self.pc.connectionState
            if state == "failed":
                await self.end("ice_failed")
            elif state == "closed":
                await self.end("remote_closed")

    async def answer(self, sdp: str, video: bool = True) -> tuple[str, OfferSummary]:
        """Our SDP answer; with ``video`` False we send no video even if the peer takes it
        (an agent answering a caller who has no camera)."""
        summary = parse_offer(sdp)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            _tune_audio_receivers(self.pc)
            # added after the offer, so they ride the peer's own m-lines
            self.pc.addTrack(self.outbound)
            if video and any(m.direction in ("sendrecv", "recvonly") for m in summary.video):
                self.video_out = ForwardedVideoTrack()
                self.pc.addTrack(self.video_out)
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
            if sends_opus(self.pc.localDescription.sdp):
                self.outbound.send_opus()
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            # aiortc raises these for offers it cannot use; that is the peer's fault
            raise SdpError(f"offer rejected by the WebRTC stack: {exc}") from exc
        return self.pc.localDescription.sdp, summary

    async def send_dtmf(self, digits: str) -> str:
        # aiortc has no RTCDTMFSender: the keys go in-band, as tones in the audio
        self.outbound.play(tones(digits), 16000)
        return "inband"

    def show_video_of(self, other: CallPeer | None) -> None:
        """Send ``other``'s camera to this peer (None: black), if this peer takes video."""
        if self.video_out is not None:
            self.video_out.attach(other.video_in.subscribe() if other is not None else None)

    async def end(self, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            await self._on_ended(reason)
        finally:
            await self.close()

    async def close(self) -> None:
        # our own close is not the peer leaving: the "closed" state it causes must not
        # end the call (a failed agent leg would otherwise hang up on the caller)
        self._ended = True
        self.outbound.stop()
        if self.video_out is not None:
            self.video_out.stop()
        self.video_in.close()
        try:
            await asyncio.wait_for(self.pc.close(), 5)
        except TimeoutError:
            log.warning("peer connection close timed out")


# Frames the receiver holds back before decoding: aiortc's audio jitter buffer waits for
# four more packets (80 ms on every word a caller says) before it hands a packet on, which
# is for smoothing playback; analysis and the bridge need only order. One packet (20 ms).
AUDIO_PREFETCH = 1


class InlineAudioDecoder:
    """Stands in for an audio receiver's decoder queue, so its packets are decoded as
    they come, on the event loop, straight into the track's queue.

    aiortc hands each packet to a decoder thread per receiver, and the thread hands
    each 20 ms frame back with ``run_coroutine_threadsafe``: per call, 50 wake-ups of the
    loop a second, a task for each, and a thread asking for the GIL 100 times a second,
    which makes the loop give it up (the 5 ms switch interval) whatever it is doing.
    Decoding a 20 ms Opus packet costs tens of microseconds, less than the hand-over.

    aiortc still starts its thread with this as the input queue: ``get`` keeps it
    waiting until the receiver stops (``put(None)``), and then it ends the track as it
    always did, after every decoded frame. Packets the codec rejects are dropped and
    logged, as aiortc's own thread does."""

    def __init__(self, track_queue: asyncio.Queue[av.AudioFrame | None]) -> None:
        self._out = track_queue
        self._decoder: Decoder | None = None
        self._codec = ""
        self._stopped = threading.Event()
        self.failed = 0

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is None:
            self._stopped.set()
            return
        codec, encoded = item
        if self._decoder is None or codec.name != self._codec:
            self._decoder, self._codec = get_decoder(codec), codec.name
        try:
            frames = self._decoder.decode(encoded)
        except av.FFmpegError as exc:
            self.failed += 1
            if self.failed in (1, 10, 100) or self.failed % 1000 == 0:
                log.warning("%s packet %d failed to decode: %s", codec.name, self.failed, exc)
            return
        for frame in frames:
            self._out.put_nowait(frame)  # type: ignore[arg-type]

    def get(self) -> None:
        self._stopped.wait()


def _tune_audio_receivers(pc: RTCPeerConnection) -> None:
    """Before the receivers start (they start once DTLS is up), in each audio receiver:
    a jitter buffer of AUDIO_PREFETCH packets, and packets decoded on the loop (see
    InlineAudioDecoder). Both are aiortc's private attributes: where one is not there,
    aiortc's own stays."""
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "audio":
            continue
        receiver = transceiver.receiver
        name = "_RTCRtpReceiver__jitter_buffer"
        buffer = getattr(receiver, name, None)
        if isinstance(buffer, JitterBuffer):
            setattr(receiver, name, JitterBuffer(capacity=buffer.capacity, prefetch=AUDIO_PREFETCH))
        name = "_RTCRtpReceiver__decoder_queue"
        started = getattr(receiver, "_RTCRtpReceiver__started", True)
        track = getattr(receiver, "_track", None)
        if hasattr(receiver, name) and track and not started:
            setattr(receiver, name, InlineAudioDecoder(track._queue))


def sends_opus(answer: str) -> bool:
    """Whether the audio we send goes as Opus: aiortc sends the first codec of the
    answer's audio section."""
    for media in aiortc_sdp.SessionDescription.parse(answer).media:
        if media.kind == "audio" and media.rtp.codecs:
            return bool(media.rtp.codecs[0].mimeType.lower() == "audio/opus")
    return False


# Decoded audio waiting to be read beyond this many seconds is skipped (counted as
# "late", media/loss.py) down to CATCH_UP: analysis and the bridge stay near real time
# on a node that fell behind, and the waiting frames cannot grow memory without bound
# (aiortc's track queue has no bound of its own).
MAX_BEHIND = 2.0
CATCH_UP = 0.2
# A jump in timestamps over this many seconds is a new stream, not lost audio.
MAX_GAP = 10.0


def queued_frames(track: MediaStreamTrack) -> int:
    """Decoded frames waiting in ``track`` to be read: aiortc's remote tracks and our
    phone track (media/rtp.py) both keep them in an ``asyncio.Queue`` called ``_queue``
    (tests/test_lost_audio.py checks that aiortc still does)."""
    queue = getattr(track, "_queue", None)
    return queue.qsize() if isinstance(queue, asyncio.Queue) else 0


class StreamClock:
    """Finds audio missing from a track by the frames' timestamps (aiortc maps the RTP
    timestamps of a stream to ``pts`` from 0, wraps included): sans-IO, frames in,
    lost 20 ms frames out."""

    def __init__(self) -> None:
        self._next: int | None = None

    def lost(self, pts: int | None, seconds: float, time_base: fractions.Fraction | None) -> int:
        if pts is None or not time_base:
            return 0
        lost = 0
        if self._next is not None:
            gap = float((pts - self._next) * time_base)
            if FRAME_SECONDS / 2 < gap <= MAX_GAP:
                lost = frames_in(gap)
        self._next = pts + round(seconds / time_base)
        return lost


async def pump_audio(
    track: MediaStreamTrack,
    push: Callable[..., int],
    media_timeout: float,
    *,
    on_first: Callable[[], Awaitable[None]] | None = None,
    on_lost: OnLost | None = None,
) -> str:
    """Read decoded frames until the track ends; return why it ended. ``on_first`` is
    awaited before the first frame is pushed (a leg's analysis starts with its audio);
    ``on_lost`` hears of audio that is missing or skipped (media/loss.py)."""
    received = False
    clock = StreamClock()
    skip = 0
    while True:
        try:
            # a timeout scope, not wait_for: wait_for wraps every frame's recv() in a
            # task of its own, 50 a second a call, on the event loop
            async with asyncio.timeout(media_timeout):
                frame = await track.recv()
        except TimeoutError:
            # never a packet: ICE/DTLS never completed, or the peer sends nothing
            return "media_timeout" if received else "no_media"
        except MediaStreamError:
            return "remote_closed"
        if not isinstance(frame, av.AudioFrame) or not frame.samples or not frame.sample_rate:
            continue
        if not received:
            received = True
            if on_first is not None:
                await on_first()
        seconds = frame.samples / frame.sample_rate
        if (gap := clock.lost(frame.pts, seconds, frame.time_base)) and on_lost is not None:
            on_lost("gap", gap)
        if skip:
            skip -= 1
            if on_lost is not None:
                on_lost("late", frames_in(seconds))
            continue
        if (waiting := queued_frames(track)) * seconds > MAX_BEHIND:
            skip = waiting - round(CATCH_UP / seconds)
        pcm = frame.to_ndarray()
        channels = len(frame.layout.channels)
        if frame.format.is_planar and channels > 1:
            pcm = pcm.T.reshape(-1)
        push(pcm, frame.sample_rate, channels)
