from pathlib import Path

import numpy as np
import pytest

from media.audio import AnalysisResampler
from media.vad import SpeechFrame, SpeechSegmenter, UtteranceEnded, UtteranceStarted, VadSettings
from media.wavtrack import read_wav_mono
from tests import speech


def segment(pcm: np.ndarray, rate: int, settings: VadSettings | None = None) -> list[object]:
    seg = SpeechSegmenter(settings or VadSettings())
    return [ev for f in AnalysisResampler().push(pcm, rate) for ev in seg.push(f)]


@pytest.fixture(scope="module")
def two_sentences(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vad") / "two.wav"
    return speech.piper_script(
        ["I would like to pay my bill.", "My account number is seven."], path
    )


def test_speech_and_silence_make_utterances(two_sentences: Path) -> None:
    pcm, rate = read_wav_mono(str(two_sentences))
    silence = np.zeros(rate, dtype=np.int16)
    events = segment(np.concatenate([silence, pcm, silence]), rate)
    starts = [e for e in events if isinstance(e, UtteranceStarted)]
    ends = [e for e in events if isinstance(e, UtteranceEnded)]
    assert len(starts) == len(ends) == 2
    assert starts[0].start == pytest.approx(1.0, abs=0.35)
    assert all(e.end > s.start for s, e in zip(starts, ends, strict=True))
    assert ends[0].end < starts[1].start
    # silence is not sent on: speech frames cover well under the whole input
    n_speech = sum(isinstance(e, SpeechFrame) for e in events)
    assert n_speech * 0.02 < len(pcm) / rate


def test_silence_and_hum_are_not_speech() -> None:
    rate = 16000
    t = np.arange(rate * 3) / rate
    hum = (0.05 * np.sin(2 * np.pi * 50 * t) * 32767).astype(np.int16)
    assert not [e for e in segment(np.zeros(rate * 3, np.int16), rate) if not isinstance(e, int)]
    assert not [e for e in segment(hum, rate) if isinstance(e, UtteranceStarted)]


def test_long_speech_is_cut(two_sentences: Path) -> None:
    pcm, rate = read_wav_mono(str(two_sentences))
    events = segment(pcm, rate, VadSettings(max_utterance_s=1.0))
    ends = [e for e in events if isinstance(e, UtteranceEnded)]
    assert any(e.cut for e in ends)
    assert all(e.end - e.start <= 1.0 + 0.02 for e in ends)


def test_aggressiveness_is_validated() -> None:
    with pytest.raises(ValueError, match="0..3"):
        VadSettings(aggressiveness=4)
