"""What a WebRTC peer is sent: the outbound track hands aiortc ready Opus packets (voice
encoded on the event loop, silence as one cached packet), each with its frame's
timestamp, instead of frames that aiortc encoded in a thread each (media/opus.py)."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np

from media.opus import OpusPackets
from media.outbound import OutboundAudioTrack
from media.wavtrack import FRAME, SEND_RATE
from media.webrtc import WebRtcLeg

CHROMIUM = (Path(__file__).parent / "fixtures" / "chromium_offer.sdp").read_text()


def decode(packets: list[av.Packet]) -> np.ndarray:
    decoder = av.CodecContext.create("opus", "r")
    assert isinstance(decoder, av.AudioCodecContext)
    out = []
    for packet in packets:
        for frame in decoder.decode(packet):
            pcm = frame.to_ndarray()  # float, planar: a row per channel
            out.append(pcm[0] if frame.format.is_planar else pcm.reshape(-1, 2)[:, 0])
    return np.concatenate(out) * 32768


async def test_the_peer_is_sent_opus_packets_with_their_frames_timestamps() -> None:
    track = OutboundAudioTrack()
    track.send_opus()
    tone = (np.sin(2 * np.pi * 440 * np.arange(FRAME * 10) / SEND_RATE) * 8000).astype(np.int16)
    track.play(tone, SEND_RATE)
    sent = [await track.recv() for _ in range(20)]
    track.stop()
    assert all(isinstance(p, av.Packet) for p in sent)
    assert [p.pts for p in sent] == [i * FRAME for i in range(20)]
    silence = {bytes(p) for p in sent[10:]}  # type: ignore[arg-type]
    assert len(silence) == 1 and len(silence.pop()) < 60
    pcm = decode(sent)  # type: ignore[arg-type]
    voiced, quiet = pcm[FRAME * 2 : FRAME * 9], pcm[FRAME * 13 :]
    spectrum = np.abs(np.fft.rfft(voiced))
    assert abs(np.argmax(spectrum) * SEND_RATE / len(voiced) - 440) < 10
    assert np.sqrt(np.mean(voiced**2)) > 3000 and np.abs(quiet).max() < 50


def test_silence_costs_no_encoding() -> None:
    opus = OpusPackets(FRAME)
    for i in range(50):
        opus.packet(np.zeros(FRAME, np.int16), i * FRAME)
    assert opus.silent_packets == 50


async def test_packets_only_for_a_peer_that_takes_opus() -> None:
    """aiortc sends a packet it is handed as it is, whatever codec was agreed: a peer
    that agreed on G.711 must still be sent frames, which aiortc encodes."""
    chromium = WebRtcLeg(on_ended=_nothing, ice_servers=[])
    await chromium.answer(CHROMIUM)
    assert isinstance(await chromium.outbound.recv(), av.Packet)
    await chromium.close()

    audio = CHROMIUM.split("m=audio")[1].split("m=")[0]
    g711_only = audio.replace(re.search(r" UDP/TLS/RTP/SAVPF [0-9 ]+", audio)[0],  # type: ignore[index]
                              " UDP/TLS/RTP/SAVPF 0")  # fmt: skip
    g711_only = "".join(
        line for line in g711_only.splitlines(keepends=True)
        if not re.match(r"a=(rtpmap|fmtp|rtcp-fb):(?!0 )", line)
    )  # fmt: skip
    peer = WebRtcLeg(on_ended=_nothing, ice_servers=[])
    await peer.answer(CHROMIUM.replace(audio, g711_only))
    assert "PCMU/8000" in peer.pc.localDescription.sdp
    assert isinstance(await peer.outbound.recv(), av.AudioFrame)
    await peer.close()


async def _nothing(_reason: str) -> None:
    return None
