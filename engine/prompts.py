"""The voice callers hear: the prompt voice, made ready once, and speech synthesis.

One synthesis at a time, in its own thread: prompts queue behind each other, never in
front of the recognizers, and the speaker's cache makes repeats free. The prompts
callers hear most are made at start, before the first caller needs them. The int8
piper voice is converted once, at the first start, in a child process (the ``onnx``
package it needs would stay in this one); without it the float voice serves, and
without piper, espeak-ng; without either, there is no voice and callers are told
nothing (the API says so when asked to play).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

from media import piper_convert
from media.asr.moonshine_convert import ModelPrepareError
from media.tts import Speaker, default_speaker

log = logging.getLogger(__name__)
# prompts waiting to be made in the background; past this the oldest are not made ahead
# (a burst of flow changes): they are made when first said, as any other prompt
MAX_WARM = 2000


class VoicePrompts:
    def __init__(self, model_dir: str, *, int8: bool = True) -> None:
        """``model_dir``: where the int8 voice is made; ``int8``: use it at all."""
        self.model_dir = model_dir
        self.int8 = int8
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="tts")
        self.speaker: Speaker | None = None
        self._warmup: asyncio.Task[None] | None = None
        self._to_warm: deque[str] = deque(maxlen=MAX_WARM)

    @property
    def available(self) -> bool:
        return self.speaker is not None

    @property
    def cached_bytes(self) -> int:
        return self.speaker.cached_bytes if self.speaker is not None else 0

    async def start(self, warm: Iterable[str] = ()) -> None:
        """Load the voice, then make ``warm``'s prompts in the background."""
        voice = await self._int8_voice()
        loop = asyncio.get_running_loop()
        self.speaker = await loop.run_in_executor(self.executor, default_speaker, voice)
        self.warm(warm)

    def warm(self, texts: Iterable[str]) -> None:
        """Make ``texts`` in the background, after those already waiting (a new flow's
        prompts, say); nothing without a voice. They take turns with callers' prompts
        on the one synthesis thread, one at a time."""
        if self.speaker is None:
            return
        self._to_warm.extend(texts)
        if self._to_warm and (self._warmup is None or self._warmup.done()):
            self._warmup = asyncio.create_task(self._warm(self.speaker))

    async def speak(self, text: str) -> tuple[np.ndarray, int] | None:
        """``text`` as PCM and its rate; None without a voice."""
        if self.speaker is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, self.speaker.speak, text
        )

    def stop(self) -> None:
        # the warm-up first: left running, its next prompt meets a shut executor and
        # logs a failure for an engine that is only stopping
        if self._warmup is not None:
            self._warmup.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _int8_voice(self) -> str | None:
        """The int8 prompt voice's model file, made at the first start (~1 s), or None
        for the float voice: opted out, no piper voice installed, or the conversion
        failed (the log says why)."""
        if not self.int8 or piper_convert.source() is None:
            return None
        folder = piper_convert.cache_dir(self.model_dir)
        try:  # made already (every start but the first)
            await asyncio.to_thread(piper_convert.verify, folder)
            return str(folder / piper_convert.MODEL)
        except ModelPrepareError:
            pass  # missing or corrupt: the child says which, and makes it again
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=ctx) as converter:
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    converter, piper_convert.ensure_printing, str(folder.parent)
                )
            except Exception as exc:  # any failure: a clear reason and the float voice
                log.error("prompt voice: no int8 voice (%s); using the float one", exc)
                return None

    async def _warm(self, speaker: Speaker) -> None:
        loop = asyncio.get_running_loop()
        while self._to_warm:
            text = self._to_warm.popleft()
            try:
                await loop.run_in_executor(self.executor, speaker.speak, text)
            except Exception:
                log.exception("could not synthesise %r", text)
                return
