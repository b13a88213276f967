"""Plain RTP for phone calls: G.711/G.722 in and out, RFC 4733 DTMF, symmetric RTP.

Packet parsing, loss concealment and the codecs come from aiortp; what is ours:

* :class:`ReorderBuffer`: aiortp's jitter buffer either treats a packet that is one
  place late as lost (with gap skipping) or stalls every loss until its ring fills
  (without); ours waits for a missing packet only while three later ones arrive;
* :class:`RtpInboundTrack` turns the caller's packets into 48 kHz audio frames,
  the same shape a WebRTC caller's Opus track gives, so phone callers go through
  exactly the same analysis pipeline and bridge (resampled by a streaming filter
  that keeps its state across packets, so their boundaries leave no clicks, and
  gives each packet's audio at once: media/audio.py);
* :meth:`RtpSession.send_from` paces our side (prompts, the agent, hold audio)
  from an :class:`~media.outbound.OutboundAudioTrack` into RTP packets;
* :class:`DtmfDetector` reports each key press once;
* :class:`SourceLatch` decides whose packets a call takes and where ours go.

Symmetric RTP (RFC 4961): we send to where the caller's packets come from once
they arrive, which is what works behind NAT. But only from the hosts the call
signalled: latching to whoever sent first let a stranger who guessed the port a
second early take the call over (hear us, and be transcribed as the caller).
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import ipaddress
import logging
import secrets
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from aiortp import PcmConcealer, RtpPacket, is_rtcp
from aiortp.codecs import get_codec
from aiortp.dtmf import DTMF_EVENTS, EVENT_TO_DIGIT

from media.audio import Decimator, Interpolator
from media.loss import OnLost, frames_in
from media.sip.sdp import AudioOffer
from media.wavtrack import SEND_RATE, PacedAudioTrack

log = logging.getLogger(__name__)

RTP_CLOCK = 8000  # G.711 and, by RFC 3551's quirk, G.722 (whose audio is 16 kHz)
MAX_QUEUED_CHUNKS = 500  # 10 s of caller audio waiting for the pipeline
HOLD_SILENCE = 0.1  # while the caller holds us: a silent frame every 100 ms keeps time
SSRC_HOLD = 0.5  # a new SSRC replaces the current one only after this much silence
RELATCH_PACKETS = 10  # 200 ms of one in-sequence stream from a new address of an allowed host
RELATCH_QUIET = 0.5  # ... and only once the latched address has been silent this long

Refusal = Literal["foreign", "stray"]


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


class ReorderBuffer:
    """Puts RTP packets back in sequence order, and declares a packet lost only after
    ``depth`` later ones have arrived (``depth`` x 20 ms of waiting, and only when one is
    missing: in-order packets go straight through).

    ``push`` returns what can go out now, in order, each with how many packets were
    lost just before it. Items are opaque (None for a slot taken by a non-audio packet,
    such as a telephone-event, so it is not mistaken for loss). Late and duplicate
    packets are dropped; a jump of more than ``MAX_JUMP`` starts over (a new stream).
    """

    MAX_JUMP = 1000

    def __init__(self, depth: int = 3) -> None:
        self.depth = depth
        self._next: int | None = None
        self._held: dict[int, object] = {}
        self.late = 0

    def reset(self) -> None:
        self._next = None
        self._held.clear()

    def push(self, seq: int, item: object) -> list[tuple[int, object]]:
        if self._next is None:
            self._next = seq
        ahead = (seq - self._next) & 0xFFFF
        if ahead >= 0x8000 or seq in self._held:
            self.late += 1  # already played out (or given up on), or a copy
            return []
        if ahead > self.MAX_JUMP:
            self.reset()
            self._next = seq
        self._held[seq] = item
        out: list[tuple[int, object]] = []
        lost = 0
        while self._held:
            if self._next in self._held:
                out.append((lost, self._held.pop(self._next)))
                lost = 0
            elif len(self._held) > self.depth:
                lost += 1  # waited for ``depth`` packets: it is not coming
            else:
                break
            self._next = (self._next + 1) & 0xFFFF
        return out


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None  # a name in the SDP: we never resolve it, so it matches nothing
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return ip


class SourceLatch:
    """Whose RTP a call takes, and where ours goes: symmetric RTP a stranger cannot win.

    Theory of operation. A packet counts only if it comes from an *allowed* host: the
    address the SDP signalled, the host the SIP signalling came from (a phone behind NAT
    signals its private address but sends from the public one its INVITE came from),
    and networks the operator trusts (``sources``). Any other host is *foreign*: refused
    before the packet is even parsed, however early it comes. Among allowed hosts the
    first packet latches (the port a NAT picked is not known in advance); after that,
    another address is a *stray* and is refused, unless it proves itself a sustained
    stream while the latched one has gone quiet (a NAT rebinding, a re-routed call)::

        state      event                                              -> state
        SIGNALLED  packet from a foreign host                         -> SIGNALLED, refused
        SIGNALLED  packet from an allowed host                        -> LATCHED to it
        LATCHED    packet from the latched address                    -> LATCHED
        LATCHED    packet from a foreign host                         -> LATCHED, refused
        LATCHED    packet from another allowed address                -> LATCHED, refused
        LATCHED    its RELATCH_PACKETS-th in sequence, the latched    -> LATCHED to it
                   address silent for RELATCH_QUIET
        any        a new signalled address (re-INVITE)                -> SIGNALLED

    The same model as rtpengine's strict-source with its media hand-over, and Asterisk's
    strictrtp learning from a run of sequential packets, with the learning limited to
    the hosts signalling vouches for. Sans-IO: times are passed in.
    """

    def __init__(self, signalled: tuple[str, int], sources: Iterable[str] = ()) -> None:
        self._trusted = [ipaddress.ip_network(s, strict=False) for s in sources]
        self.resignal(signalled)

    def resignal(self, signalled: tuple[str, int]) -> None:
        """A (new) address from the SDP: send there until its stream arrives."""
        self.signalled = signalled
        ip = _ip(signalled[0])
        self._allowed = self._trusted + ([ipaddress.ip_network(ip)] if ip else [])
        self.remote: tuple[str, int] = signalled
        self.latched = False
        self._heard_at = float("-inf")
        self._candidate: tuple[str, int] | None = None
        self._run = 0
        self._next_seq = 0

    def allowed(self, addr: tuple[str, int]) -> bool:
        ip = _ip(addr[0])
        return ip is not None and any(ip in net for net in self._allowed)

    def admit(self, addr: tuple[str, int], seq: int, now: float) -> bool:
        """A parsed packet of ours from an allowed host: take it (perhaps latching or
        re-latching to ``addr``), or refuse it as a stray."""
        addr = (addr[0], addr[1])
        if not self.latched or addr == self.remote:
            self.remote, self.latched, self._heard_at = addr, True, now
            self._candidate = None
            return True
        if addr == self._candidate and seq == self._next_seq:
            self._run += 1
        else:
            self._candidate, self._run = addr, 1
        self._next_seq = (seq + 1) & 0xFFFF
        if self._run >= RELATCH_PACKETS and now - self._heard_at >= RELATCH_QUIET:
            log.info("RTP re-latched from %s:%s to %s:%s", *self.remote, *addr)
            self.remote, self._heard_at, self._candidate = addr, now, None
            return True
        return False


class RtpInboundTrack(MediaStreamTrack):
    """The caller's voice as 48 kHz mono frames for the pipeline and the bridge."""

    kind = "audio"

    def __init__(self, on_lost: OnLost | None = None) -> None:
        super().__init__()
        self._queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        self._pts = 0
        self.held = False  # the caller holds us: no packets is no reason to hang up
        self.dropped = 0
        self.on_lost = on_lost

    def put(self, pcm48: np.ndarray) -> None:
        if self._queue.qsize() >= MAX_QUEUED_CHUNKS:
            oldest = self._queue.get_nowait()
            self.dropped += 1
            if self.on_lost is not None and oldest is not None:
                self.on_lost("queue", frames_in(len(oldest) / SEND_RATE))
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
    ignored: int = 0  # bad packets, other payload types, a second SSRC
    foreign: int = 0  # from a host the call did not signal
    stray: int = 0  # from another address of an allowed host while the call's stream goes on
    dtmf: int = 0


