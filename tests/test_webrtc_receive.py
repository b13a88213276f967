"""How soon a WebRTC caller's audio reaches analysis: aiortc's receiver held each audio
packet until four more had come (80 ms on every word); the engine's legs hold one."""

from __future__ import annotations

from pathlib import Path

from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from media.webrtc import WebRtcLeg

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
