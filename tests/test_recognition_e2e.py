"""Recognition in worker processes, seen from a real engine and a real caller."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from tests import speech
from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller

pytestmark = pytest.mark.integration


def recognition_workers(engine: EngineProcess) -> list[psutil.Process]:
    assert engine.proc is not None
    children = psutil.Process(engine.proc.pid).children()
    return [p for p in children if "media.asr.worker" in " ".join(p.cmdline())]


async def test_a_killed_worker_costs_one_utterance_not_the_call(tmp_path: Path) -> None:
    """The recognition worker is killed (SIGKILL, as the OOM killer would) mid-call: the
    caller's stream says why (``asr.failed``), the call goes on, and the next
    utterances are transcribed by the restarted worker. Moonshine lets go of the GIL, so
    the two lanes asked for are threads of one process (one copy of the model)."""
    wav = speech.piper_script([*speech.CALM_SCRIPT, *speech.ANGRY_SCRIPT[:3]], tmp_path / "c.wav")
    engine = EngineProcess(tmp_path / "engine", CCENGINE_ASR_WORKERS="2").start()
    try:
        before = recognition_workers(engine)
        assert len(before) == 1
        caller = Caller(engine.url, wav)
        try:
            await caller.dial()
            first = await caller.wait_for("transcript.final", within=30)
            for worker in before:
                os.kill(worker.pid, signal.SIGKILL)
            failed = await caller.wait_for("asr.failed", within=20)
            assert "SIGKILL" in failed["reason"] and failed["recovered"] is True
            assert failed["speaker"] == "caller" and failed["index"] > first["index"]
            await caller.talk_and_hang_up()
        finally:
            await caller.close()
        record = await caller.call_record()
        after = recognition_workers(engine)
    finally:
        engine.stop()
    assert record["end_reason"] == "remote_closed", record["end_reason"]
    finals = [e for e in caller.events if e["type"] == "transcript.final"]
    later = [e for e in finals if e["speaker"] == "caller" and e["index"] > failed["index"]]
    heard = " ".join(e["text"] for e in later)
    assert len(record["transcript"]) == len(finals)  # what was heard was kept
    # the angry sentences come last: the restarted worker heard them
    assert {"angry", "fed", "service"} & set(speech.normalize(heard)), heard
    assert len(after) == 1 and not {p.pid for p in after} & {p.pid for p in before}


async def test_a_model_that_fails_to_load_is_named_at_start_and_on_the_call(
    tmp_path: Path,
) -> None:
    """A broken model (here a vosk folder with empty files) must not stop the engine
    or crash a call: the log names it at start, and a call in that language is
    answered, says why it is not transcribed (``asr.failed``) and ends normally."""
    broken = tmp_path / "models" / "vosk-model-small-fr-0.22"
    (broken / "am").mkdir(parents=True)
    (broken / "am" / "final.mdl").write_bytes(b"")
    (broken / "conf").mkdir()
    engine = EngineProcess(
        tmp_path / "engine",
        CCENGINE_MODEL_DIRS=f'["{tmp_path / "models"}"]',
        CCENGINE_PRELOAD_LANGUAGES='["fr"]',
    ).start()
    try:
        wav = speech.espeak("Bonjour, je voudrais parler à quelqu'un.", "fr", tmp_path / "fr.wav")
        caller = Caller(engine.url, wav, language="fr")
        try:
            answer = await caller.dial()
            assert answer["recognizer"] == "vosk"
            failed = await caller.wait_for("asr.failed", within=20)
            await caller.talk_and_hang_up(tail=0.5)
        finally:
            await caller.close()
        record = await caller.call_record()
    finally:
        engine.stop()
    log = engine.log.read_text()
    assert "a model failed to load at start" in log and str(broken) in log
    assert str(broken) in failed["reason"] and failed["recovered"] is False
    assert record["end_reason"] == "remote_closed" and record["transcript"] == []
