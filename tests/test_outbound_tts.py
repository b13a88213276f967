import asyncio
import logging
import threading
import time

import numpy as np
import pytest

from engine.prompts import VoicePrompts
from media.outbound import OutboundAudioTrack
from media.tts import EspeakSpeaker, PiperSpeaker, Speaker
from media.wavtrack import FRAME, SEND_RATE


async def test_clips_play_in_order_then_silence() -> None:
    track = OutboundAudioTrack()
    one = track.play(np.full(FRAME * 2, 1000, np.int16), SEND_RATE)
    two = track.play(np.full(FRAME, -1000, np.int16), SEND_RATE)
    frames = [(await track.recv()).to_ndarray()[0] for _ in range(4)]
    assert [int(f[0]) for f in frames] == [1000, 1000, -1000, 0]
    assert one.done() and two.done()
    assert track.speech_frames_sent == 3 and track.frames_sent == 4
    track.stop()


async def test_clear_cancels_what_is_queued() -> None:
    track = OutboundAudioTrack()
    fut = track.play(np.ones(SEND_RATE, np.int16), SEND_RATE)
    await track.recv()
    track.clear()
    assert fut.cancelled()
    assert int((await track.recv()).to_ndarray().max()) == 0
    track.stop()


async def test_paced_in_real_time() -> None:
    track = OutboundAudioTrack()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(25):
        await track.recv()
    assert loop.time() - start == pytest.approx(0.48, abs=0.15)
    track.stop()


async def test_queue_is_bounded() -> None:
    track = OutboundAudioTrack()
    fut = track.play(np.zeros(SEND_RATE * 121, np.int16), SEND_RATE)
    with pytest.raises(OverflowError):
        await fut
    track.stop()


def test_piper_prompts_are_intelligible() -> None:
    """The default prompt voice: the engine's English recognizer hears the words."""
    from media.audio import AnalysisResampler
    from tests import speech
    from tests.speech import wer

    speaker = PiperSpeaker()
    # piper samples noise, so each synthesis differs; over 8 runs this prompt scored
    # 0.2-0.3 WER (a 5-word one swung from 0 to 0.5: "please hold" -> "police old")
    text = "Thank you for waiting. You are number one in line."
    pcm, rate = speaker.speak(text)
    assert np.array_equal(speaker.speak(text)[0], pcm)  # cached: piper would differ
    frames = AnalysisResampler().push(np.concatenate([pcm, np.zeros(rate // 2, np.int16)]), rate)
    rec = speech.english().create()
    rec.accept(b"".join(f.to_bytes() for f in frames))
    heard = rec.finish().text
    assert wer(text, heard) <= 0.5, heard


def test_espeak_fallback_speaks() -> None:
    """espeak-ng is robotic (pocketsphinx, trained on people, cannot follow it), so we
    check what we can: voiced, speech-length audio, longer for longer text."""
    from media.audio import AnalysisResampler
    from media.emotion import pitch_track

    speaker = EspeakSpeaker()
    short, rate = speaker.speak("Please hold.")
    long, _ = speaker.speak("Please hold. An agent will be with you in about two minutes.")
    assert 0.5 < len(short) / rate < 2.5
    assert len(long) > 2.5 * len(short)
    analysed = np.concatenate([f.samples for f in AnalysisResampler().push(long, rate)])
    f0 = pitch_track(analysed)
    assert (f0 > 0).mean() > 0.3
    assert 70 < float(np.median(f0[f0 > 0])) < 250


async def test_live_audio_follows_clips_and_stays_short() -> None:
    """Bridged audio plays when no prompt does, and a backlog is dropped rather than
    letting the conversation fall seconds behind."""
    track = OutboundAudioTrack()
    track.play(np.full(FRAME, 7, np.int16), SEND_RATE)
    track.push_live(np.full(FRAME * 2, 3, np.int16))
    assert [int((await track.recv()).to_ndarray()[0][0]) for _ in range(4)] == [7, 3, 3, 0]
    track.push_live(np.ones(SEND_RATE, np.int16))  # a second arrives at once
    assert track.live_dropped >= SEND_RATE - SEND_RATE * 3 // 10
    track.stop()


def test_the_prompt_voice_loads_one_single_threaded_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PiperVoice.load made a default (all-cores) session that was then replaced by a
    one-thread one: ~100 MB of the engine process held for nothing."""
    import onnxruntime

    made: list[int] = []
    real = onnxruntime.InferenceSession

    def counting(*args: object, **kwargs: object) -> object:
        session = real(*args, **kwargs)  # type: ignore[arg-type]
        made.append(session.get_session_options().intra_op_num_threads)
        return session

    monkeypatch.setattr(onnxruntime, "InferenceSession", counting)
    speaker = PiperSpeaker()
    assert made == [1]
    pcm, rate = speaker.speak("Please hold.")
    assert rate == 22050 and len(pcm) > rate // 2


def test_a_queue_announcement_makes_only_its_new_sentence() -> None:
    """Every caller's place in line was a new text, synthesised whole: with 16 callers
    waiting, piper took ~10 % of the engine's CPU. A voice that makes each sentence on
    its own anyway is now asked sentence by sentence, and the sentences announcements
    share come from the cache."""
    from engine.callstate import queue_announcement
    from media.tts import Speaker

    class Counting(Speaker):
        name = "counting"
        by_sentence = True

        def __init__(self) -> None:
            super().__init__()
            self.made: list[str] = []

        def _synthesize(self, text: str) -> tuple[np.ndarray, int]:
            self.made.append(text)
            return np.full(len(text), len(self.made), np.int16), 22050

    speaker = Counting()
    first, rate = speaker.speak(queue_announcement(4, None))
    speaker.made.clear()
    second, _ = speaker.speak(queue_announcement(5, None))
    assert speaker.made == ["You are number 5 in line."]
    assert rate == 22050 and len(second) == len(queue_announcement(5, None)) - 3  # spaces
    speaker.speak("Dr. Smith will call you back. Thank you.")
    assert speaker.made[-2:] == ["Dr. Smith will call you back.", "Thank you."]


async def test_stopping_during_the_prompt_warm_up_logs_no_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An engine stopped while its prompts were still being made logged "could not
    synthesise" with a traceback for each stop: the warm-up went on into a shut executor.
    Stopping now ends the warm-up first."""
    started = threading.Event()

    class Slow(Speaker):
        name = "slow"

        def _synthesize(self, text: str) -> tuple[np.ndarray, int]:
            started.set()
            time.sleep(0.2)
            return np.zeros(160, np.int16), 16000

    prompts = VoicePrompts("unused", int8=False)
    prompts.speaker = Slow()
    prompts._to_warm.extend(["one", "two", "three"])
    prompts._warmup = asyncio.create_task(prompts._warm(prompts.speaker))
    await asyncio.to_thread(started.wait, 5)
    with caplog.at_level(logging.ERROR, logger="engine.prompts"):
        prompts.stop()
        await asyncio.sleep(0.5)
    assert prompts._warmup.done()
    assert not [r for r in caplog.records if "could not synthesise" in r.getMessage()]
