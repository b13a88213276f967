"""The vosk and pocketsphinx backends on real speech, streamed the way the pipeline feeds
them (Moonshine has its own file, tests/test_moonshine.py)."""

from pathlib import Path

import numpy as np
import pytest

from media.asr import AsrResult, choose_model, create_factory
from media.audio import AnalysisResampler
from media.wavtrack import read_wav_mono
from tests import speech

KOREAN_PHRASES = ["안녕하세요", "주문", "확인", "부탁드립니다", "취소", "감사합니다"]


def stream(
    path: Path, language: str, phrases: list[str] | None = None, prefer: str | None = None
) -> tuple[list[str], AsrResult]:
    factory = create_factory(choose_model(language, [], prefer))
    assert factory is not None
    rec = factory.create(phrases)
    pcm, rate = read_wav_mono(str(path))
    frames = AnalysisResampler().push(pcm, rate)
    partials = []
    for i in range(0, len(frames), 5):  # 100 ms chunks, like LegPipeline
        chunk = b"".join(f.to_bytes() for f in frames[i : i + 5])
        if (p := rec.accept(chunk)) is not None:
            partials.append(p)
    return partials, rec.finish()


@pytest.fixture(scope="module")
def korean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speech.espeak(
        "안녕하세요. 주문 확인 부탁드립니다.", "ko", tmp_path_factory.mktemp("ko") / "ko.wav"
    )


def test_vosk_streams_partials_then_final_with_word_times(korean: Path) -> None:
    """vosk itself, on the real Korean model package, with a grammar for stability."""
    partials, final = stream(korean, "ko", KOREAN_PHRASES)
    assert partials, "no partial results while speaking"
    assert partials[0] != final.text  # partials grew towards the final
    words = [w.word for w in final.words]
    for expected in ("안녕하세요", "주문", "확인"):
        assert expected in words
    assert words.index("안녕하세요") < words.index("확인")
    # The robotic last word sits on the edge between the two polite endings: over
    # many full-suite runs vosk said either, so either counts (both are in the grammar).
    assert words[-1] in {"부탁드립니다", "감사합니다"}
    times = [(w.start, w.end) for w in final.words]
    assert all(0 <= s < e for s, e in times)
    assert times == sorted(times)
    duration = len(read_wav_mono(str(korean))[0]) / 16000
    assert times[-1][1] <= duration + 0.1


def test_vosk_word_times_restart_each_utterance(korean: Path) -> None:
    factory = create_factory(choose_model("ko", []))
    assert factory is not None
    rec = factory.create(KOREAN_PHRASES)
    pcm, rate = read_wav_mono(str(korean))
    data = b"".join(f.to_bytes() for f in AnalysisResampler().push(pcm, rate))
    results = []
    for _ in range(2):
        for i in range(0, len(data), 3200):
            rec.accept(data[i : i + 3200])
        results.append(rec.finish())
    first, second = (r.words[0].start for r in results)
    assert second == pytest.approx(first, abs=0.3)


def test_pocketsphinx_fallback_on_natural_english(tmp_path: Path) -> None:
    text = "I would like to check the status of my order."
    wav = speech.piper_script([text], tmp_path / "en.wav")
    partials, final = stream(wav, "en", prefer="pocketsphinx")
    assert partials
    assert speech.wer(text, final.text) <= 0.25, final.text
    assert final.words and final.words[0].start < final.words[-1].end


def test_wer_helper() -> None:
    assert speech.wer("I am here", "i'm here") == 0
    assert speech.wer("a b c d", "a x c") == pytest.approx(0.5)
    assert np.isclose(speech.wer("one", ""), 1.0)


def test_pocketsphinx_decoders_are_pooled_across_calls(tmp_path: Path) -> None:
    """A hung-up call's decoder serves the next call (no model load), even when the
    call ended mid-utterance, and it still recognises."""
    factory = create_factory(choose_model("en", [], "pocketsphinx"))
    assert factory is not None and factory.backend == "pocketsphinx"
    wav = speech.piper_script(["I am calling about my order."], tmp_path / "order.wav")
    pcm, rate = read_wav_mono(str(wav))
    frames = [f.to_bytes() for f in AnalysisResampler().push(pcm, rate)]
    first = factory.create()
    for frame in frames[:20]:
        first.accept(frame)  # hung up mid-sentence
    decoder = first._dec  # type: ignore[attr-defined]
    first.close()
    second = factory.create()
    assert second._dec is decoder  # type: ignore[attr-defined]
    for frame in frames:
        second.accept(frame)
    assert "order" in second.finish().text
    second.close()
    second.close()  # closing twice returns it once
    assert factory.create()._dec is decoder  # type: ignore[attr-defined]
    assert factory.create()._dec is not decoder  # type: ignore[attr-defined]


def test_a_decoder_still_decoding_is_not_pooled() -> None:
    factory = create_factory(choose_model("en", [], "pocketsphinx"))
    assert factory is not None
    rec = factory.create()
    decoder = rec._dec  # type: ignore[attr-defined]
    rec._busy.acquire()  # type: ignore[attr-defined]  # a worker thread is inside accept()
    rec.close()
    assert factory.create()._dec is not decoder  # type: ignore[attr-defined]
