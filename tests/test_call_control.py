"""Call control by a program with a key: prompts spoken to a live caller, notes on
calls, and who may do it."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest

from engine.client import ApiError, Client
from tests import speech
from tests.engine_proc import EngineProcess
from tests.rtc_client import Caller
from tests.sniff import voiced_seconds


async def test_a_control_key_speaks_to_the_caller_and_annotates(
    engine: EngineProcess, voices: dict[str, Path]
) -> None:
    control = engine.ccengine("keys", "create", "ivr-bot", "--scope", "control", "--quiet")
    reader = engine.ccengine("keys", "create", "wallboard", "--scope", "read", "--quiet")
    caller = Caller(engine.url, voices["calm"])
    try:
        await caller.dial()
        await caller.wait_for("call.state_changed", state="active")
        async with (
            Client(engine.url, api_key=control.strip()) as bot,
            Client(engine.url, api_key=reader.strip()) as wallboard,
            Client(engine.url, token=caller.answer["caller_token"]) as own,
        ):
            mark = len(caller.heard)
            played = await bot.play(caller.call_id, "Your replacement card ships tomorrow.")
            assert played.queued_behind == 0
            await asyncio.sleep(4)
            heard = caller.heard_pcm(mark)
            note = await bot.annotate(caller.call_id, "Card 4111 1111 1111 1111 reported lost")
            assert await bot.send_dtmf(caller.call_id, "5") == "inband"  # a browser: tones
            with pytest.raises(ApiError) as bad_key:
                await bot.send_dtmf(caller.call_id, "5x")
            assert bad_key.value.status == 422
            for who in (wallboard, own):
                with pytest.raises(ApiError) as refused:
                    await who.annotate(caller.call_id, "x")
                assert refused.value.status == 403
            with pytest.raises(ApiError) as not_bridged:
                await bot.hold(caller.call_id)  # past auth, to the call's own rules
            assert (
                not_bridged.value.status == 409 and "not with an agent" in not_bridged.value.detail
            )
            with pytest.raises(ApiError) as unknown:
                await bot.play("nope", "hello")
            assert unknown.value.status == 404
            engine.add_user("max", "pw-max-123")
            async with Client(engine.url) as max_:  # an agent, but not on this call
                await max_.login("max", "pw-max-123")
                for action in (max_.hangup, max_.record):
                    with pytest.raises(ApiError) as not_his:
                        await action(caller.call_id)
                    assert (
                        not_his.value.status == 403 and "not on your line" in not_his.value.detail
                    )
        await caller.talk_and_hang_up()
    finally:
        await caller.close()
    record = await caller.call_record()
    assert voiced_seconds(heard, 48000) > 1.0
    words = set(speech.normalize(speech.recognise(heard)))
    assert words & {"replacement", "card", "ships", "tomorrow"}, words
    assert note.author == "api:ivr-bot" and note.kind == "note"
    assert "4111" not in note.text  # redacted like everything else kept
    assert [n["text"] for n in record["notes"]] == [note.text]
    annotated = [e for e in caller.events if e["type"] == "call.annotated"]
    assert [(e["author"], e["text"]) for e in annotated] == [("api:ivr-bot", note.text)]


async def test_recording_with_a_pause_is_one_stereo_wav(
    engine: EngineProcess, voices: dict[str, Path]
) -> None:
    caller = Caller(engine.url, voices["calm"])
    async with Client(engine.url, api_key=engine.api_key) as cc:
        try:
            await caller.dial()
            await caller.wait_for("call.state_changed", state="active")
            with pytest.raises(ApiError) as nothing:
                await cc.record(caller.call_id, on=False)
            assert nothing.value.status == 409
            await cc.record(caller.call_id)
            await asyncio.sleep(3)
            await cc.record(caller.call_id, on=False)  # the caller reads out a card number
            await asyncio.sleep(3)
            await cc.record(caller.call_id)
            with pytest.raises(ApiError) as live:
                await cc.recording(caller.call_id)
            assert live.value.status == 409
            await caller.talk_and_hang_up()
        finally:
            await caller.close()
        wav = await cc.recording(caller.call_id)
        with pytest.raises(ApiError) as missing:
            await cc.recording("nope")
        assert missing.value.status == 404
    changes = [e for e in caller.events if e["type"] == "recording.changed"]
    assert [e["recording"] for e in changes] == [True, False, True]
    assert all(e["by"] == "api:tests" for e in changes)
    path = engine.workdir / "rec.wav"
    path.write_bytes(wav)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 16000)
        stereo = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    left, right = stereo[:, 0], stereo[:, 1]
    started, paused, resumed = (e["at"] for e in changes)
    # from the first start to the hang-up, on the call's own clock
    assert abs(len(stereo) / 16000 - (caller.connected_seconds - started)) < 2.0
    gap = left[int((paused - started + 0.1) * 16000) : int((resumed - started - 0.1) * 16000)]
    assert len(gap) > 2 * 16000 and not gap.any(), "the paused stretch is silent"
    assert voiced_seconds(left[: int((paused - started) * 16000)], 16000) > 0.5
    assert voiced_seconds(left[int((resumed - started) * 16000) :], 16000) > 2.0
    assert not right.any()  # no agent on this call
    said = set(speech.normalize(speech.recognise(left, 16000)))
    assert len(said) > 5
    kept = sorted(p.name for p in (engine.workdir / "recordings").iterdir())
    assert kept == [f"{caller.call_id}.wav"]  # the raw sides are gone
