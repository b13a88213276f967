"""The desktop softphone, ``ccengine phone --agent``, with WAV files as its sound devices."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from media.wavtrack import read_wav_mono
from tests import speech
from tests.engine_proc import ROOT, EngineProcess
from tests.rtc_client import Caller

pytestmark = pytest.mark.integration


async def test_desktop_phone_answers_talks_and_wraps_up(
    tmp_path: Path, voices: dict[str, Path]
) -> None:
    engine = EngineProcess(tmp_path / "phone").start()
    engine.add_user("ann", "pw-ann-1", "--name", "Ann Lee")
    ann_wav = speech.piper_script(
        ["Hello, this is Ann from customer care.", "I can help you with that right now."],
        tmp_path / "ann.wav",
    )
    heard_wav = tmp_path / "heard.wav"
    phone = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.cli", "phone", "--agent", "ann", "--url", engine.url,
        "--input-wav", str(ann_wav), "--output-wav", str(heard_wav), "--auto-answer",
        "--calls", "1", "--disposition", "resolved", "--notes", "Sorted on the phone.",
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert phone.stdin is not None and phone.stdout is not None
    phone.stdin.write(b"pw-ann-1\n")
    await phone.stdin.drain()
    phone.stdin.close()
    caller = Caller(engine.url, voices["angry"])
    try:
        line = await asyncio.wait_for(phone.stdout.readline(), 30)
        assert b"signed in as Ann Lee; available" in line, line
        await caller.dial()
        await caller.talk_and_hang_up(tail=8.0, end_timeout=30)
        out, _ = await asyncio.wait_for(phone.communicate(), 30)
        record = await caller.call_record()
    finally:
        await caller.close()
        if phone.returncode is None:
            phone.kill()
        engine.stop()
    text = line.decode() + out.decode()
    print(text)
    assert phone.returncode == 0
    assert "Incoming call from unknown caller (webrtc)" in text and "why: caller" in text
    assert "[caller]" in text and "[agent]" in text  # both sides of the transcript
    assert "wrapped up (resolved)" in text
    assert record["disposition"] == "resolved"
    assert [n["text"] for n in record["notes"]] == ["Sorted on the phone."]
    heard, rate = read_wav_mono(str(heard_wav))
    said = speech.recognise(heard, rate)
    print("the phone heard:", said)
    assert {"person", "service", "angry"} & set(said.split())
    assert "help" in speech.recognise(caller.heard_pcm()).split()


def test_phone_refuses_a_wrong_password(tmp_path: Path) -> None:
    engine = EngineProcess(tmp_path / "phone-bad").start()
    engine.add_user("ann", "pw-ann-1")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "engine.cli", "phone", "--agent", "ann", "--url", engine.url,
             "--auto-answer"],
            cwd=ROOT, input="wrong\n", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        engine.stop()
    assert result.returncode == 1
    assert "sign-in refused: wrong username or password" in result.stderr
