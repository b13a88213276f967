"""Transcript exports: WebVTT and plain text from stored utterances."""

from __future__ import annotations

from dataclasses import dataclass

from engine.exports import plain_text, webvtt


@dataclass
class U:
    speaker: str
    start: float
    end: float
    text: str


LINES = [
    U("agent", 3725.5, 3727.25, "Thanks, I see it."),
    U("caller", 1.2, 3.4, "My order <A&B> --> late"),
    U("caller", 5.0, 5.0, "Hello?"),
]


def test_webvtt() -> None:
    vtt = webvtt(LINES)
    assert vtt.startswith("WEBVTT\n\n1\n00:00:01.200 --> 00:00:03.400\n")
    assert "<v caller>My order &lt;A&amp;B> -> late\n" in vtt  # no markup, no stray arrow
    assert "00:00:05.000 --> 00:00:05.001" in vtt  # an empty cue still ends after it starts
    assert "3\n01:02:05.500 --> 01:02:07.250\n<v agent>Thanks, I see it.\n" in vtt
    assert webvtt([]) == "WEBVTT\n"


def test_plain_text() -> None:
    assert plain_text(LINES).splitlines() == [
        "[00:01] caller: My order <A&B> --> late",
        "[00:05] caller: Hello?",
        "[62:05] agent: Thanks, I see it.",
    ]
    assert plain_text([]) == ""
