"""The int8 prompt voice (media/piper_convert.py): made once, deterministic, checked at
load, recognised as well as the float voice, and the memory it saves is really saved."""

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from media import piper_convert
from media.model_files import MANIFEST, ModelPrepareError, verify
from media.tts import PiperSpeaker, default_speaker
from tests import speech

ROOT = Path(__file__).resolve().parent.parent

# contact-center sentences none of the engine's prompts says (engine/callstate.py)
SENTENCES = [
    "I would like to change the address on my account.",
    "My internet has been down since yesterday evening.",
    "Can you tell me why my bill is higher this month?",
    "The package was left at the wrong house.",
    "Please cancel my subscription at the end of the month.",
    "Could someone call me back tomorrow morning?",
]


@pytest.fixture(scope="module")
def int8_voice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return piper_convert.ensure(tmp_path_factory.mktemp("models")) / piper_convert.MODEL


def test_conversion_is_quick_deterministic_and_a_corrupt_voice_is_made_again(
    int8_voice: Path, tmp_path: Path
) -> None:
    """Made in about a second at the first start; the same bytes every time (the manifest
    holds every file's checksum); a truncated file is named and made again."""
    source = piper_convert.source()
    assert source is not None
    start = time.process_time()
    again = piper_convert.ensure(tmp_path)
    assert time.process_time() - start < 15
    assert again.name == int8_voice.parent.name
    assert (again / MANIFEST).read_text() == (int8_voice.parent / MANIFEST).read_text()
    assert (again / piper_convert.CONFIG).read_bytes() == source[1].read_bytes()
    assert (again / piper_convert.MODEL).stat().st_size < 0.3 * source[0].stat().st_size
    model = onnx.load(str(again / piper_convert.MODEL))
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in model.graph.node if n.op_type in piper_convert.QUANTIZED_OPS]
    assert sum(n.input[1] in dequantized for n in convs) > 0.8 * len(convs)

    start = time.monotonic()
    assert piper_convert.ensure(tmp_path) == again  # cached: no work
    assert time.monotonic() - start < 1
    with (again / piper_convert.MODEL).open("r+b") as f:
        f.truncate(1000)
    with pytest.raises(ModelPrepareError, match=r"voice.onnx is corrupt"):
        verify(again)
    assert piper_convert.ensure(tmp_path) == again
    assert (again / MANIFEST).read_text() == (int8_voice.parent / MANIFEST).read_text()


def test_quantized_weights_come_back_within_half_a_step() -> None:
    weights = np.random.default_rng(1).normal(size=(8, 4, 3)).astype(np.float32)
    weights[3] = 0  # an all-zero channel keeps a usable scale
    q, scale = piper_convert.quantize(weights, 0)
    assert q.dtype == np.int8 and scale.shape == (8,) and scale[3] == 1
    back = q.astype(np.float32) * scale[:, None, None]
    assert np.all(np.abs(back - weights) <= scale[:, None, None] / 2 + 1e-7)


