"""The parsers that read what strangers send, under fuzzing: SIP messages (UDP and TCP
framing), phone and WebRTC SDP, RTP (with RFC 4733 events and the reorder buffer),
STUN, and the API's JSON bodies.

Each target starts from a corpus kept in the repo (tests/fuzz-corpus/<target>/, real
shapes of each input) and mutates it with hypothesis: bytes flipped, inserted, deleted,
duplicated, cut, or two seeds spliced. Whatever the input, a parser either returns a
value the engine can use or raises its own error (the one its caller turns into a 400,
a drop or a 422): never another exception, never an unbounded buffer. Every corpus file
is also replayed as it is. An input a fuzzer once broke a parser with goes into the
corpus (or an ``@example``), so it is tried on every run from then on.

STUN: the engine parses no STUN of its own; aioice parses what reaches a WebRTC call's
ICE sockets (anyone who learns the port can send there), so its parser is fuzzed here
for the behaviour aioice's receive path relies on: ValueError for anything it cannot
read.

Bounded: about a minute for the whole file (``FUZZ_EXAMPLES`` scales it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from aioice import Connection, stun
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from engine.acd import QueueConfig
from engine.api import schemas
from engine.escalation import Rule
from media import sdp as webrtc_sdp
from media.rtp import DtmfDetector, ReorderBuffer, RtpSession
from media.sip import message as sm
from media.sip.sdp import SdpAnswerer, SdpError, parse_offer
from media.sip.transport import FramingError, StreamFramer
from media.stun import guard_aioice

guard_aioice()  # as media/webrtc.py installs it in the engine
CORPUS = Path(__file__).parent / "fuzz-corpus"
SCALE = float(os.environ.get("FUZZ_EXAMPLES", "1"))
TOKENS = [
    b"\r\n", b"\r\n\r\n", b"\n", b";", b":", b",", b" ", b"\t", b"<", b">", b'"', b"\\",
    b"\x00", b"\xff", b"\xc3\x28", b"=" * 40, b"9" * 12, b"-1", b"0", b"65536",
    b"Content-Length: 99999\r\n", b"a=rtpmap:", b"m=audio ", b"c=IN IP4 ", b"%",
]  # fmt: skip


def corpus(target: str) -> list[bytes]:
    files = sorted((CORPUS / target).iterdir())
    assert files, f"no corpus for {target}"
    return [f.read_bytes() for f in files]


def fuzz_settings(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return settings(
        max_examples=max(10, int(examples * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A corpus entry, changed in one to eight places."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "token", "delete", "dup", "cut", "splice"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "token":
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 40))]
        elif op == "dup":
            end = min(len(data), pos + draw(st.integers(1, 200)))
            data[end:end] = data[pos:end] * draw(st.integers(1, 4))
        elif op == "cut":
            del data[pos:]
        else:
            other = draw(st.sampled_from(seeds))
            data[pos:] = other[draw(st.integers(0, len(other))) :]
    return bytes(data)


# -- SIP ---------------------------------------------------------------------------------

SIP = corpus("sip")


def check_sip(data: bytes) -> None:
    """What the endpoint does with a datagram: parse, then read the headers it needs."""
    try:
        msg = sm.parse(data)
    except sm.SipSyntaxError as exc:
        assert exc.status in (None, 400, 505, 416, 420, 413) or 400 <= exc.status < 600
        return
    sm.answerable(msg)
    sm.branch(msg)
    sm.tag(msg.headers.get_first("to"))
    sm.tag(msg.headers.get_first("from"))
    if isinstance(msg, sm.SipRequest):
        sm.cseq(msg)
        sm.uri_user(msg.uri)
        sm.address_uri(msg.headers.get_first("from") or "")


@pytest.mark.parametrize("seed", SIP, ids=lambda s: s.split(b" ", 1)[0].decode()[:12])
def test_sip_corpus_parses(seed: bytes) -> None:
    msg = sm.parse(seed)
    assert msg is not None
    check_sip(seed)


@fuzz_settings(8000)
@given(mutated(SIP))
def test_fuzzed_sip_messages_parse_or_raise_sip_syntax_error(data: bytes) -> None:
    check_sip(data)


# -- SIP over TCP: framing ---------------------------------------------------------------

STREAMS = corpus("sip-tcp")


def frame_all(chunks: list[bytes]) -> list[bytes]:
    framer = StreamFramer()
    out = []
    for chunk in chunks:
        out += framer.feed(chunk)
        assert len(framer._buf) <= framer.limit + len(chunk)  # never more than a message
    return out


@fuzz_settings(1000)
@given(st.sampled_from(STREAMS), st.lists(st.integers(1, 4000), max_size=30))
def test_a_stream_frames_the_same_however_it_is_split(stream: bytes, cuts: list[int]) -> None:
    whole = frame_all([stream])
    assert whole and all(sm.parse(m) for m in whole)
    chunks, rest = [], stream
    for n in cuts:
        chunks.append(rest[:n])
        rest = rest[n:]
    assert frame_all([*chunks, rest]) == whole


@fuzz_settings(4000)
@given(mutated(STREAMS), st.integers(1, 2000))
def test_fuzzed_streams_frame_or_raise_framing_error(stream: bytes, size: int) -> None:
    try:
        frame_all([stream[i : i + size] for i in range(0, len(stream), size)])
    except FramingError:
        pass


# -- SDP ---------------------------------------------------------------------------------

PHONE_SDP = corpus("sdp-phone")


@fuzz_settings(5000)
@given(mutated(PHONE_SDP))
@example(b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 99999 RTP/AVP 0\r\n")
@example(b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\na=ptime:nan\r\n")
@example(b"v=0\r\nc=IN IP4 rtp.example.com\r\nm=audio 4000 RTP/AVP 0\r\n")
def test_fuzzed_phone_sdp_is_used_or_refused_with_a_reason(body: bytes) -> None:
    """A phone's offer gives an address and port we can send to and a codec we have,
    and an answer we can write; anything else is SdpError (400 or 488 to the INVITE)."""
    try:
        offer = parse_offer(body)
    except SdpError as exc:
        assert str(exc)
        return
    assert 0 < offer.port < 65536, offer
    ipaddress.ip_address(offer.address)  # never a name: sending would resolve it
    assert offer.codec in ("PCMU", "PCMA", "G722") and 0 <= offer.payload_type < 128
    assert offer.ptime in (10, 20, 30, 40, 60)
    assert SdpAnswerer("203.0.113.1", 40000).answer(offer)


WEBRTC_SDP = corpus("sdp-webrtc")


@fuzz_settings(2000)
@given(mutated(WEBRTC_SDP))
def test_fuzzed_webrtc_sdp_summaries_or_sdp_error(body: bytes) -> None:
    """The engine's own reading of a browser's offer (before aiortc's, which
    tests/test_sdp.py fuzzes): a summary or SdpError, which the API answers 400."""
    text = body.decode("utf-8", "replace")
    try:
        summary = webrtc_sdp.parse_offer(text)
    except webrtc_sdp.SdpError as exc:
        assert str(exc)
        return
    assert summary.audio


# -- RTP ---------------------------------------------------------------------------------

RTP = corpus("rtp")
OFFER = parse_offer(PHONE_SDP[0])


@fuzz_settings(2000)
@given(st.lists(st.one_of(mutated(RTP), st.sampled_from(RTP)), min_size=1, max_size=40))
def test_fuzzed_rtp_never_escapes_and_never_grows(packets: list[bytes]) -> None:
    """What a phone (or anyone) sends to a call's RTP port: datagram_received catches
    everything so the socket survives, so _receive is called directly here: it must
    take or ignore each packet itself, and its buffers stay bounded."""

    async def run() -> None:
        lost: list[int] = []
        session = RtpSession(OFFER, on_dtmf=lambda _d: None, on_lost=lambda _why, n: lost.append(n))
        for packet in packets:
            session._receive(packet, (OFFER.address, OFFER.port))
        assert len(session._jitter._held) <= session._jitter.depth
        assert all(n > 0 for n in lost)

    asyncio.run(run())


@fuzz_settings(2000)
@given(st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.binary(max_size=8)), max_size=50))
def test_fuzzed_telephone_events_report_digits_only(events: list[tuple[int, bytes]]) -> None:
    detector = DtmfDetector()
    for timestamp, payload in events:
        for digit in detector.packet(timestamp, payload):
            assert digit in "0123456789*#ABCD"
    assert all(d in "0123456789*#ABCD" for d in detector.flush())


@fuzz_settings(2000)
@given(st.lists(st.integers(0, 0xFFFF), max_size=200))
def test_the_reorder_buffer_stays_in_order_and_bounded(seqs: list[int]) -> None:
    """Whatever arrives, what comes out of one push is in sequence, each item one after
    the last plus the packets declared lost between them, and at most ``depth`` wait."""
    buffer = ReorderBuffer(depth=3)
    for seq in seqs:
        out = buffer.push(seq, seq)
        for (_, before), (lost, item) in zip(out, out[1:], strict=False):
            assert isinstance(before, int) and isinstance(item, int)
            assert item == (before + 1 + lost) & 0xFFFF
        assert len(buffer._held) <= buffer.depth


# -- STUN (aioice) -----------------------------------------------------------------------

STUN = corpus("stun")


@pytest.mark.parametrize("seed", STUN, ids=lambda s: f"{len(s)}B")
def test_stun_corpus_parses(seed: bytes) -> None:
    assert stun.parse_message(seed).transaction_id


def stun_attribute(kind: int, value: bytes) -> bytes:
    pad = b"\0" * (-len(value) % 4)
    return struct.pack("!HH", kind, len(value)) + value + pad


def stun_message(*attributes: bytes, kind: int = 0x0001) -> bytes:
    body = b"".join(attributes)
    return struct.pack("!HHI12s", kind, len(body), stun.COOKIE, b"\x07" * 12) + body


# found by this fuzzer: attributes shorter than their type (struct.error in aioice 0.13)
SHORT_PRIORITY = stun_message(stun_attribute(0x0024, b"\x00\x01"))
SHORT_ICE_CONTROLLING = stun_message(stun_attribute(0x802A, b"\x01\x02\x03"))


@st.composite
def stun_messages(draw: st.DrawFn) -> bytes:
    """A well-framed STUN message (right length, cookie) with attributes of any known
    type and any value: what gets past the framing checks to the attribute parsers."""
    kinds = sorted(stun.ATTRIBUTES_BY_TYPE)
    attrs = [
        stun_attribute(draw(st.sampled_from(kinds)), draw(st.binary(max_size=24)))
        for _ in range(draw(st.integers(0, 4)))
    ]
    kind = draw(st.sampled_from([0x0001, 0x0101, 0x0111, 0x0003, 0x0016]))
    return stun_message(*attrs, kind=kind)


@fuzz_settings(6000)
@given(st.one_of(mutated(STUN), stun_messages()))
@example(SHORT_PRIORITY)
@example(SHORT_ICE_CONTROLLING)
def test_fuzzed_stun_parses_or_raises_value_error(data: bytes) -> None:
    """aioice's receive path drops what its parser rejects with ValueError as not STUN;
    anything else escaped into the event loop (see media/stun.py)."""
    try:
        message = stun.parse_message(data)
    except ValueError:
        return
    message.check_message_integrity(b"secretpassword123456")  # a bool, not an exception


async def test_a_malformed_stun_packet_at_an_ice_port_is_dropped_quietly() -> None:
    """The fuzzer's find, sent to a real aioice connection's socket: it was an ERROR
    with a traceback in the log per packet; now it is dropped, and nothing reaches the
    event loop's exception handler."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    connection = Connection(ice_controlling=True, components=1, use_ipv6=False)
    try:
        await connection.gather_candidates()
        if not connection.local_candidates:
            pytest.skip("no network interface to gather a candidate on")
        local = connection.local_candidates[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for packet in (SHORT_PRIORITY, SHORT_ICE_CONTROLLING):
                sender.sendto(packet, (local.host, local.port))
        await asyncio.sleep(0.3)
    finally:
        await connection.close()
        loop.set_exception_handler(None)
    assert errors == []


# -- the API's JSON bodies ---------------------------------------------------------------

MODELS: dict[str, type[BaseModel]] = {
    "QueueConfig": QueueConfig,
    "Rule": Rule,
    "RuleSilence": Rule,
    **{
        name: getattr(schemas, name)
        for name in dir(schemas)
        if isinstance(getattr(schemas, name), type)
        and issubclass(getattr(schemas, name), schemas.Input)
        and getattr(schemas, name) is not schemas.Input
    },
}
API = {f.stem: f.read_bytes() for f in sorted((CORPUS / "api").iterdir())}


def test_every_api_body_model_has_a_corpus_entry() -> None:
    names = {
        name
        for name, model in MODELS.items()
        if model.__module__ == schemas.__name__ and not name.endswith("Out")
    }
    assert names <= set(API), sorted(names - set(API))


def check_body(model: type[BaseModel], body: bytes) -> None:
    """Valid (and then it serializes to JSON and back to an equal value, so what is
    stored can always be served) or a ValidationError naming the field: never another
    exception."""
    try:
        value = model.model_validate_json(body)
    except ValidationError as exc:
        assert exc.errors()
        return
    again = model.model_validate_json(value.model_dump_json())
    assert again == value
    json.loads(value.model_dump_json())


@pytest.mark.parametrize("name", sorted(API))
def test_api_corpus_is_valid(name: str) -> None:
    MODELS[name].model_validate_json(API[name])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A corpus body, mutated as bytes or with one field given any JSON value
    (floats include NaN and infinities, text includes lone surrogates)."""
    name = draw(st.sampled_from(sorted(API)))
    if draw(st.booleans()):
        return name, draw(mutated([API[name]]))
    doc = json.loads(API[name])
    doc[draw(st.sampled_from(sorted(doc)))] = draw(JSON_VALUES)
    return name, json.dumps(doc).encode("utf-8", "surrogatepass")


@fuzz_settings(6000)
@given(bodies())
def test_fuzzed_api_bodies_validate_or_raise_validation_error(case: tuple[str, bytes]) -> None:
    name, body = case
    check_body(MODELS[name], body)
