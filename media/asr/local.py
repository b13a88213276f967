"""A ``Recognizer`` run on a thread of this process, behind the ``LegRecognizer``
interface the pipeline speaks. For tools and in-process tests; the engine uses the
worker pool (``media.asr.pool``), since decoders hold the GIL."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from media.asr.base import AsrResult, Recognizer


class LocalRecognizer:
    def __init__(self, recognizer: Recognizer, executor: Executor) -> None:
        self._rec = recognizer
        self._executor = executor

    async def accept(self, pcm: bytes) -> str | None:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._rec.accept, pcm
        )

    async def peek(self) -> AsrResult:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._rec.peek)

    async def finish(self) -> AsrResult:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._rec.finish)

    async def close(self) -> None:
        self._rec.close()