def test_the_int8_voice_is_recognised(int8_voice: Path) -> None:
    """What callers hear from the int8 voice, the engine's recognizer hears as written.
    Over 30 sentences and 3 noise seeds the WER was 1.4 % (float voice 1.1 %); a broken
    conversion (a wrong scale, a transposed kernel) gives noise or mumbling."""
    import onnxruntime

    # piper's noise comes from random nodes seeded when the session is made
    onnxruntime.set_seed(7)
    speaker = PiperSpeaker(str(int8_voice))
    errors = words = 0
    heard = []
    for text in SENTENCES:
        pcm, rate = speaker.speak(text)
        x = pcm.astype(np.float64) / 32768
        assert -30 < 20 * np.log10(np.sqrt((x**2).mean())) < -10, text  # not faint or loud
        got = speech.recognise(np.concatenate([pcm, np.zeros(rate // 2, np.int16)]), rate)
        heard.append(got)
        n = len(speech.normalize(text))
        errors += round(speech.wer(text, got) * n)
        words += n
    assert errors / words <= 0.08, heard


def test_a_voice_that_does_not_load_falls_back_to_the_float_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / piper_convert.MODEL
    broken.write_bytes(b"not a model")
    source = piper_convert.source()
    assert source is not None
    (tmp_path / piper_convert.CONFIG).write_bytes(source[1].read_bytes())
    with caplog.at_level(logging.WARNING, logger="media.tts"):
        speaker = default_speaker(str(broken))
    assert isinstance(speaker, PiperSpeaker)
    assert "the int8 prompt voice does not load" in caplog.text
    pcm, rate = speaker.speak("Please hold.")
    assert len(pcm) > rate // 2


def test_models_prepare_makes_the_voice_unless_opted_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.cli import main

    moonshine = Path(speech.english().model_path)  # converted already: no 8 s here
    (tmp_path / moonshine.name).symlink_to(moonshine)
    monkeypatch.setenv("CCENGINE_MODEL_DIRS", json.dumps([str(tmp_path)]))
    monkeypatch.setenv("CCENGINE_PROMPT_VOICE_INT8", "false")
    assert main(["models", "prepare"]) == 0
    assert "prompt voice: the float one" in capsys.readouterr().out
    assert not piper_convert.cache_dir(tmp_path).exists()
    monkeypatch.delenv("CCENGINE_PROMPT_VOICE_INT8")
    assert main(["models", "prepare"]) == 0
    out = capsys.readouterr().out
    assert "prompt voice: storing its weights as int8" in out
    assert f"prompt voice: {piper_convert.cache_dir(tmp_path) / piper_convert.MODEL}" in out
    verify(piper_convert.cache_dir(tmp_path))


_MEMORY = """
import sys
from media import malloc
from media.tts import PiperSpeaker

def private():
    with open("/proc/self/smaps_rollup") as f:
        rows = dict(line.split()[:2] for line in f if line.startswith("Private_"))
    return sum(int(v) for v in rows.values()) / 1024

malloc.trim()
before = private()
speaker = PiperSpeaker(sys.argv[1] or None)
speaker.speak("Please hold for a moment. I will be right back with you.")
malloc.trim()
print(private() - before)
"""


def _voice_memory(model: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY, model],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return float(out.stdout.split()[-1])


def test_the_int8_voice_takes_less_memory(int8_voice: Path) -> None:
    """The saving is onnxruntime keeping the weights int8: a version that folded the
    DequantizeLinear nodes back into float constants would undo it silently.
    Measured: float voice +77 MB, int8 +33 MB (a fresh process, after a prompt)."""
    float_mb, int8_mb = _voice_memory(""), _voice_memory(str(int8_voice))
    assert float_mb - int8_mb >= 30, json.dumps({"float": float_mb, "int8": int8_mb})


@pytest.mark.integration
def test_the_engine_makes_the_int8_voice_at_its_first_start_and_can_opt_out(
    tmp_path: Path, int8_voice: Path
) -> None:
    """A real engine: the first start makes the int8 voice into the first models folder
    (in a child process) and speaks with it; a corrupt one is made again; with
    CCENGINE_PROMPT_VOICE_INT8=false it speaks with the float voice and makes nothing."""
    from tests.engine_proc import EngineProcess

    models = tmp_path / "models"
    models.mkdir()
    moonshine = Path(speech.english().model_path)  # converted already: no 8 s here
    (models / moonshine.name).symlink_to(moonshine)
    folder = piper_convert.cache_dir(models)
    dirs = json.dumps([str(models)])

    quick = {"CCENGINE_PRELOAD_LANGUAGES": "[]"}  # the prompt voice is made all the same
    engine = EngineProcess(tmp_path / "one", CCENGINE_MODEL_DIRS=dirs, **quick).start()
    engine.stop()
    log = engine.log.read_text()
    assert "prompt voice: storing its weights as int8" in log
    assert f"prompt voice: piper, int8 weights ({folder / piper_convert.MODEL})" in log
    verify(folder)  # the same bytes as made in this process
    assert (folder / MANIFEST).read_text() == (int8_voice.parent / MANIFEST).read_text()

    (folder / piper_convert.MODEL).write_bytes(b"junk")
    engine = EngineProcess(tmp_path / "two", CCENGINE_MODEL_DIRS=dirs, **quick).start()
    engine.stop()
    log = engine.log.read_text()
    assert "voice.onnx is corrupt" in log and "prompt voice: piper, int8 weights" in log
    verify(folder)

    other = tmp_path / "other"
    other.mkdir()
    (other / moonshine.name).symlink_to(moonshine)
    engine = EngineProcess(
        tmp_path / "three",
        CCENGINE_MODEL_DIRS=json.dumps([str(other)]),
        CCENGINE_PROMPT_VOICE_INT8="false",
        **quick,
    ).start()
    engine.stop()
    assert "int8" not in engine.log.read_text()
    assert not piper_convert.cache_dir(other).exists()
