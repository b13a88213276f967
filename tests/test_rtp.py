"""Phone media pieces without sockets: DTMF, SDP offer/answer."""

from __future__ import annotations

import struct

import pytest

from media.rtp import DtmfDetector
from media.sip.sdp import NoCommonCodec, SdpAnswerer, SdpError, parse_offer


def event(code: int, end: bool, duration: int = 800) -> bytes:
    return struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)


def test_each_key_press_reported_once() -> None:
    d = DtmfDetector()
    digits: list[str] = []
    for _ in range(5):  # progress packets, no marker anywhere
        digits += d.packet(1000, event(5, False))
    for _ in range(5):  # five copies of the end packet
        digits += d.packet(1000, event(5, True))
    digits += d.packet(1000, event(5, True))  # a late duplicate
    assert digits == ["5"]


def test_same_key_twice_is_two_presses() -> None:
    d = DtmfDetector()
    out = d.packet(100, event(1, True)) + d.packet(900, event(1, True))
    assert out == ["1", "1"]


def test_press_whose_end_packets_were_all_lost() -> None:
    d = DtmfDetector()
    assert d.packet(100, event(9, False)) == []
    assert d.flush() == ["9"]  # audio came back: the key is up
    assert d.flush() == []
    assert d.packet(200, event(3, False)) == []
    assert d.packet(300, event(4, True)) == ["3", "4"]  # the next key, before 3's end


def test_not_keys_and_short_payloads() -> None:
    d = DtmfDetector()
    assert d.packet(1, event(16, True)) == []  # flash-hook
    assert d.packet(1, b"\x01") == []


OFFER = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 18 8 0 101\r\na=rtpmap:18 G729/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n"
    "m=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
)


def test_offer_answer_picks_g711_and_declines_video() -> None:
    offer = parse_offer(OFFER.encode())
    assert (offer.codec, offer.payload_type, offer.dtmf_payload_type) == ("PCMA", 8, 101)
    assert (offer.address, offer.port, offer.on_hold) == ("192.0.2.10", 4000, False)
    answer = SdpAnswerer("203.0.113.1", 30000).answer(offer).decode()
    assert "m=audio 30000 RTP/AVP 8 101\r\n" in answer
    assert "m=video 0 RTP/AVP 96" in answer  # declined, in the offer's order
    assert answer.index("m=audio") < answer.index("m=video")
    assert "a=sendrecv" in answer


def test_hold_offers() -> None:
    held = parse_offer(OFFER.replace("a=ptime:20", "a=sendonly").encode())
    assert held.on_hold
    answerer = SdpAnswerer("203.0.113.1", 30000)
    first = answerer.answer(held).decode()
    assert "a=recvonly" in first
    zeroed = parse_offer(OFFER.replace("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0").encode())
    assert zeroed.on_hold
    second = answerer.answer(parse_offer(OFFER.encode())).decode()
    # the same session, a new version (RFC 3264 §8)
    assert first.split("\r\n")[1].split()[1:3] != second.split("\r\n")[1].split()[1:3]
    assert first.split("\r\n")[1].split()[1] == second.split("\r\n")[1].split()[1]


