"""Moonshine base-en, the default English recognizer: conversion, accuracy on our own
speech at 16 kHz and in the 8 kHz phone band, partial-text cost, word times."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import webrtcvad

from engine.cli import main
from media.asr import moonshine_backend
from media.asr.moonshine_backend import (
    Decoded,
    MoonshineModel,
    MoonshineRecognizer,
    estimate_word_times,
)
from media.asr.moonshine_convert import MANIFEST, ModelPrepareError, ensure, verify
from media.audio import AnalysisResampler
from media.vad import VadSettings
from media.wavtrack import read_wav_mono
from tests import speech

# what callers say to a contact center; none of these is in bench/endpointing.py
SENTENCES = [
    "Hi, I am calling because my bill is wrong this month.",
    "I was charged twice for the same order.",
    "Can you please cancel my subscription?",
    "The internet has been down since yesterday morning.",
    "I need to update the address on my account.",
    "My order number is eight three zero one six.",
    "I want to talk to a real person.",
    "Why is my refund taking so long?",
    "The technician never showed up for the appointment.",
    "Thank you, that was really helpful.",
]


def pcm16(path: Path) -> bytes:
    pcm, rate = read_wav_mono(str(path))
    return b"".join(f.to_bytes() for f in AnalysisResampler().push(pcm, rate))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, bytes, bytes]]:
    """(sentence, 16 kHz speech, the same through the 8 kHz phone band)."""
    folder = tmp_path_factory.mktemp("moonshine")
    out = []
    for i, text in enumerate(SENTENCES):
        wav = speech.piper_script([text], folder / f"{i}.wav")
        phone = speech.sox(wav, folder / f"{i}-8k.wav", ["sinc", "300-3400"], rate=8000)
        out.append((text, pcm16(wav), pcm16(phone)))
    return out


def transcribe(pcm: bytes) -> str:
    rec = speech.english().create()
    for i in range(0, len(pcm), 3200):  # 100 ms chunks, as the pipeline sends them
        rec.accept(pcm[i : i + 3200])
    return rec.finish().text


@pytest.mark.parametrize("band", ["16 kHz", "8 kHz phone band"])
def test_word_error_rate_on_our_speech(recorded: list[tuple[str, bytes, bytes]], band: str) -> None:
    """Pocketsphinx scored 10-16 % at 16 kHz and ~48 % in the phone band on such speech."""
    refs, hyps = [], []
    for text, wide, narrow in recorded:
        refs.append(text)
        hyps.append(transcribe(wide if band == "16 kHz" else narrow))
    errors = sum(
        speech.wer(r, h) * len(speech.normalize(r)) for r, h in zip(refs, hyps, strict=True)
    )
    rate = errors / sum(len(speech.normalize(r)) for r in refs)
    assert rate <= (0.08 if band == "16 kHz" else 0.15), list(zip(refs, hyps, strict=True))
    assert any(h[0].isupper() and h.rstrip()[-1] in ".?!" for h in hyps)  # written like a person


def test_partials_are_bounded_and_deferred_under_load(
    recorded: list[tuple[str, bytes, bytes]],
) -> None:
    """A partial costs a re-decode: at most one per second of new speech, none while
    the worker has other work waiting. The 10 s final is a regression test: Moonshine
    alone answers nothing at all past ~9 s; longer audio is decoded in pieces."""
    pcm = b"".join(wide for _, wide, _ in recorded[:3])  # ~8 s
    rec = speech.english().create()
    assert isinstance(rec, MoonshineRecognizer)
    partials = [p for i in range(0, len(pcm), 3200) if (p := rec.accept(pcm[i : i + 3200]))]
    seconds = len(pcm) / 32000
    assert 2 <= len(partials) <= seconds
    rec.finish()
    rec.defer_partials = True
    assert not [p for i in range(0, len(pcm), 3200) if rec.accept(pcm[i : i + 3200])]
    assert speech.wer(" ".join(t for t, _, _ in recorded[:3]), rec.finish().text) <= 0.15


def test_peek_then_finish_decodes_once(recorded: list[tuple[str, bytes, bytes]]) -> None:
    """The endpointer's look at a pause is the final when nothing came after it."""
    text, wide, _ = recorded[6]
    rec = speech.english().create()
    assert isinstance(rec, MoonshineRecognizer)
    rec.defer_partials = True
    rec.accept(wide)
    decodes = []
    model = rec._model
    original = model.decode
    model.decode = lambda audio: decodes.append(1) or original(audio)  # type: ignore[method-assign]
    try:
        peeked = rec.peek()
        assert rec.finish() == peeked and len(decodes) == 1
        rec.accept(wide)
        rec.peek()
        rec.accept(wide[:3200])  # the speaker went on: the final is decoded again
        rec.finish()
        assert len(decodes) == 3
    finally:
        del model.decode
    assert speech.wer(text, peeked.text) <= 0.2


