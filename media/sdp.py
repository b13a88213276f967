"""Sans-IO checks on an SDP offer before aiortc sees it (RFC 8866 / RFC 8829).

aiortc parses SDP leniently and fails late (or with an AttributeError deep in
its code) on some broken offers. We answer the caller with a precise reason
instead, and bound what we accept.

The shapes known to break aiortc's parser get a reason of their own (an
``a=fmtp`` for a payload type the section never maps, an ``a=candidate`` short
of its eight fields); whatever else its parser trips on (an assert, a bad int, a
``next()`` with nothing left) is still the offer's fault, so it becomes an
:class:`SdpError` naming the line, never an exception out of the API.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

from aiortc.sdp import SessionDescription

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
# foundation component transport priority address port "typ" type (RFC 8839 §5.1)
CANDIDATE_FIELDS = 8


def _check_section_maps(fmtp: list[tuple[int, str]], mapped: set[str]) -> None:
    """Every a=fmtp of the section that just ended names a payload type it mapped."""
    for n, pt in fmtp:
        if pt not in mapped:
            raise SdpError(
                f"line {n}: a=fmtp for payload type {pt}, which this media section "
                f"does not map (no a=rtpmap:{pt})"
            )


def _failing_line(exc: BaseException) -> str | None:
    """The SDP line aiortc's parser was reading when it raised (its ``line`` local)."""
    tb: types.TracebackType | None = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "parse":
            value = tb.tb_frame.f_locals.get("line")
            if isinstance(value, str):
                line = value
        tb = tb.tb_next
    return line


def _aiortc_parses(sdp: str) -> None:
    try:
        SessionDescription.parse(sdp)
    except Exception as exc:  # a pure function of the peer's text: any failure is theirs
        line = _failing_line(exc)
        where = f" at {line[:60]!r}" if line else ""
        why = str(exc) or type(exc).__name__
        raise SdpError(f"offer rejected by the WebRTC stack's SDP parser{where}: {why}") from None


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
    fmtp: list[tuple[int, str]] = []  # (line, payload type) of the current section
    mapped: set[str] = set()  # payload types the current section has an a=rtpmap for
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
            _check_section_maps(fmtp, mapped)
            fmtp, mapped = [], set()
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
                mapped.add(pt)
            elif media and attr == "fmtp":
                fmtp.append((n, rest.partition(" ")[0]))
            elif attr == "candidate" and len(rest.split()) < CANDIDATE_FIELDS:
                raise SdpError(
                    f"line {n}: a=candidate needs foundation, component, transport, priority, "
                    f"address, port, 'typ' and a type: {line[:60]!r}"
                )
            elif media and attr in ("sendrecv", "sendonly", "recvonly", "inactive"):
                media[-1].direction = attr
    _check_section_maps(fmtp, mapped)
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
    _aiortc_parses(sdp)
    return summary
