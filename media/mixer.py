"""Several live voices on one outgoing track: the mix a party hears.

Theory of operation
-------------------
A party of a bridged call hears the other party; with a supervisor on the call it
may hear two voices at once (the agent hears the caller and a whispering
supervisor). Each voice is a *source*: a short queue of 48 kHz mono samples, fed
as that voice's packets are decoded. Each 20 ms frame the track asks ``mix`` for
its samples: every source gives what it has (up to a frame), and those are summed
and clipped to 16 bits. A source with less than a frame gives what it has, the rest
is silence, as a single live voice always did.

Bounds: each source keeps at most ``max_samples`` (the same 300 ms drift bound a
single bridged voice had, ``media.outbound.MAX_LIVE_SAMPLES``): older samples are
dropped and counted, so no voice drifts behind however its packets bunch up. At most
``MAX_SOURCES`` voices are mixed; a new one beyond that is dropped and counted. A
source whose queue runs dry is forgotten, so one that stops (a leg that left) costs
nothing.

Sans-IO: no clock, no tasks; the track that owns it paces the frames.
"""

from __future__ import annotations

import collections

import numpy as np

MAX_SOURCES = 8  # caller, agent, a few supervisors: far more than a call has


class _Source:
    __slots__ = ("chunks", "samples")

    def __init__(self) -> None:
        self.chunks: collections.deque[np.ndarray] = collections.deque()
        self.samples = 0


class LiveMixer:
    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self._sources: dict[str, _Source] = {}
        self.dropped = 0  # samples dropped: a source too far behind, or one too many

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self._sources)

    def pending(self, source: str | None = None) -> int:
        """Samples waiting: of one source, or the most any source has."""
        if source is not None:
            s = self._sources.get(source)
            return s.samples if s is not None else 0
        return max((s.samples for s in self._sources.values()), default=0)

    def push(self, source: str, pcm: np.ndarray) -> None:
        """Queue 48 kHz mono int16 samples of ``source``."""
        if not len(pcm):
            return
        s = self._sources.get(source)
        if s is None:
            if len(self._sources) >= MAX_SOURCES:
                self.dropped += len(pcm)
                return
            s = self._sources[source] = _Source()
        s.chunks.append(pcm.astype(np.int16, copy=False))
        s.samples += len(pcm)
        while s.samples > self.max_samples:
            old = s.chunks.popleft()
            s.samples -= len(old)
            self.dropped += len(old)

    def mix(self, n: int) -> np.ndarray | None:
        """The next ``n`` samples of every source summed (clipped), or None when no
        source has any."""
        if not self._sources:
            return None
        if len(self._sources) == 1:  # the common case, a plain bridge: nothing to sum
            out = np.zeros(n, dtype=np.int16)
            self._take_into(out)
            return out
        total = np.zeros(n, dtype=np.int32)
        self._take_into(total)
        return np.clip(total, -32768, 32767).astype(np.int16)

    def _take_into(self, out: np.ndarray) -> None:
        """Add up to ``len(out)`` samples of each source into ``out``."""
        n = len(out)
        for name in list(self._sources):
            s = self._sources[name]
            filled = 0
            while filled < n and s.chunks:
                head = s.chunks[0]
                take = min(n - filled, len(head))
                out[filled : filled + take] += head[:take]
                filled += take
                if take == len(head):
                    s.chunks.popleft()
                else:
                    s.chunks[0] = head[take:]
                s.samples -= take
            if not s.chunks:
                del self._sources[name]

    def remove(self, source: str) -> None:
        """Forget ``source`` and what it had queued."""
        self._sources.pop(source, None)

    def clear(self) -> None:
        self._sources.clear()
