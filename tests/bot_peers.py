"""Peers of the virtual agent for tests and benchmarks: a caller who talks with it turn
by turn (``Talk``: each line said once the agent has stopped speaking, as a person
would), and a stand-in for the business's order system (``OrderSystem``: a real HTTP
server that checks the signature of what it is asked)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from engine.webhooks import verify
from media.outbound import OutboundAudioTrack
from media.wavtrack import read_wav_mono
from tests import speech
from tests.engine_proc import free_port
from tests.rtc_client import Caller

SECRET = "order-system-secret"
SLOW_ORDER = "99999"  # the order system takes longer than the flow waits for this one
LOUD = 300.0  # RMS of a received 20 ms frame with speech in it (silence is ~0)


def spoken_lines(folder: Path, said: dict[str, str]) -> dict[str, np.ndarray]:
    """What callers say, one clip a line (48 kHz), each synthesised alone in ``folder``."""
    out = {}
    for key, text in said.items():
        pcm, rate = read_wav_mono(str(speech.piper_alone([text], folder / f"{key}.wav")))
        assert rate == 48000
        out[key] = pcm
    return out


class OrderSystem:
    """The business's order system: answers order_status actions, checks their
    signature, and keeps what it was asked."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []
        self.bad_signatures = 0
        system = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not verify(
                    SECRET, self.headers.get("Ccengine-Signature", ""), body, time.time()
                ):
                    system.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                asked = json.loads(body)
                system.asked.append(asked)
                if asked["slots"].get("order") == SLOW_ORDER:
                    time.sleep(3.0)
                answer = json.dumps({"status": "out for delivery", "eta": "Friday"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/status"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OrderSystem:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Talk:
    """One caller in conversation: says a line once the agent has finished speaking."""

    def __init__(self, url: str) -> None:
        self.mic = OutboundAudioTrack()
        self.caller = Caller(url, None, mic=self.mic)
        self.mark = 0  # received frames before the line said last

    def loud(self, start: int = 0) -> list[bool]:
        return [float(np.sqrt(np.mean(f.astype(np.float64) ** 2))) > LOUD
                for f in self.caller.heard[start:]]  # fmt: skip

    async def agent_done(self, within: float = 20.0, quiet: float = 0.8) -> None:
        """Until the agent has spoken since the last line and been quiet ``quiet`` s."""
        deadline = time.monotonic() + within
        need = int(quiet / 0.02)
        while time.monotonic() < deadline:
            loud = self.loud(self.mark)
            if any(loud) and len(loud) - (max(i for i, x in enumerate(loud) if x) + 1) >= need:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"the agent did not finish speaking within {within} s")

    async def agent_speaks(self, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while not any(self.loud(self.mark)):  # noqa: ASYNC110  # polls received audio
            if time.monotonic() > deadline:
                raise TimeoutError(f"the agent said nothing within {within} s")
            await asyncio.sleep(0.02)

    def heard_since_mark(self) -> str:
        return speech.recognise(self.caller.heard_pcm(self.mark))

    async def say(self, pcm: np.ndarray) -> float:
        """Say a line; the time its first frame went out."""
        done = self.mic.play(pcm, 48000)
        sent = time.monotonic()
        await done
        # the agent's answer comes after the caller's last word: what it said while the
        # caller was still talking (a reply to half a sentence the endpointer cut at a
        # comma, cut off by the caller's voice) must not count as the agent having answered
        spoken_until = sent + self.last_voice(pcm)
        at = self.caller.heard_at
        self.mark = next((i for i, t in enumerate(at) if t >= spoken_until), len(at))
        return sent

    def first_voice(self, pcm: np.ndarray) -> float:
        """Seconds into a line where its speech begins."""
        return int(np.argmax(np.abs(pcm) > 1000)) / 48000

    def last_voice(self, pcm: np.ndarray) -> float:
        """Seconds into a line where its speech ends."""
        loud = np.flatnonzero(np.abs(pcm) > 1000)
        return (int(loud[-1]) + 1) / 48000 if len(loud) else 0.0

    def first_loud_after(self, at: float) -> float | None:
        """When the first frame with speech in it came after ``at`` (monotonic)."""
        loud = self.loud()
        for i, t in enumerate(self.caller.heard_at):
            if t > at and loud[i]:
                return t
        return None
