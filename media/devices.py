"""Sound devices for the desktop softphone: a pyaudio microphone and speaker, or WAV
files standing in for them (tests, headless machines).

The microphone is a ``PacedAudioTrack``: portaudio's callback thread drops 48 kHz
mono samples into a bounded buffer and the track takes 20 ms at a time, sending
silence when the buffer runs dry, so a stalled sound card never stalls the call.
pyaudio is imported only when a real device is asked for (extra ``desktop``).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import wave
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from media.audio import downmix_int16
from media.wavtrack import FRAME, SEND_RATE, PacedAudioTrack, to_send_rate

MAX_BUFFERED = SEND_RATE // 2  # half a second: older microphone audio is dropped


def _pyaudio() -> Any:
    try:
        import pyaudio
    except ImportError as exc:
        raise RuntimeError(
            "no sound device support: install the 'desktop' extra (pip install "
            "'ccengine[desktop]', needs portaudio), or use --input-wav/--output-wav"
        ) from exc
    return pyaudio


class MicrophoneTrack(PacedAudioTrack):
    def __init__(self, device: int | None = None) -> None:
        super().__init__()
        pa = _pyaudio()
        self._audio = pa.PyAudio()
        self._lock = threading.Lock()
        self._buffer: collections.deque[np.ndarray] = collections.deque()
        self._buffered = 0
        self._stream = self._audio.open(
            format=pa.paInt16, channels=1, rate=SEND_RATE, input=True,
            input_device_index=device, frames_per_buffer=FRAME,
            stream_callback=self._captured,
        )  # fmt: skip

    def _captured(self, data: bytes, _frames: int, _time: Any, _status: int) -> tuple[None, int]:
        pcm = np.frombuffer(data, dtype="<i2").copy()
        with self._lock:
            self._buffer.append(pcm)
            self._buffered += len(pcm)
            while self._buffered > MAX_BUFFERED:
                self._buffered -= len(self._buffer.popleft())
        return None, 0  # paContinue

    def _next_samples(self) -> np.ndarray:
        out = np.zeros(FRAME, dtype=np.int16)
        filled = 0
        with self._lock:
            while filled < FRAME and self._buffer:
                head = self._buffer[0]
                take = min(FRAME - filled, len(head))
                out[filled : filled + take] = head[:take]
                filled += take
                self._buffered -= take
                if take == len(head):
                    self._buffer.popleft()
                else:
                    self._buffer[0] = head[take:]
        return out

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.stop_stream()
            self._stream.close()
            self._audio.terminate()
        super().stop()


class AudioSink:
    """Where the far end's audio goes: a WAV file, or the speaker."""

    def __init__(self, wav_path: str | None = None, device: int | None = None) -> None:
        self._wav: wave.Wave_write | None = None
        self._stream: Any = None
        self.samples = 0
        if wav_path is not None:
            self._wav = wave.open(wav_path, "wb")
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(SEND_RATE)
        else:
            pa = _pyaudio()
            self._audio = pa.PyAudio()
            self._stream = self._audio.open(
                format=pa.paInt16, channels=1, rate=SEND_RATE, output=True,
                output_device_index=device,
            )  # fmt: skip

    def write(self, pcm48: np.ndarray) -> None:
        data = pcm48.astype("<i2").tobytes()
        self.samples += len(pcm48)
        if self._wav is not None:
            self._wav.writeframes(data)
        elif self._stream is not None:
            self._stream.write(data, exception_on_underflow=False)

    async def play(self, track: MediaStreamTrack) -> None:
        """Write the track's audio until it ends."""
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray().reshape(-1)  # type: ignore[union-attr]
                channels = len(frame.layout.channels)  # type: ignore[union-attr]
                mono = downmix_int16(pcm, channels)
                self.write(to_send_rate(mono, frame.sample_rate))  # type: ignore[union-attr]

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.stop_stream()
                self._stream.close()
                self._audio.terminate()
            self._stream = None
