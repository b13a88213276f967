"""Opus packets for the audio we send a WebRTC peer, encoded on the event loop.

aiortc encodes each 20 ms frame a track gives it in a thread (``run_in_executor``),
after resampling it to stereo, at 96 kbit/s: per frame, per call, a hop to a thread and
back, which py-spy showed to be about a third of the event loop's time with WebRTC
calls up, most of it for the silence a caller hears while speaking. A track may
instead hand aiortc ready packets, which it only wraps in RTP. This encodes voice here
(mono, 32 kbit/s, ``voip``: what a speech line needs; ~60 µs a frame) and
sends one cached packet for each frame of digital silence, with the frame's own
timestamp, so the peer's jitter buffer sees an unbroken stream.
"""

from __future__ import annotations

import fractions

import av
import numpy as np

RATE = 48000
TIME_BASE = fractions.Fraction(1, RATE)
BITRATE = 32000


def _encoder() -> av.AudioCodecContext:
    codec = av.CodecContext.create("libopus", "w")
    assert isinstance(codec, av.AudioCodecContext)
    codec.bit_rate = BITRATE
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = RATE
    codec.time_base = TIME_BASE
    codec.options = {"application": "voip"}
    return codec


def _frame(samples: np.ndarray, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = RATE
    frame.pts = pts
    frame.time_base = TIME_BASE
    return frame


def _silence(frame_samples: int) -> bytes:
    """The packet libopus settles on for frames of zeros (a few bytes, once it has seen
    some: its first is larger)."""
    codec = _encoder()
    zeros = np.zeros(frame_samples, np.int16)
    packets = [p for i in range(10) for p in codec.encode(_frame(zeros, i * frame_samples))]
    return bytes(packets[-1])


class OpusPackets:
    """One encoder per outgoing stream: Opus keeps state between frames."""

    def __init__(self, frame_samples: int) -> None:
        self._codec = _encoder()
        self._silence = _silence(frame_samples)
        self.silent_packets = 0  # frames sent as the cached silence

    def packet(self, samples: np.ndarray, pts: int) -> av.Packet:
        """The packet for one frame of 48 kHz mono ``samples`` starting at ``pts``."""
        data = None
        if samples.any():
            encoded = self._codec.encode(_frame(samples, pts))
            if encoded:  # libopus gives one packet a frame; a first may be held back
                data = bytes(encoded[0])
        if data is None:
            data = self._silence
            self.silent_packets += 1
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = TIME_BASE
        return packet
