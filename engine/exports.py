"""A call's transcript as files people use: WebVTT (players, captioning tools) and plain
text (tickets, e-mail). Pure functions over stored utterances: no I/O here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Line(Protocol):
    speaker: str
    start: float
    end: float
    text: str


def _clock(seconds: float, sep: str = ".") -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cue_text(text: str) -> str:
    # WebVTT cue payloads must not contain "-->" and treat & and < as markup
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("-->", "->")


def webvtt(lines: Iterable[Line]) -> str:
    """One cue per utterance, the speaker as a voice span (``<v caller>``)."""
    out = ["WEBVTT", ""]
    for n, u in enumerate(sorted(lines, key=lambda u: (u.start, u.end)), 1):
        end = max(u.end, u.start + 0.001)  # a cue must end after it starts
        out += [
            str(n),
            f"{_clock(u.start)} --> {_clock(end)}",
            f"<v {u.speaker}>{_cue_text(u.text)}",
            "",
        ]
    return "\n".join(out)


def plain_text(lines: Iterable[Line]) -> str:
    """``[mm:ss] speaker: text`` per utterance, in the order they were said."""
    rows = []
    for u in sorted(lines, key=lambda u: (u.start, u.end)):
        m, s = divmod(int(u.start), 60)
        rows.append(f"[{m:02d}:{s:02d}] {u.speaker}: {u.text}")
    return "\n".join(rows) + ("\n" if rows else "")
