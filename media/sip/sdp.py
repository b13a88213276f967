"""SDP offer/answer for phone audio (RFC 3264): G.711 and telephone-event.

An offer is read with aiosipua's SDP parser; the answer is written here, one
audio m-line mirroring the offered one (other m-lines, such as video from a SIP
video phone, are answered with port 0, as RFC 3264 §6 asks).
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

from aiosipua import parse_sdp

# what we can decode, best first: G.722 is wideband (16 kHz audio, which the recognizer
# hears better); G.711 is what every trunk and phone offers
SUPPORTED = ("G722", "PCMU", "PCMA")
STATIC = {0: "PCMU", 8: "PCMA", 9: "G722"}


class SdpError(ValueError):
    """An offer we cannot read (answered 400) ..."""


class NoCommonCodec(SdpError):
    """... or can read but share no codec with (answered 488)."""


@dataclass(frozen=True, slots=True)
class AudioOffer:
    address: str
    port: int
    payload_type: int  # the codec we chose from the offer
    codec: str  # "G722" | "PCMU" | "PCMA"
    dtmf_payload_type: int | None
    direction: str  # the offerer's: sendrecv, sendonly (holding us), recvonly, inactive
    ptime: int
    other_media: tuple[str, ...]  # m-lines we decline, in order (to mirror them)
    audio_index: int

    @property
    def on_hold(self) -> bool:
        """The caller put us on hold (RFC 3264 §8.4): it sends nothing we must hear."""
        return self.direction in ("sendonly", "inactive") or self.address in ("0.0.0.0", "::")


# before the far end's answer to our offer: nowhere to send yet
NOT_YET = AudioOffer("0.0.0.0", 0, 0, "PCMU", 101, "sendrecv", 20, (), 0)


def parse_offer(body: bytes | str) -> AudioOffer:
    """An offer (or the answer to our offer: same shape) -> the codec we will use."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if not text.strip():
        raise SdpError("INVITE without an SDP offer (late offer is not supported)")
    try:
        sdp = parse_sdp(text)
    except (ValueError, IndexError, KeyError) as exc:
        raise SdpError(f"unreadable SDP: {exc}") from None
    audio_index = next((i for i, m in enumerate(sdp.media) if m.media == "audio"), None)
    if audio_index is None:
        raise NoCommonCodec("the offer has no audio")
    audio = sdp.media[audio_index]
    conn = audio.connection or sdp.connection
    if conn is None or not audio.port:
        raise SdpError("the audio offer has no address")
    if not 0 < audio.port < 65536:
        raise SdpError(f"the audio port {audio.port} is not a port")
    try:
        ipaddress.ip_address(conn.address)
    except ValueError:
        # a name would be looked up (blocking the event loop) by every RTP packet sent
        # to it: a caller's SDP must not make us resolve names
        raise SdpError(f"the audio address {conn.address!r} is not an IP address") from None
    if "RTP/AVP" not in audio.proto.upper() or "SAVP" in audio.proto.upper():
        raise NoCommonCodec(f"unsupported transport {audio.proto} (plain RTP/AVP only)")
    usable: list[tuple[int, str]] = []
    dtmf = None
    for c in audio.codecs:
        name = (c.encoding_name or STATIC.get(c.payload_type, "")).upper()
        if name == "TELEPHONE-EVENT" and c.clock_rate in (0, 8000) and dtmf is None:
            dtmf = c.payload_type
        elif name in SUPPORTED and c.clock_rate in (0, 8000):  # G.722 says 8000 too
            usable.append((c.payload_type, name))
    # wideband whenever it is offered (the recognizer hears it better); between the two
    # G.711 laws, the offerer's preference
    wide = [u for u in usable if u[1] == "G722"]
    chosen = (wide or usable)[0] if usable else None
    if chosen is None:
        offered = ", ".join(c.encoding_name or str(c.payload_type) for c in audio.codecs)
        raise NoCommonCodec(f"no common codec (offered: {offered}; we take G722, PCMU, PCMA)")
    ptime_attr = audio.attributes.get("ptime", ["20"])
    try:
        ptime = int(float(ptime_attr[0])) if ptime_attr else 20
    except ValueError:
        ptime = 20
    return AudioOffer(
        address=conn.address,
        port=audio.port,
        payload_type=chosen[0],
        codec=chosen[1],
        dtmf_payload_type=dtmf,
        direction=audio.direction,
        ptime=ptime if ptime in (10, 20, 30, 40, 60) else 20,
        other_media=tuple(f"{m.media} 0 {m.proto} {' '.join(m.formats)}" for m in sdp.media),
        audio_index=audio_index,
    )


_ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


@dataclass
class SdpAnswerer:
    """Our side of one call's SDP: the same o= session id, a version bumped per answer."""

    local_ip: str
    port: int
    session_id: int = 0
    version: int = 0

    def __post_init__(self) -> None:
        self.session_id = self.session_id or secrets.randbelow(2**31)

    def offer(self) -> bytes:
        """Our offer for a call we place: G.722, G.711 both laws and telephone-event."""
        self.version += 1
        return (
            "\r\n".join(
                [
                    "v=0",
                    f"o=ccengine {self.session_id} {self.version} IN IP4 {self.local_ip}",
                    "s=ccengine",
                    f"c=IN IP4 {self.local_ip}",
                    "t=0 0",
                    f"m=audio {self.port} RTP/AVP 9 0 8 101",
                    "a=rtpmap:9 G722/8000",
                    "a=rtpmap:0 PCMU/8000",
                    "a=rtpmap:8 PCMA/8000",
                    "a=rtpmap:101 telephone-event/8000",
                    "a=fmtp:101 0-15",
                    "a=ptime:20",
                    "a=sendrecv",
                ]
            )
            + "\r\n"
        ).encode()

    def answer(self, offer: AudioOffer, *, we_hold: bool = False) -> bytes:
        self.version += 1
        direction = _ANSWER_DIRECTION.get(offer.direction, "sendrecv")
        if we_hold and direction == "sendrecv":
            direction = "sendonly"
        lines = [
            "v=0",
            f"o=ccengine {self.session_id} {self.version} IN IP4 {self.local_ip}",
            "s=ccengine",
            f"c=IN IP4 {self.local_ip}",
            "t=0 0",
        ]
        for i, declined in enumerate(offer.other_media):
            if i != offer.audio_index:
                lines.append(f"m={declined}")
                continue
            fmts = [str(offer.payload_type)]
            if offer.dtmf_payload_type is not None:
                fmts.append(str(offer.dtmf_payload_type))
            lines.append(f"m=audio {self.port} RTP/AVP {' '.join(fmts)}")
            lines.append(f"a=rtpmap:{offer.payload_type} {offer.codec}/8000")
            if offer.dtmf_payload_type is not None:
                lines.append(f"a=rtpmap:{offer.dtmf_payload_type} telephone-event/8000")
                lines.append(f"a=fmtp:{offer.dtmf_payload_type} 0-15")
            lines.append(f"a=ptime:{offer.ptime}")
            lines.append(f"a={direction}")
        return ("\r\n".join(lines) + "\r\n").encode()
