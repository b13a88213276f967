"""How soon a WebRTC caller's audio reaches analysis: aiortc's receiver held each audio
packet until four more had come (80 ms on every word); the engine's legs hold one."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import av
import numpy as np
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from media.opus import OpusPackets
from media.webrtc import InlineAudioDecoder, WebRtcLeg

CHROMIUM = (Path(__file__).parent / "fixtures" / "chromium_offer.sdp").read_text()


async def _nothing(_reason: str) -> None:
    return None


def released_after(buffer: JitterBuffer) -> int:
    """Packets in before the first one comes out."""
    for seq in range(10):
        packet = RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960)
        packet._data = b"x"  # type: ignore[attr-defined]
        _, frame = buffer.add(packet)
        if frame is not None:
            return seq + 1
    return 10


async def test_a_callers_audio_waits_for_one_packet_not_four() -> None:
    leg = WebRtcLeg(on_ended=_nothing, ice_servers=[])
    try:
        await leg.answer(CHROMIUM)
        (audio,) = [t for t in leg.pc.getTransceivers() if t.kind == "audio"]
        buffer = audio.receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        assert released_after(buffer) == 2  # the packet, and the next one
    finally:
        await leg.close()
    assert released_after(JitterBuffer(capacity=16, prefetch=4)) == 5  # aiortc's own


async def test_a_callers_audio_is_decoded_on_the_loop_not_handed_over_by_a_thread() -> None:
    """aiortc decodes in a thread per receiver and hands every 20 ms frame back to the
    event loop (a task each, and a thread asking for the GIL): the engine's legs decode
    each packet as it comes, in order, and a packet the codec rejects is dropped."""
    leg = WebRtcLeg(on_ended=_nothing, ice_servers=[])
    try:
        await leg.answer(CHROMIUM)
        (audio,) = [t for t in leg.pc.getTransceivers() if t.kind == "audio"]
        decoder = audio.receiver._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]
        assert isinstance(decoder, InlineAudioDecoder)
    finally:
        await leg.close()

    queue: asyncio.Queue[av.AudioFrame | None] = asyncio.Queue()
    decoder = InlineAudioDecoder(queue)
    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)
    packets = OpusPackets(960)
    tone = (8000 * np.sin(np.arange(960 * 5) * 2 * np.pi * 440 / 48000)).astype(np.int16)
    for i in range(5):
        data = bytes(packets.packet(tone[i * 960 : (i + 1) * 960], i * 960))
        decoder.put((opus, JitterFrame(data, i * 960)))
        if i == 2:
            decoder.put((opus, JitterFrame(b"\xff" * 3, 0)))  # not Opus
    frames = [queue.get_nowait() for _ in range(queue.qsize())]
    assert [f.pts for f in frames if f is not None] == [0, 960, 1920, 2880, 3840]
    assert decoder.failed == 1
    # aiortc's own thread waits on it until the receiver stops, then ends the track
    waiter = threading.Thread(target=decoder.get)
    waiter.start()
    await asyncio.sleep(0.05)
    assert waiter.is_alive()
    decoder.put(None)
    waiter.join(1)
    assert not waiter.is_alive()
