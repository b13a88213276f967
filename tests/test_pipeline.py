"""The leg pipeline in-process, with the real Moonshine recognizer and real speech:
adaptive end of speech, and a recognizer lost mid-utterance."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from media.asr.base import AsrResult, RecognizerLost
from media.asr.local import LocalRecognizer
from media.events import EmotionEstimated, MediaEvent, RecognitionFailed, TranscriptFinal
from media.pipeline import LegPipeline
from media.wavtrack import read_wav_mono
from tests import speech

SCRIPT = ["I would like to cancel my order, please.", "Thank you so much."]


@pytest.fixture(scope="module")
def turn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speech.piper_script(SCRIPT, tmp_path_factory.mktemp("pipeline") / "turn.wav")


async def play(pipeline: LegPipeline, wav: Path) -> None:
    """In real time, 20 ms a frame: end of speech is about waiting, so time must pass."""
    pcm, rate = read_wav_mono(str(wav))
    audio = np.concatenate([pcm, np.zeros(rate, np.int16)])
    step = rate // 50
    await pipeline.start()
    t0 = time.monotonic()
    for n, i in enumerate(range(0, len(audio), step)):
        pipeline.push_pcm(audio[i : i + step], rate, 1)
        await asyncio.sleep(max(0.0, t0 + (n + 1) * 0.02 - time.monotonic()))
    await pipeline.close()


async def finals_of(wav: Path, punctuated: bool) -> list[TranscriptFinal]:
    events: list[MediaEvent] = []
    with ThreadPoolExecutor(2) as pool:

        async def opener() -> LocalRecognizer:
            return LocalRecognizer(speech.english().create(), pool)

        await play(LegPipeline("leg", opener, pool, events.append, punctuated=punctuated), wav)
    return [e for e in events if isinstance(e, TranscriptFinal)]


@pytest.mark.serial
async def test_a_complete_sentence_ends_sooner(turn: Path) -> None:
    """At a pause the recognizer is asked what was said: a complete sentence ends after
    280-380 ms of silence (by how sure the recognizer is that it ends there; 440 if it
    reads as incomplete), not the ratio rule's 450-580 ms, and is not split at its
    comma."""
    fixed = await finals_of(turn, punctuated=False)
    adaptive = await finals_of(turn, punctuated=True)
    assert len(fixed) == len(adaptive) == 2, [f.text for f in adaptive]
    assert speech.wer(" ".join(SCRIPT), " ".join(f.text for f in adaptive)) <= 0.1
    for a, f in zip(adaptive, fixed, strict=True):
        assert a.asr_latency < 0.47 and f.asr_latency > 0.42
        assert a.asr_latency < f.asr_latency - 0.05


@pytest.mark.serial
async def test_a_sentence_split_at_a_pause_is_felt_as_one_turn(tmp_path: Path) -> None:
    """Half a second of silence inside a sentence ends an utterance (the endpointer's
    windows are 280-480 ms), and the part after it is judged with the part before;
    a sentence 1.2 s later is a new turn."""
    said = ["After all that back and forth,", "it finally works, thank you so much.", "Bye."]
    parts = []
    for n, (sentence, pause) in enumerate(zip(said, (0.5, 1.2, 0.0), strict=True)):
        pcm, rate = read_wav_mono(str(speech.piper_script([sentence], tmp_path / f"{n}.wav")))
        # piper_script ends each sentence with its own pause (dithered): this one's instead
        pcm = pcm[: np.flatnonzero(np.abs(pcm) > 300)[-1] + 1]
        parts += [pcm, np.zeros(int(pause * rate), np.int16)]
    wav = speech.write_wav(tmp_path / "turn.wav", np.concatenate(parts), rate)
    events: list[MediaEvent] = []
    with ThreadPoolExecutor(2) as pool:

        async def opener() -> LocalRecognizer:
            return LocalRecognizer(speech.english().create(), pool)

        await play(LegPipeline("leg", opener, pool, events.append, punctuated=True), wav)
    finals = [e.text for e in events if isinstance(e, TranscriptFinal)]
    felt = [e.estimate for e in events if isinstance(e, EmotionEstimated)]
    # split at the half second at least (and at times at "works," as well)
    assert len(finals) >= 3 and len(felt) == len(finals), finals
    assert [e.continues for e in felt] == [False] + [True] * (len(felt) - 2) + [False], finals
    assert felt[-2].label == "positive" and felt[-2].call_label == "positive"


class LosesFirstUtterance:
    """A recognizer whose worker dies while it finishes the first utterance."""

    def __init__(self, inner: LocalRecognizer) -> None:
        self.inner = inner

    async def accept(self, pcm: bytes) -> str | None:
        return await self.inner.accept(pcm)

    async def peek(self) -> AsrResult:
        return await self.inner.peek()

    async def finish(self) -> AsrResult:
        raise RecognizerLost("recognition worker 0 exited (signal 9, SIGKILL)")

    async def close(self) -> None:
        await self.inner.close()


async def test_a_lost_recognizer_costs_one_utterance(turn: Path) -> None:
    events: list[MediaEvent] = []
    opened = 0
    with ThreadPoolExecutor(2) as pool:

        async def opener() -> LocalRecognizer | LosesFirstUtterance:
            nonlocal opened
            opened += 1
            rec = LocalRecognizer(speech.english().create(), pool)
            return LosesFirstUtterance(rec) if opened == 1 else rec

        await play(LegPipeline("leg", opener, pool, events.append, punctuated=True), turn)
    [failed] = [e for e in events if isinstance(e, RecognitionFailed)]
    assert failed.index == 0 and failed.recovered and "SIGKILL" in failed.reason
    [final] = [e for e in events if isinstance(e, TranscriptFinal)]
    assert final.index == 1 and speech.wer(SCRIPT[1], final.text) <= 0.25
    assert opened == 2


class Stuck:
    """A recognizer whose worker has stopped answering."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()

    async def accept(self, pcm: bytes) -> str | None:
        await self.answer.wait()
        return None

    async def peek(self) -> AsrResult:
        await self.answer.wait()
        return AsrResult("")

    async def finish(self) -> AsrResult:
        await self.answer.wait()
        return AsrResult("")

    async def close(self) -> None:
        return None


async def test_speech_waiting_for_the_recognizer_is_counted(turn: Path) -> None:
    """Admission reads the backlog: the speech queued in a leg (it sends one request at
    a time) must count, not only what reached a worker (a pocketsphinx node fell 15 s
    behind while the pool reported 1.6 s)."""
    stuck = Stuck()

    async def opener() -> Stuck:
        return stuck

    with ThreadPoolExecutor(1) as pool:
        pipeline = LegPipeline("leg", opener, pool, lambda ev: None)
        await pipeline.start()
        pcm, rate = read_wav_mono(str(turn))
        pipeline.push_pcm(pcm[: rate * 2], rate, 1)  # two seconds of speech at once
        assert 1.2 <= pipeline.backlog_seconds <= 2.0
        stuck.answer.set()
        await pipeline.close()
        assert pipeline.backlog_seconds == 0
