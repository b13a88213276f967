"""Plain RTP for phone calls: G.711 in and out, RFC 4733 DTMF, symmetric RTP.

Packet parsing, the reordering jitter buffer, loss concealment and the G.711
codecs come from aiortp; what is ours is the glue to the rest of the engine:

* :class:`RtpInboundTrack` turns the caller's packets into 48 kHz audio frames,
  the same shape a WebRTC caller's Opus track gives, so phone callers go through
  exactly the same analysis pipeline and bridge (resampled with soxr's streaming
  resampler, so packet boundaries leave no clicks);
* :meth:`RtpSession.send_from` paces our side (prompts, the agent, hold audio)
  from an :class:`~media.outbound.OutboundAudioTrack` into 8 kHz G.711 packets;
* :class:`DtmfDetector` reports each key press once.

Symmetric RTP (RFC 4961): we send to where the caller's packets come from once
they arrive, which is what works behind NAT; packets from any other address are
ignored, so nobody can inject audio into a call by guessing its port.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np
import soxr
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from aiortp import JitterBuffer, PcmConcealer, RtpPacket, is_rtcp
from aiortp.codecs import get_codec
from aiortp.dtmf import EVENT_TO_DIGIT

from media.sip.sdp import AudioOffer
from media.wavtrack import SEND_RATE, PacedAudioTrack

log = logging.getLogger(__name__)

RTP_CLOCK = 8000  # G.711 and, by RFC 3551's quirk, G.722 (whose audio is 16 kHz)
MAX_QUEUED_CHUNKS = 500  # 10 s of caller audio waiting for the pipeline
HOLD_SILENCE = 0.1  # while the caller holds us: a silent frame every 100 ms keeps time
SSRC_HOLD = 0.5  # a new SSRC replaces the current one only after this much silence


class DtmfDetector:
    """RFC 4733 telephone-events -> digits, each key press reported once.

    All packets of one event share an RTP timestamp, so an event is known by
    (timestamp, event code), not by the marker bit (which senders omit, or which
    is lost with the first packet). It is reported at its first end packet; the
    repeated end packets (§2.5.1.4 sends three) and late copies are ignored. If
    every end packet is lost, the event is reported when the next one starts or
    audio resumes.
    """

    def __init__(self) -> None:
        self._current: tuple[int, int] | None = None
        self._reported: collections.deque[tuple[int, int]] = collections.deque(maxlen=16)

    def packet(self, timestamp: int, payload: bytes) -> list[str]:
        if len(payload) < 4:
            return []
        event, flags = payload[0], payload[1]
        digit = EVENT_TO_DIGIT.get(event)
        if digit is None:
            return []  # flash-hook and tones: not a key
        key = (timestamp, event)
        out: list[str] = []
        if key != self._current:
            out += self.flush()
            self._current = key
        if flags & 0x80 and key not in self._reported:
            self._reported.append(key)
            out.append(digit)
        return out

    def flush(self) -> list[str]:
        """The current event is over (audio came back): report it if its end was lost."""
        key, self._current = self._current, None
        if key is None or key in self._reported:
            return []
        self._reported.append(key)
        return [EVENT_TO_DIGIT[key[1]]]


class RtpInboundTrack(MediaStreamTrack):
    """The caller's voice as 48 kHz mono frames for the pipeline and the bridge."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        self._pts = 0
        self.held = False  # the caller holds us: no packets is no reason to hang up
        self.dropped = 0

    def put(self, pcm48: np.ndarray) -> None:
        if self._queue.qsize() >= MAX_QUEUED_CHUNKS:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(pcm48)

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        while True:
            try:
                pcm = await asyncio.wait_for(self._queue.get(), HOLD_SILENCE)
                break
            except TimeoutError:
                if self.held:
                    pcm = np.zeros(int(SEND_RATE * HOLD_SILENCE), dtype=np.int16)
                    break
        if pcm is None:
            self.stop()
            raise MediaStreamError
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SEND_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, SEND_RATE)
        self._pts += len(pcm)
        return frame


@dataclass
class RtpStats:
    packets_in: int = 0
    packets_out: int = 0
    concealed: int = 0  # 20 ms frames filled in for lost packets
    ignored: int = 0  # bad packets, other payload types, other sources
    dtmf: int = 0