class RtpSession(asyncio.DatagramProtocol):
    """One call's RTP. ``sources``: hosts or networks besides the SDP's address whose
    packets count (the SIP peer's address, networks the operator trusts); ``on_refused``
    hears of each packet refused, and why (see :class:`SourceLatch`); ``on_lost``, of
    caller audio lost on the way (media/loss.py: concealed gaps, a full queue)."""

    def __init__(
        self,
        offer: AudioOffer,
        on_dtmf: Callable[[str], None],
        *,
        sources: Iterable[str] = (),
        on_refused: Callable[[Refusal], None] | None = None,
        on_lost: OnLost | None = None,
    ) -> None:
        self.offer = offer
        self.on_dtmf = on_dtmf
        self.on_refused = on_refused
        self.on_lost = on_lost
        self.track = RtpInboundTrack(on_lost)
        self.stats = RtpStats()
        self._transport: asyncio.DatagramTransport | None = None
        self.latch = SourceLatch((offer.address, offer.port), sources)
        self._warned: set[Refusal] = set()
        self._jitter = ReorderBuffer(depth=3)
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
        # each packet's audio at once, 2.5 ms late, both ways (media/audio.py): libsoxr
        # streams gave theirs in ~64 ms blocks, which a live conversation hears
        self._up = Interpolator(SEND_RATE // rate)
        self._down = Decimator(SEND_RATE // rate)
        # G.711 (PCMU, PCMA) is stateless: silence is always the same payload, so the
        # silence a caller hears while speaking is not encoded 50 times a second
        self._silence: dict[int, bytes] | None = {} if payload_type in (0, 8) else None

    @property
    def remote(self) -> tuple[str, int]:
        """Where our packets go: the latched source, else the signalled address."""
        return self.latch.remote

    def update(self, offer: AudioOffer) -> None:
        """A re-INVITE: hold, resume, or a new address."""
        if (offer.address, offer.port) != (self.offer.address, self.offer.port):
            self.latch.resignal((offer.address, offer.port))
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

    def _refuse(self, why: Refusal, addr: tuple[str, int]) -> None:
        if why == "foreign":
            self.stats.foreign += 1
        else:
            self.stats.stray += 1
        if why not in self._warned:  # once per call and kind: a flood must not flood the log
            self._warned.add(why)
            log.warning("RTP from %s:%s refused on port %d (%s): the call signalled %s:%s",
                        addr[0], addr[1], self.port, why, *self.latch.remote)  # fmt: skip
        if self.on_refused is not None:
            self.on_refused(why)

    def _receive(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.latch.allowed(addr):
            self._refuse("foreign", addr)
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
        if not self.latch.admit(addr, packet.sequence_number, now):
            self._refuse("stray", addr)
            return
        if packet.ssrc != self._ssrc_in:
            if self._ssrc_in is not None and now - self._heard_at < SSRC_HOLD:
                self.stats.ignored += 1  # a second stream while the first still plays
                return
            self._ssrc_in = packet.ssrc  # a new source (the far end re-routed the call)
            self._jitter.reset()
        self._heard_at = now
        self.stats.packets_in += 1
        if packet.payload_type == self.offer.dtmf_payload_type:
            self._digits(self._dtmf.packet(packet.timestamp, packet.payload))
            self._play(self._jitter.push(packet.sequence_number, None))
            return
        if packet.payload_type != self.offer.payload_type:
            self.stats.ignored += 1  # comfort noise, a codec we did not agree on
            self._play(self._jitter.push(packet.sequence_number, None))
            return
        self._digits(self._dtmf.flush())
        self._play(self._jitter.push(packet.sequence_number, packet))

    def _play(self, ready: list[tuple[int, object]]) -> None:
        for lost, item in ready:
            if lost and self._plc.frame_samples:
                self.stats.concealed += lost
                if self.on_lost is not None:
                    self.on_lost("gap", frames_in(lost * self.offer.ptime / 1000))
                self._deliver(self._plc.conceal(lost * self._plc.frame_samples))
            if isinstance(item, RtpPacket):
                pcm = self._codec.decode(item.payload)
                self._plc.update(pcm)
                self._deliver(pcm)

    def _deliver(self, pcm: bytes) -> None:
        up = self._up.push(np.frombuffer(pcm, dtype="<i2"))
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
                pcm, _pts = await source.next_samples()
            except MediaStreamError:
                return
            out = self._down.push(pcm)
            pending = np.concatenate([pending, out]) if len(pending) else out
            while len(pending) >= per_packet:
                chunk, pending = pending[:per_packet], pending[per_packet:]
                self._send(chunk)

    async def send_digits(self, digits: str, duration_ms: int = 160, gap_ms: int = 60) -> bool:
        """RFC 4733 telephone-events, paced in real time beside the audio; False when the
        far end offered none (then send tones in-band instead)."""
        pt = self.offer.dtmf_payload_type
        if pt is None:
            return False
        step = RTP_CLOCK * 20 // 1000
        for digit in digits.upper():
            event, start = DTMF_EVENTS[digit], self._ts
            for n in range(1, duration_ms // 20 + 1):
                self._send_event(pt, event, start, n * step, end=False, marker=n == 1)
                await asyncio.sleep(0.02)
            for _ in range(3):  # the end, three times: it must not be lost (§2.5.1.4)
                self._send_event(pt, event, start, duration_ms // 20 * step, end=True)
            await asyncio.sleep(gap_ms / 1000)
        return True

    def _send_event(
        self, pt: int, event: int, timestamp: int, duration: int, *, end: bool,
        marker: bool = False,
    ) -> None:  # fmt: skip
        if self._transport is None or not self.remote[1]:
            return
        payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
        packet = RtpPacket(
            payload_type=pt, marker=int(marker), sequence_number=self._seq,
            timestamp=timestamp, ssrc=self._ssrc, payload=payload,
        )  # fmt: skip
        self._seq = (self._seq + 1) & 0xFFFF
        self._transport.sendto(packet.serialize(), self.remote)
        self.stats.packets_out += 1

    def _send(self, pcm: np.ndarray) -> None:
        self._ts = (self._ts + RTP_CLOCK * self.offer.ptime // 1000) & 0xFFFFFFFF
        if self._transport is None or not self.remote[1]:
            return
        if self.offer.on_hold:
            return  # the caller put us on hold: RFC 3264 §8.4 says send nothing
        packet = RtpPacket(
            payload_type=self.offer.payload_type,
            marker=1 if self._first else 0,
            sequence_number=self._seq,
            timestamp=self._ts,
            ssrc=self._ssrc,
            payload=self._payload(pcm),
        )
        self._first = False
        self._seq = (self._seq + 1) & 0xFFFF
        self._transport.sendto(packet.serialize(), self.remote)
        self.stats.packets_out += 1

    def _payload(self, pcm: np.ndarray) -> bytes:
        if self._silence is not None and not pcm.any():
            payload = self._silence.get(len(pcm))
            if payload is None:
                payload = self._silence[len(pcm)] = self._codec.encode(bytes(2 * len(pcm)))
            return payload
        return bytes(self._codec.encode(pcm.astype("<i2").tobytes()))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.track.end()
