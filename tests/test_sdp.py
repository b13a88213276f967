from pathlib import Path

import pytest

from media.sdp import MAX_SDP_BYTES, SdpError, parse_offer

CHROMIUM = (Path(__file__).parent / "fixtures" / "chromium_offer.sdp").read_text()


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
    ],
)
def test_bad_offers_are_rejected_with_a_reason(sdp: str, message: str) -> None:
    with pytest.raises(SdpError) as err:
        parse_offer(sdp)
    assert str(err.value).startswith(message)