class RtpSession(asyncio.DatagramProtocol):
    def __init__(self, offer: AudioOffer, on_dtmf: Callable[[str], None]) -> None:
        self.offer = offer
        self.on_dtmf = on_dtmf
        self.track = RtpInboundTrack()
        self.stats = RtpStats()
        self._transport: asyncio.DatagramTransport | None = None
        self.remote: tuple[str, int] | None = (offer.address, offer.port)
        self._latched = False
        self._jitter = JitterBuffer(capacity=16, prefetch=2, skip_audio_gaps=True)
        self._set_codec(offer.payload_type)
        self._ssrc_in: int | None = None
        self._heard_at = 0.0
        self._dtmf = DtmfDetector()
        self._ssrc = secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._first = True
        self.port = 0

    async def open(self, host: str) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, 0))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self.port

    def _set_codec(self, payload_type: int) -> None:
        self._codec = get_codec(payload_type)
        rate = self._codec.sample_rate
        self._plc = PcmConcealer(sample_rate=rate)
        self._up = soxr.ResampleStream(rate, SEND_RATE, 1, dtype="int16")
        self._down = soxr.ResampleStream(SEND_RATE, rate, 1, dtype="int16")

    def update(self, offer: AudioOffer) -> None:
        """A re-INVITE: hold, resume, or a new address."""
        if (offer.address, offer.port) != (self.offer.address, self.offer.port):
            self.remote, self._latched = (offer.address, offer.port), False
        if offer.payload_type != self.offer.payload_type:
            self._set_codec(offer.payload_type)  # the answer to our offer chose
            self._jitter.reset()
        self.offer = offer
        # a caller that holds us, or only listens, may send nothing for minutes
        self.track.held = offer.on_hold or offer.direction != "sendrecv"

    # -- receiving ---------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self._receive(data, addr)
        except Exception:
            # never let one odd packet close the call's socket
            self.stats.ignored += 1
            log.exception("RTP packet from %s:%s could not be handled", *addr[:2])

    def _receive(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._latched and addr != self.remote:
            self.stats.ignored += 1
            return
        if len(data) < 12 or is_rtcp(data):
            return
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            self.stats.ignored += 1
            return
        if packet.ssrc == self._ssrc:
            self.stats.ignored += 1  # our own stream come back: a loop (RFC 3550 §8.2)
            return
        now = time.monotonic()
        if packet.ssrc != self._ssrc_in:
            if self._ssrc_in is not None and now - self._heard_at < SSRC_HOLD:
                self.stats.ignored += 1  # a second stream while the first still plays
                return
            self._ssrc_in = packet.ssrc  # a new source (the far end re-routed the call)
            self._jitter.reset()
        if not self._latched:
            self.remote, self._latched = addr, True
        self._heard_at = now
        self.stats.packets_in += 1
        if packet.payload_type == self.offer.dtmf_payload_type:
            self._jitter.mark_non_media(packet.sequence_number)
            self._digits(self._dtmf.packet(packet.timestamp, packet.payload))
            return
        if packet.payload_type != self.offer.payload_type:
            self.stats.ignored += 1  # comfort noise, a codec we did not agree on
            self._jitter.mark_non_media(packet.sequence_number)
            return
        self._digits(self._dtmf.flush())
        _, frame = self._jitter.add(packet)
        if frame is None:
            return
        pcm = self._codec.decode(frame.data)
        if frame.lost and self._plc.frame_samples:
            self.stats.concealed += frame.lost
            self._deliver(self._plc.conceal(frame.lost * self._plc.frame_samples))
        self._plc.update(pcm)
        self._deliver(pcm)

    def _deliver(self, pcm: bytes) -> None:
        up = self._up.resample_chunk(np.frombuffer(pcm, dtype="<i2"))
        if len(up):
            self.track.put(up)

    def _digits(self, digits: list[str]) -> None:
        for d in digits:
            self.stats.dtmf += 1
            self.on_dtmf(d)

    def error_received(self, exc: Exception) -> None:
        log.debug("RTP socket error: %s", exc)  # ICMP unreachable: the far end is gone

    # -- sending -----------------------------------------------------------------------

    async def send_from(self, source: PacedAudioTrack) -> None:
        """Our audio to the caller, paced by ``source``, until it or we stop."""
        per_packet = self._codec.sample_rate * self.offer.ptime // 1000
        pending = np.zeros(0, dtype=np.int16)
        while self._transport is not None:
            try:
                frame = await source.recv()
            except MediaStreamError:
                return
            pcm = frame.to_ndarray().reshape(-1).astype(np.int16)
            pending = np.concatenate([pending, self._down.resample_chunk(pcm)])
            while len(pending) >= per_packet:
                chunk, pending = pending[:per_packet], pending[per_packet:]
                self._send(chunk)

    def _send(self, pcm: np.ndarray) -> None:
        self._ts = (self._ts + RTP_CLOCK * self.offer.ptime // 1000) & 0xFFFFFFFF
        if self._transport is None or self.remote is None or not self.remote[1]:
            return
        if self.offer.on_hold:
            return  # the caller put us on hold: RFC 3264 §8.4 says send nothing
        packet = RtpPacket(
            payload_type=self.offer.payload_type,
            marker=1 if self._first else 0,
            sequence_number=self._seq,
            timestamp=self._ts,
            ssrc=self._ssrc,
            payload=self._codec.encode(pcm.astype("<i2").tobytes()),
        )
        self._first = False
        self._seq = (self._seq + 1) & 0xFFFF
        self._transport.sendto(packet.serialize(), self.remote)
        self.stats.packets_out += 1

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.track.end()
