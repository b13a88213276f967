"""The node's recognizers: which model each language gets, each model prepared once,
and the worker pool that runs them.

Theory of operation
-------------------
``choice(language)`` looks a language up once (``media.asr.models.choose_model``) and
remembers it; anyone may ask about any language (the API's ``/models?language=``), so
besides the configured languages at most ``MAX_CHOICES`` are remembered, the oldest
forgotten first. ``ready(language)`` also prepares the model: Moonshine is converted
once, in a child process (~8 s and ~1 GB at its peak, which this process must not
keep), and every caller of the same language waits on the one conversion; if it fails,
English falls back to pocketsphinx and the choice says why. ``start(languages)`` shapes
the worker pool for the models it loads and starts it; ``open`` gives a leg its
recognizer in that pool.

Nothing here knows calls: the call manager asks for a leg's recognizer by language.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from media.asr.base import LegRecognizer
from media.asr.models import ModelChoice, choose_model
from media.asr.moonshine_convert import ModelPrepareError, ensure_printing
from media.asr.moonshine_convert import verify as moonshine_verify
from media.asr.pool import RecognitionError, RecognitionPool

log = logging.getLogger(__name__)

MAX_CHOICES = 64  # languages asked about, remembered besides the configured ones


def loggable(text: str) -> str:
    """``text`` for a log line: control characters (a CR or LF that would start a
    forged line) escaped as Python writes them, the rest as it is."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Recognizers:
    def __init__(
        self,
        model_dirs: list[str],
        backends: Mapping[str, str],
        kept: Iterable[str],
        *,
        workers: int = 0,
        processes: int = 0,
    ) -> None:
        """``kept``: the configured languages, always remembered; ``workers`` (lanes)
        and ``processes``: 0 picks them from the cores and the models (see ``start``)."""
        self.model_dirs = model_dirs
        self.backends = backends
        self.kept = frozenset(kept)
        self.workers = workers
        self.processes = processes
        # a pool until start() shapes the real one: calls made before it fail cleanly
        self.pool = RecognitionPool(workers or os.cpu_count() or 1)
        self.choices: dict[str, ModelChoice] = {}
        self._preparing: dict[str, asyncio.Future[ModelChoice]] = {}

    def choice(self, language: str, *, quiet: bool = False) -> ModelChoice:
        """The recognizer for ``language``, looked up once and remembered. Said in the
        log the first time, unless ``quiet``."""
        choice = self.choices.get(language)
        if choice is not None:
            return choice
        choice = choose_model(language, self.model_dirs, self.backends.get(language))
        if len(self.choices) >= MAX_CHOICES + len(self.kept):
            oldest = next((lang for lang in self.choices if lang not in self.kept), None)
            if oldest is not None:
                del self.choices[oldest]
        self.choices[language] = choice
        if not quiet:  # the language (and the note naming it) may be a caller's input
            (log.warning if choice.fallback or not choice.backend else log.info)(
                "speech for '%s': %s", loggable(language), loggable(choice.note)
            )
        return choice

    async def ready(self, language: str) -> ModelChoice:
        """The language's recognizer, its model prepared (see the module's docstring)."""
        choice = self.choice(language)
        if choice.backend != "moonshine" or choice.path is None:
            return choice
        if language not in self._preparing:
            self._preparing[language] = asyncio.ensure_future(self._prepare(choice))
        self.choices[language] = choice = await asyncio.shield(self._preparing[language])
        return choice

    async def _prepare(self, choice: ModelChoice) -> ModelChoice:
        assert choice.path is not None
        try:  # converted already (every start but the first): no child process to spawn
            await asyncio.to_thread(moonshine_verify, Path(choice.path))
            return choice
        except ModelPrepareError:
            pass  # missing or corrupt: the child says which, and converts it again
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=ctx) as converter:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    converter, ensure_printing, choice.path
                )
                return choice
            except Exception as exc:  # any failure: a clear reason and the fallback
                fallback = choice.falling_back(f"the Moonshine model is not usable ({exc})")
                log.error("speech for '%s': %s", choice.language, fallback.note)
                return fallback

    async def start(self, languages: list[str]) -> None:
        """Prepare ``languages``' models and start the pool with them loaded."""
        choices = [c for c in [await self.ready(lang) for lang in languages] if c.backend]
        shareable = all(c.releases_gil for c in choices)
        # Two lanes a core when the decoders let go of the GIL: a lane busy with one
        # leg's decode holds up the cheap requests of the other legs pinned to it, and a
        # second lane lets the OS interleave them (measured at 16 SIP callers: the audio
        # waiting fell from 1.5 s to 0.6 s at worst and finals p95 from 411 to 388 ms,
        # for the same CPU and ~20 MB)
        cores = os.cpu_count() or 1
        lanes = self.workers or (2 * cores if shareable else cores)
        processes = self.processes or (1 if shareable else lanes)
        self.pool = RecognitionPool(lanes, lanes_per_process=-(-lanes // processes))
        try:
            await self.pool.start(choices)
        except RecognitionError as exc:  # say why now; calls of that language say it too
            log.error("recognition: a model failed to load at start: %s", exc)
            # a pool starts once
            self.pool = RecognitionPool(lanes, lanes_per_process=-(-lanes // processes))
            await self.pool.start()

    async def open(self, leg_id: str, language: str) -> LegRecognizer:
        """A recognizer for one leg, in the pool, of ``language``'s model."""
        return await self.pool.open(leg_id, await self.ready(language))

    async def stop(self) -> None:
        await self.pool.stop()
