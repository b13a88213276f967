"""The audio fork on a real call: a consumer hears the caller live, as long as the call
lasted, with the words the caller said; audio it sends back reaches the caller."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets

from engine.client import ApiError, Client
from tests import speech
from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller
from tests.sniff import voiced_seconds


def read_wav16k(path: Path) -> np.ndarray:
    sox16 = speech.sox(path, path.with_suffix(".16k.wav"), [], rate=16000)
    with wave.open(str(sox16)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


async def test_fork_hears_the_caller_and_injects_audio(
    engine: EngineProcess, voices: dict[str, Path], tmp_path: Path
) -> None:
    notice = speech.piper_script(["Your replacement card is on its way."], tmp_path / "n.wav")
    inject = read_wav16k(notice)
    caller = Caller(engine.url, voices["calm"])
    messages: list[Any] = []
    url = engine.url.replace("http", "ws", 1)
    try:
        await caller.dial()
        async with websockets.connect(
            f"{url}/api/v1/calls/{caller.call_id}/audio", additional_headers=engine.headers
        ) as ws:
            start = json.loads(await ws.recv())
            mark = len(caller.heard)
            for i in range(0, len(inject), 16000):  # a bot speaks to the caller, 1 s a message
                await ws.send(inject[i : i + 16000].astype("<i2").tobytes())

            async def hang_up_at_the_end() -> None:
                await caller.talk_and_hang_up()

            ending = asyncio.create_task(hang_up_at_the_end())
            async for message in ws:
                messages.append(message)
            await ending
            closed = ws.close_code
        heard_back = caller.heard_pcm(mark)
        record = await caller.call_record()
    finally:
        await caller.close()
    assert start == {
        "type": "start", "call_id": caller.call_id, "encoding": "pcm_s16le",
        "sample_rate": 16000, "frame_ms": 20, "channels": {"0": "caller", "1": "agent"},
    }  # fmt: skip
    stop = json.loads(messages[-1])
    frames = [m for m in messages[:-1] if isinstance(m, bytes)]
    assert stop["type"] == "stop" and closed == 1000
    assert all(len(f) == 641 and f[0] == 0 for f in frames)  # caller channel, 20 ms each
    assert stop["frames"]["caller"] == len(frames) and stop["dropped"] == 0
    pcm = np.frombuffer(b"".join(f[1:] for f in frames), dtype="<i2")
    seconds = len(pcm) / 16000
    # the fork ran from the first media to the hang-up: the call's connected time
    assert abs(seconds - caller.connected_seconds) < 2.0, (seconds, caller.connected_seconds)
    spoken = voiced_seconds(read_wav16k(voices["calm"]), 16000)
    assert voiced_seconds(pcm, 16000) > 0.8 * spoken  # all the speech, not silence
    said = " ".join(u["text"] for u in record["transcript"] if u["speaker"] == "caller")
    heard = speech.recognise(pcm, 16000)
    overlap = set(speech.normalize(said)) & set(speech.normalize(heard))
    assert len(overlap) >= len(set(speech.normalize(said))) // 2, (said, heard)
    # the injected sentence reached the caller's ear
    assert voiced_seconds(heard_back, 48000) > 1.0


async def test_fork_refuses_without_control_and_for_unknown_calls(
    engine: EngineProcess,
) -> None:
    reader = engine.ccengine("keys", "create", "r", "--scope", "read", "--quiet").strip()
    url = engine.url.replace("http", "ws", 1) + "/api/v1/calls/nope/audio"
    codes = []
    for headers in ({}, {"Authorization": f"Bearer {reader}"}, engine.headers):
        async with websockets.connect(url, additional_headers=headers) as ws:
            await ws.wait_closed()
            codes.append(ws.close_code)
    assert codes == [4401, 4403, 4404]
    async with Client(engine.url, api_key=reader) as cc:
        with pytest.raises(ApiError) as refused:
            async for _ in cc.audio("nope"):
                pass
    assert refused.value.status == 4403 and "control" in refused.value.detail
