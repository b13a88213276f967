"""Sans-IO checks on an SDP offer before aiortc sees it (RFC 8866 / RFC 8829).

aiortc parses SDP leniently and fails late (or with an AttributeError deep in
its code) on some broken offers. We answer the caller with a precise reason
instead, and bound what we accept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_SDP_BYTES = 64 * 1024
MAX_MEDIA_SECTIONS = 16
MAX_LINES = 2000
SUPPORTED_AUDIO_CODECS = frozenset({"opus", "pcmu", "pcma", "g722"})


class SdpError(ValueError):
    """The remote peer sent an SDP we cannot accept (a remote protocol error)."""


@dataclass
class MediaSection:
    kind: str
    port: int
    protocol: str
    formats: list[str]
    codecs: dict[str, str] = field(default_factory=dict)  # payload type -> lower-case name
    direction: str = "sendrecv"


@dataclass
class OfferSummary:
    media: list[MediaSection]

    @property
    def audio(self) -> list[MediaSection]:
        return [m for m in self.media if m.kind == "audio" and m.port != 0]

    @property
    def video(self) -> list[MediaSection]:
        return [m for m in self.media if m.kind == "video" and m.port != 0]


_STATIC_AUDIO = {"0": "pcmu", "8": "pcma", "9": "g722"}


def parse_offer(sdp: str) -> OfferSummary:
    if len(sdp.encode()) > MAX_SDP_BYTES:
        raise SdpError(f"SDP larger than {MAX_SDP_BYTES} bytes")
    lines = [ln for ln in sdp.replace("\r\n", "\n").split("\n") if ln]
    if len(lines) > MAX_LINES:
        raise SdpError(f"SDP has more than {MAX_LINES} lines")
    if not lines or lines[0].strip() != "v=0":
        raise SdpError("SDP must start with 'v=0'")
    media: list[MediaSection] = []
    has_fingerprint = False
    has_ice = False
    for n, line in enumerate(lines, 1):
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise SdpError(f"line {n} is not '<type>=<value>': {line[:40]!r}")
        key, value = line[0], line[2:].strip()
        if key == "m":
            parts = value.split()
            if len(parts) < 4:
                raise SdpError(f"line {n}: m= needs media, port, protocol and formats")
            try:
                port = int(parts[1].split("/")[0])
            except ValueError:
                raise SdpError(f"line {n}: bad port {parts[1]!r}") from None
            if not 0 <= port <= 65535:
                raise SdpError(f"line {n}: port {port} out of range")
            media.append(MediaSection(parts[0], port, parts[2], parts[3:]))
            if len(media) > MAX_MEDIA_SECTIONS:
                raise SdpError(f"more than {MAX_MEDIA_SECTIONS} media sections")
            if parts[0] == "audio":
                for pt in parts[3:]:
                    if pt in _STATIC_AUDIO:
                        media[-1].codecs[pt] = _STATIC_AUDIO[pt]
        elif key == "a":
            attr, _, rest = value.partition(":")
            if attr == "fingerprint":
                has_fingerprint = True
            elif attr == "ice-ufrag":
                has_ice = True
            elif media and attr == "rtpmap":
                pt, _, enc = rest.partition(" ")
                media[-1].codecs[pt] = enc.split("/")[0].lower()
            elif media and attr in ("sendrecv", "sendonly", "recvonly", "inactive"):
                media[-1].direction = attr
    summary = OfferSummary(media)
    if not summary.audio:
        raise SdpError("the offer has no audio section: a call needs a microphone track")
    if not has_fingerprint or not has_ice:
        raise SdpError("not a WebRTC offer: missing a=fingerprint or a=ice-ufrag")
    if not any(set(m.codecs.values()) & SUPPORTED_AUDIO_CODECS for m in summary.audio):
        names = sorted({c for m in summary.audio for c in m.codecs.values()})
        raise SdpError(
            f"no supported audio codec offered (got {', '.join(names) or 'none'}; "
            f"we take {', '.join(sorted(SUPPORTED_AUDIO_CODECS))})"
        )
    return summary
