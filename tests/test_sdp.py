import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from media.sdp import MAX_SDP_BYTES, SdpError, parse_offer
from media.webrtc import WebRtcLeg

CHROMIUM = (Path(__file__).parent / "fixtures" / "chromium_offer.sdp").read_text()
OPUS = "a=rtpmap:111 opus/48000/2\n"
# the two offers that made aiortc raise and the engine answer 500 with a traceback
FMTP_UNMAPPED = CHROMIUM.replace(OPUS, OPUS + "a=fmtp:77 foo=1\n")
SHORT_CANDIDATE = CHROMIUM.replace(OPUS, OPUS + "a=candidate:1 1 udp\n")


def test_chromium_offer_parses() -> None:
    """Golden offer captured from Debian's Chromium (getUserMedia audio)."""
    offer = parse_offer(CHROMIUM)
    (audio,) = offer.audio
    assert audio.protocol == "UDP/TLS/RTP/SAVPF"
    assert audio.codecs["111"] == "opus"
    assert audio.codecs["0"] == "pcmu"
    assert audio.codecs["110"] == "telephone-event"
    assert audio.direction == "sendrecv"
    assert offer.video == []


def without(sdp: str, prefix: str) -> str:
    return "".join(ln for ln in sdp.splitlines(keepends=True) if not ln.startswith(prefix))


@pytest.mark.parametrize(
    ("sdp", "message"),
    [
        ("", "SDP must start with 'v=0'"),
        ("hello world", "SDP must start with 'v=0'"),
        ("v=0\r\nthis is not sdp\r\n", "line 2 is not '<type>=<value>': 'this is not sdp'"),
        ("v=0\r\nm=audio\r\n", "line 2: m= needs media, port, protocol and formats"),
        ("v=0\r\nm=audio abc RTP/AVP 0\r\n", "line 2: bad port 'abc'"),
        ("v=0\r\nm=audio 70000 RTP/AVP 0\r\n", "line 2: port 70000 out of range"),
        (
            CHROMIUM.replace("m=audio", "m=video"),
            "the offer has no audio section: a call needs a microphone track",
        ),
        (without(CHROMIUM, "a=fingerprint"), "not a WebRTC offer: missing a=fingerprint"),
        (
            "v=0\r\na=fingerprint:sha-256 AA\r\na=ice-ufrag:x\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\n"
            "a=rtpmap:96 speex/16000\r\n",
            "no supported audio codec offered (got speex",
        ),
        ("v=0\r\n" + "m=audio 9 RTP/AVP 0\r\n" * 17, "more than 16 media sections"),
        ("v=0\r\n" + "a=x\r\n" * MAX_SDP_BYTES, f"SDP larger than {MAX_SDP_BYTES} bytes"),
        (
            FMTP_UNMAPPED,
            "line 31: a=fmtp for payload type 77, which this media section does not map "
            "(no a=rtpmap:77)",
        ),
        (
            SHORT_CANDIDATE,
            "line 31: a=candidate needs foundation, component, transport, priority, address, "
            "port, 'typ' and a type: 'a=candidate:1 1 udp'",
        ),
        (
            CHROMIUM.replace("a=setup:actpass", "a=setup:sideways"),
            "offer rejected by the WebRTC stack's SDP parser at 'a=setup:sideways': 'sideways'",
        ),
        (
            CHROMIUM.replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU"),
            "offer rejected by the WebRTC stack's SDP parser at 'a=rtpmap:0 PCMU': list index",
        ),
    ],
)
def test_bad_offers_are_rejected_with_a_reason(sdp: str, message: str) -> None:
    with pytest.raises(SdpError) as err:
        parse_offer(sdp)
    assert str(err.value).startswith(message)


# -- what aiortc makes of offers that get past our checks ----------------------------------

# tokens a broken or hostile client puts where numbers, addresses and names belong
JUNK = ["", "x", "-1", "0", "256", "99999999999999999999", ":", "/", "=", "::", "1.2.3", "*"]
LINES = CHROMIUM.splitlines()


@st.composite
def mutated_offers(draw: st.DrawFn) -> str:
    """The Chromium offer with a few of its lines dropped, cut short, doubled, or with
    one field swapped for junk: the shapes a fuzzer found aiortc choking on."""
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(1, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "cut", "junk", "copy", "junk_pt"]))
        fields = lines[i].split(" ")
        if op == "drop":
            del lines[i]
        elif op == "cut":
            lines[i] = " ".join(fields[: draw(st.integers(0, len(fields)))])
        elif op == "junk":
            fields[draw(st.integers(0, len(fields) - 1))] = draw(st.sampled_from(JUNK))
            lines[i] = " ".join(fields)
        elif op == "copy":  # a line of the offer where another section (or none) has it
            lines.insert(i, draw(st.sampled_from(LINES[1:])))
        else:  # the attribute's first value (payload type, ssrc, ext id...) replaced
            attr, colon, rest = lines[i].partition(":")
            tail = rest.partition(" ")[2]
            lines[i] = f"{attr}{colon}{draw(st.sampled_from(JUNK))} {tail}"
    return "\r\n".join(lines) + "\r\n"


async def _answer(sdp: str) -> None:
    async def ended(_reason: str) -> None:
        return None

    leg = WebRtcLeg(ended, ice_servers=[])
    try:
        await leg.answer(sdp)
    finally:
        await leg.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_offers())
@example(FMTP_UNMAPPED)
@example(SHORT_CANDIDATE)
def test_mutated_offers_are_answered_or_refused_with_a_reason(sdp: str) -> None:
    """Whatever the offer, the WebRTC side either answers it or raises SdpError (which
    the API turns into a 400 problem): an a=fmtp for an unmapped payload type used to
    escape as RuntimeError (StopIteration in aiortc's parser), a short a=candidate as
    AssertionError, both a 500 with a traceback."""
    try:
        asyncio.run(_answer(sdp))
    except SdpError as exc:
        assert str(exc)  # a reason the caller can read