def test_end_odds_say_whether_the_sentence_ends_there(
    recorded: list[tuple[str, bytes, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the endpointer asks at a 200 ms pause: nearly every whole sentence is sure
    to end (odds >= sure_end_odds: a list of digits read out with commas may not be);
    the lead-in before a comma ("Hi,") is not; a decode that the token bound cut off
    cannot say."""
    model = speech.english().load()
    sure = VadSettings().sure_end_odds
    unsure = []
    for text, wide, _ in recorded:
        pcm = np.frombuffer(wide, np.int16)
        spans = speech.sentence_spans(pcm, 16000, gap_s=0.15)
        said = model.decode(pcm[: int((spans[-1][1] + 0.2) * 16000)].astype(np.float32) / 32768)
        assert said.end_odds is not None, (text, said)
        if said.end_odds < sure:
            unsure.append(said)
    assert len(unsure) <= 2, unsure
    text, wide, _ = recorded[0]
    assert text.startswith("Hi, ")
    pcm = np.frombuffer(wide, np.int16)
    lead_in = speech.sentence_spans(pcm, 16000, gap_s=0.15)[0]
    said = model.decode(pcm[: int((lead_in[1] + 0.2) * 16000)].astype(np.float32) / 32768)
    assert said.text == "Hi," and said.end_odds is not None and said.end_odds < sure
    monkeypatch.setattr(moonshine_backend, "TOKENS_PER_SECOND", 1.0)  # 6 tokens in 2.9 s
    assert model.decode(pcm.astype(np.float32) / 32768).end_odds is None


def test_dense_speech_near_eight_seconds_is_not_lost(tmp_path: Path) -> None:
    """One sentence said three times, 8.0 s without a pause long enough to end the
    utterance: decoded whole, the model answered nothing at all (its first token was the
    end token), and the caller's words vanished from the transcript."""
    sentence = "Please call me back tomorrow morning."
    pcm = pcm16(speech.piper_script([sentence], tmp_path / "callback.wav")) * 3
    assert len(pcm) / 32000 > 7.9
    rec = speech.english().create()
    rec.accept(pcm)
    assert speech.wer(" ".join([sentence] * 3), rec.finish().text) <= 0.1


def test_a_long_piece_the_model_gives_up_on_is_decoded_again_in_halves() -> None:
    """The guard behind the piece length: whatever length the model fails at, a long
    piece that comes back empty is tried again in two halves (the model stands in)."""
    model = speech.english().load()
    seen: list[float] = []

    def gives_up_past_five_seconds(audio: np.ndarray) -> Decoded:
        seen.append(len(audio) / 16000)
        return Decoded("" if len(audio) > 5 * 16000 else f"{len(audio) // 16000} s")

    model._transcribe = gives_up_past_five_seconds  # type: ignore[method-assign]
    try:
        assert model.transcribe(np.zeros(6 * 16000, np.float32)) != ""
        # whole, with a lead-in of silence (still too long for it), then in halves
        assert seen[:2] == [6.0, 6.25] and len(seen) == 4 and seen[2] + seen[3] == 6.0
        seen.clear()
        assert model.transcribe(np.zeros(3 * 16000, np.float32)) == "3 s"  # short: once
        assert seen == [3.0]
    finally:
        del model._transcribe


def test_speech_that_starts_with_its_first_word_is_read(tmp_path: Path) -> None:
    """Cut at its first voiced frame, as the VAD may hand it on, a robotic voice on a
    phone line came back empty from the model, the whole sentence: 73 of 651 phone
    utterances of the emotion set. Tried again with a lead-in of silence, it is read."""
    said = "You people are completely useless."
    wav = speech.phone_line(speech.espeak(said, "en-us+m3", tmp_path / "a.wav"), tmp_path / "p.wav")
    pcm = np.frombuffer(pcm16(wav), "<i2")
    vad = webrtcvad.Vad(2)
    first = next(
        i for i in range(0, len(pcm) - 319, 320) if vad.is_speech(pcm[i : i + 320].tobytes(), 16000)
    )
    heard = transcribe(pcm[first:].tobytes())
    assert speech.wer(said, heard) <= 0.2, heard


def test_word_times_follow_the_voiced_audio() -> None:
    silence = np.zeros(16000, np.int16)
    tone = (8000 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 220)).astype(np.int16)
    words = estimate_word_times("Hello there, friend.", np.concatenate([silence, tone, silence]))
    assert [w.word for w in words] == ["Hello", "there,", "friend."]
    assert words[0].start == pytest.approx(1.0, abs=0.02)
    assert words[-1].end == pytest.approx(2.0, abs=0.02)
    assert all(a.end <= b.start + 0.011 for a, b in zip(words, words[1:], strict=False))
    assert estimate_word_times("", silence) == []


def test_cli_prepares_the_same_bytes_and_a_corrupt_model_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Conversion is deterministic (same bytes as the shared test model); a corrupt file
    is named at load, and ``ensure`` converts it again."""
    shared = Path(speech.english().model_path)
    monkeypatch.setenv("CCENGINE_MODEL_DIRS", json.dumps([str(tmp_path)]))
    assert main(["models", "en"]) == 0
    assert "prepared: not yet" in capsys.readouterr().out
    assert main(["models", "prepare"]) == 0
    made = tmp_path / shared.name
    assert (made / MANIFEST).read_text() == (shared / MANIFEST).read_text()
    assert main(["models", "en"]) == 0
    assert "prepared: not yet" not in capsys.readouterr().out

    broken = tmp_path / "broken"
    shutil.copytree(made, broken)
    with (broken / "encoder_model.onnx").open("r+b") as f:
        f.truncate(1000)
    with pytest.raises(ModelPrepareError, match=r"encoder_model.onnx is corrupt"):
        MoonshineModel(broken)
    with pytest.raises(ModelPrepareError, match=r"is missing"):
        verify(tmp_path / "nowhere")
    (made / "decoder_model_merged.onnx").write_bytes(b"junk")
    assert ensure(made) == made  # converted again
    verify(made)