@pytest.mark.parametrize(
    ("sdp", "error"),
    [
        ("", SdpError),
        ("v=0\r\nm=audio notaport RTP/AVP 0\r\n", SdpError),
        (OFFER.replace("18 8 0 101", "18").replace("m=video", "x=y"), NoCommonCodec),
        (OFFER.replace("RTP/AVP 18 8 0 101", "RTP/SAVP 0"), NoCommonCodec),
        ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 4 RTP/AVP 96\r\n", NoCommonCodec),
    ],
)
def test_bad_offers(sdp: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_offer(sdp.encode())


def test_wideband_preferred_and_in_our_offer() -> None:
    wide = parse_offer(OFFER.replace("18 8 0 101", "0 9 101").replace(
        "a=rtpmap:18 G729/8000", "a=rtpmap:9 G722/8000").encode())  # fmt: skip
    assert (wide.codec, wide.payload_type) == ("G722", 9)
    answer = SdpAnswerer("203.0.113.1", 30000).answer(wide).decode()
    assert "m=audio 30000 RTP/AVP 9 101" in answer and "a=rtpmap:9 G722/8000" in answer
    offer = SdpAnswerer("203.0.113.1", 30002).offer().decode()
    assert "RTP/AVP 9 0 8 101" in offer
    assert parse_offer(offer).codec == "G722"


async def test_jitter_buffer_reorders_and_conceals_loss() -> None:
    """Packets 0..49 of a 440 Hz tone arrive with 10 and 11 swapped and 30 lost: the
    caller's audio comes out in order, the lost 20 ms filled in, one second in all."""
    import numpy as np
    from aiortp.codecs import get_codec

    from media.rtp import RtpSession
    from media.sip.sdp import AudioOffer

    offer = AudioOffer("127.0.0.1", 40000, 0, "PCMU", 101, "sendrecv", 20, (), 0)
    rtp = RtpSession(offer, on_dtmf=lambda digit: None)
    tone = (np.sin(2 * np.pi * 440 * np.arange(8000) / 8000) * 8000).astype("<i2")
    codec = get_codec(0)
    order = [i for i in range(50) if i != 30]
    order[10], order[11] = order[11], order[10]
    for i in order:
        payload = codec.encode(tone[i * 160 : (i + 1) * 160].tobytes())
        head = struct.pack("!BBHII", 0x80, 0, 1000 + i, 5000 + i * 160, 0xABC)
        rtp.datagram_received(head + payload, ("127.0.0.1", 40000))
    out = []
    while not rtp.track._queue.empty():  # type: ignore[attr-defined]
        chunk = rtp.track._queue.get_nowait()  # type: ignore[attr-defined]
        assert chunk is not None
        out.append(chunk)
    audio = np.concatenate(out)
    # all of it, at 48 kHz, nothing held back
    assert len(audio) == 48000
    assert rtp.stats.concealed == 1 and rtp.stats.packets_in == 49
    # the swap did not scramble the tone: its spectrum peak is still 440 Hz
    spectrum = np.abs(np.fft.rfft(audio[: 48000 * 9 // 10].astype(float)))
    assert abs(np.argmax(spectrum) * 48000 / (48000 * 9 // 10) - 440) < 5
    rtp.close()


def test_each_packet_a_phone_sends_is_heard_at_once() -> None:
    """libsoxr's stream gave the caller's audio to analysis and the bridge in ~64 ms
    blocks, nothing for two or three packets and then three at once: the agent heard
    the caller up to 40 ms late, and end of speech was seen that much late. Now each
    packet's 20 ms is there, at 48 kHz, as it arrives, and what it said is where it was."""
    import numpy as np
    from aiortp.codecs import get_codec

    from media.rtp import RtpSession
    from media.sip.sdp import AudioOffer

    offer = AudioOffer("127.0.0.1", 40000, 0, "PCMU", 101, "sendrecv", 20, (), 0)
    rtp = RtpSession(offer, on_dtmf=lambda digit: None)
    tone = (np.sin(2 * np.pi * 1000 * np.arange(1600) / 8000) * 8000).astype("<i2")
    silence = np.zeros(1600, "<i2")
    codec = get_codec(0)
    queued: list[int] = []
    out = []
    for i, pcm in enumerate(np.concatenate([silence, tone, silence]).reshape(30, 160)):
        head = struct.pack("!BBHII", 0x80, 0, 1000 + i, 5000 + i * 160, 0xABC)
        rtp.datagram_received(head + codec.encode(pcm.tobytes()), ("127.0.0.1", 40000))
        while not rtp.track._queue.empty():  # type: ignore[attr-defined]
            out.append(rtp.track._queue.get_nowait())  # type: ignore[attr-defined]
        queued.append(sum(len(c) for c in out))
    rtp.close()
    assert queued == [960 * (i + 1) for i in range(30)]
    level = [int(np.abs(c).max()) for c in out]
    assert max(level[:10]) < 50 and min(level[11:20]) > 6000 and max(level[21:]) < 50


def test_reorder_buffer() -> None:
    from media.rtp import ReorderBuffer

    buf = ReorderBuffer(depth=3)
    assert buf.push(65534, "a") == [(0, "a")]  # in order: straight through
    assert buf.push(0, "c") == []  # 65535 is missing (and the counter wraps)
    assert buf.push(65535, "b") == [(0, "b"), (0, "c")]  # one place late: reordered
    assert buf.push(2, "e") == [] and buf.push(3, "f") == [] and buf.push(4, "g") == []
    assert buf.push(5, "h") == [(1, "e"), (0, "f"), (0, "g"), (0, "h")]  # 1 is lost
    assert buf.push(1, "d") == [] and buf.late == 1  # too late now
    assert buf.push(6, None) == [(0, None)]  # a telephone-event takes its slot
    assert buf.push(5000, "x") == [(0, "x")]  # a new stream starts over


async def test_keys_sent_as_rfc4733_events() -> None:
    """'1#' to a phone that offered telephone-event: paced progress packets (the first
    marked), three end packets per key, one timestamp per key; our receiver reads them
    back as exactly those keys."""
    import socket
    import time

    from media.rtp import RtpSession
    from media.sip.sdp import AudioOffer

    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    phone.setblocking(False)
    offer = AudioOffer("127.0.0.1", phone.getsockname()[1], 0, "PCMU", 101, "sendrecv", 20, (), 0)
    rtp = RtpSession(offer, on_dtmf=lambda digit: None)
    await rtp.open("127.0.0.1")
    started = time.monotonic()
    assert await rtp.send_digits("1#")
    took = time.monotonic() - started
    packets = []
    while True:
        try:
            packets.append(phone.recv(2048))
        except BlockingIOError:
            break
    heard: list[str] = []
    echo = RtpSession(offer, on_dtmf=heard.append)
    for p in packets:
        echo.datagram_received(p, ("127.0.0.1", 40000))
    rtp.close()
    echo.close()
    phone.close()
    fields = [
        (p[1] & 0x80, p[1] & 0x7F, struct.unpack("!I", p[4:8])[0], p[12], p[13] & 0x80)
        for p in packets
    ]
    assert {f[1] for f in fields} == {101}
    assert [f[3] for f in fields] == [1] * 11 + [11] * 11  # event codes: 1, then # (11)
    assert [f[4] != 0 for f in fields] == ([False] * 8 + [True] * 3) * 2
    assert [f[0] != 0 for f in fields] == ([True] + [False] * 10) * 2
    assert len({f[2] for f in fields[:11]}) == 1 and len({f[2] for f in fields[11:]}) == 1
    seqs = [struct.unpack("!H", p[2:4])[0] for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
    assert took >= 2 * 0.16  # paced in real time, not a burst
    assert heard == ["1", "#"]


def test_no_telephone_event_means_inband_tones() -> None:
    """Keys as Q.23 tone pairs: '5' is 770 + 1336 Hz, 100 ms, then 60 ms of silence."""
    import numpy as np

    from media.dtmf import tones, valid_digits

    pcm = tones("5", 16000)
    assert len(pcm) == 16000 * 160 // 1000 and not pcm[1600:].any()
    spectrum = np.abs(np.fft.rfft(pcm[:1600].astype(float)))
    peaks = sorted(np.argsort(spectrum)[-2:] * 16000 / 1600)
    assert peaks == [770, 1340] or (abs(peaks[0] - 770) <= 10 and abs(peaks[1] - 1336) <= 10)
    assert valid_digits("12*#ab") and not valid_digits("12x") and not valid_digits("")


# -- whose RTP a phone call takes -----------------------------------------------------------

PHONE_SDP = ("192.0.2.10", 4000)  # the address the phone's SDP signalled
STRANGER = ("198.51.100.66", 4000)


def rtp_packet(seq: int, payload: bytes, pt: int = 0, ssrc: int = 0xABC) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, seq * 160, ssrc) + payload


async def test_a_stranger_sending_first_does_not_take_the_call() -> None:
    """The hijack: whoever sent RTP first to a call's port was latched, so an attacker
    one second early got all our audio and its own became the caller's. Now its packets
    (audio and keys alike) are refused and counted, and the phone that the SDP named
    still latches when its stream starts, and is heard."""
    import numpy as np
    from aiortp.codecs import get_codec

    from media.rtp import RtpSession
    from media.sip.sdp import AudioOffer

    offer = AudioOffer(*PHONE_SDP, 0, "PCMU", 101, "sendrecv", 20, (), 0)
    refused: list[str] = []
    keys: list[str] = []
    rtp = RtpSession(offer, on_dtmf=keys.append, sources=["192.0.2.10"], on_refused=refused.append)
    codec = get_codec(0)
    loud = codec.encode((np.ones(160) * 12000).astype("<i2").tobytes())
    for seq in range(50):  # a second of the stranger's audio, and a key
        rtp.datagram_received(rtp_packet(seq, loud, ssrc=0x666), STRANGER)
    rtp.datagram_received(rtp_packet(50, event(5, True), pt=101, ssrc=0x666), STRANGER)
    assert rtp.remote == PHONE_SDP  # our audio still goes to the phone
    assert rtp.stats.packets_in == 0 and rtp.track._queue.empty()  # type: ignore[attr-defined]
    quiet = codec.encode(np.zeros(160, dtype="<i2").tobytes())
    phone_port = ("192.0.2.10", 4002)  # the phone sends from another port: still it
    for seq in range(1000, 1050):
        rtp.datagram_received(rtp_packet(seq, quiet), phone_port)
    for seq in range(51, 60):  # the stranger goes on
        rtp.datagram_received(rtp_packet(seq, loud, ssrc=0x666), STRANGER)
    assert rtp.remote == phone_port and rtp.stats.packets_in == 50
    assert rtp.stats.foreign == 60 and refused == ["foreign"] * 60 and keys == []
    heard = []
    while not rtp.track._queue.empty():  # type: ignore[attr-defined]
        chunk = rtp.track._queue.get_nowait()  # type: ignore[attr-defined]
        assert chunk is not None
        heard.append(chunk)
    # the phone's near-silence, not the stranger's loud tone
    assert heard and np.abs(np.concatenate(heard)).max() < 100
    rtp.close()


def test_source_latch_table() -> None:
    """Each row of SourceLatch's table. A phone behind NAT signals its private address
    but sends from the public one its INVITE came from; a NAT that rebinds mid-call is
    followed, but only once the old stream stopped and the new one ran in sequence."""
    from media.rtp import RELATCH_PACKETS, RELATCH_QUIET, SourceLatch

    public = "203.0.113.9"
    latch = SourceLatch(("10.0.0.5", 4000), sources=[public, "198.51.100.0/28"])
    assert not latch.allowed(STRANGER) and not latch.allowed(("not-an-ip", 1))
    assert latch.allowed((public, 62000)) and latch.allowed(("198.51.100.7", 9))
    assert latch.allowed(("::ffff:203.0.113.9", 62000))  # from a dual-stack socket
    assert latch.remote == ("10.0.0.5", 4000) and not latch.latched
    assert latch.admit((public, 62000), 1, now=0.0)  # SIGNALLED -> LATCHED
    assert latch.remote == (public, 62000)
    assert latch.admit((public, 62000), 2, now=0.02)
    # another port of an allowed host while the latched stream goes on: strays
    t = 0.02
    for n in range(3 * RELATCH_PACKETS):
        t += 0.02
        assert latch.admit((public, 62000), 3 + n, now=t)
        assert not latch.admit((public, 62001), 500 + n, now=t)
    # the old port falls silent; the new one must run in sequence for RELATCH_PACKETS
    t += RELATCH_QUIET
    seqs = [900, 901, 903] + list(range(904, 904 + RELATCH_PACKETS - 1))
    verdicts = [latch.admit((public, 62001), s, now=t + i * 0.02) for i, s in enumerate(seqs)]
    assert verdicts == [False] * (len(seqs) - 1) + [True]  # the gap at 902 started over
    assert latch.remote == (public, 62001)
    assert not latch.admit((public, 62000), 4000, now=t + 1)  # the old port is a stray now
    latch.resignal(("192.0.2.77", 5000))  # a re-INVITE to a new address
    assert latch.remote == ("192.0.2.77", 5000) and not latch.latched
    assert latch.allowed(("192.0.2.77", 1)) and not latch.allowed(("10.0.0.5", 4000))
    assert latch.allowed((public, 62001))  # the SIP peer stays allowed


class Unpaced:
    """A track that gives its frames as fast as they are asked for, counting them: the
    sender's own pacing (packets per frame) is then exact, whatever the machine."""

    def __init__(self, frames: list[object]) -> None:
        self.frames = frames
        self.given = 0

    async def next_samples(self) -> tuple[object, int]:
        import asyncio

        from aiortc.mediastreams import MediaStreamError

        await asyncio.sleep(0.001)  # the test looks at the socket between frames
        if self.given == len(self.frames):
            raise MediaStreamError
        self.given += 1
        return self.frames[self.given - 1], (self.given - 1) * 960

    async def recv(self) -> object:  # what senders took before next_samples
        import fractions

        import av

        samples, pts = await self.next_samples()
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")  # type: ignore[attr-defined]
        frame.sample_rate, frame.pts = 48000, pts
        frame.time_base = fractions.Fraction(1, 48000)
        return frame


@pytest.mark.parametrize(("payload_type", "codec"), [(0, "PCMU"), (9, "G722")])
async def test_a_phone_gets_one_packet_per_frame_at_once(payload_type: int, codec: str) -> None:
    """The phone got our audio in bursts: libsoxr handed the 48 kHz -> 8 kHz output out
    in ~64 ms blocks, so three or four packets left together every third or fourth
    frame, 40 ms late. Now each frame makes its packet as it is sent, speech or
    silence, and what is said comes out where it was put."""
    import asyncio
    import socket

    import numpy as np
    from aiortp.codecs import get_codec

    from media.rtp import RtpSession
    from media.sip.sdp import AudioOffer

    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    phone.setblocking(False)
    offer = AudioOffer("127.0.0.1", phone.getsockname()[1], payload_type, codec, None,
                       "sendrecv", 20, (), 0)  # fmt: skip
    rtp = RtpSession(offer, on_dtmf=lambda digit: None)
    await rtp.open("127.0.0.1")
    t = np.arange(960 * 20) / 48000
    speech = (np.sin(2 * np.pi * 1000 * t) * 12000).astype(np.int16)
    frames = [np.zeros(960, np.int16)] * 10 + list(speech.reshape(20, 960))
    frames += [np.zeros(960, np.int16)] * 10
    track = Unpaced(frames)
    per_frame = []
    sender = asyncio.create_task(rtp.send_from(track))  # type: ignore[arg-type]
    packets: list[bytes] = []
    while not sender.done():
        await asyncio.sleep(0)
        while True:
            try:
                packets.append(phone.recv(2048))
            except BlockingIOError:
                break
        per_frame.append((track.given, len(packets)))
    rtp.close()
    phone.close()
    # after the n-th frame was taken, n packets (the last frame's may still be on its way)
    assert all(given - 1 <= got <= given for given, got in per_frame), per_frame
    assert len(packets) == len(frames)
    decoder = get_codec(payload_type)
    levels = [np.abs(np.frombuffer(decoder.decode(p[12:]), "<i2")).max() for p in packets]
    assert max(levels[:10]) < 50 and max(levels[31:]) < 50  # silence stays silence
    assert min(levels[11:29]) > 8000  # the tone, in the packets of its frames
