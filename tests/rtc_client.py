"""A WebRTC caller for tests and benchmarks: aiortc peer + event-stream reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import websockets
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError

from media.wavtrack import PacedAudioTrack, WavFileTrack
from media.webrtc import sends_opus
from tests.engine_proc import STAFF


class ColourCamera(VideoStreamTrack):
    """A camera that shows one colour, so the far end can tell whose picture it gets."""

    def __init__(self, rgb: tuple[int, int, int]) -> None:
        super().__init__()
        self.image = np.empty((240, 320, 3), np.uint8)
        self.image[:] = rgb

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(self.image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class Caller:
    def __init__(
        self,
        base_url: str,
        wav: Path | None,
        language: str | None = None,
        caller: str | None = None,
        camera: tuple[int, int, int] | None = None,
        *,
        mic: PacedAudioTrack | None = None,
    ) -> None:
        """``wav``: what the caller says, played from the start; or ``mic``: a track the
        test speaks into when it chooses (a conversation: media.outbound's track)."""
        self.base_url = base_url
        self.wav = wav
        self.language = language
        self.caller = caller
        # no ICE servers: aiortc's default asks a public STUN server on every call
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if mic is None:
            assert wav is not None, "a caller says something: a WAV or a mic track"
            mic = WavFileTrack(str(wav))
        self.track: PacedAudioTrack = mic
        self.pc.addTrack(self.track)
        if camera is not None:
            self.pc.addTrack(ColourCamera(camera))
        self.heard: list[np.ndarray] = []  # what the engine sent us, 48 kHz mono
        self.heard_at: list[float] = []  # time.monotonic() each of those frames came
        self.seen: list[tuple[float, np.ndarray]] = []  # (time, mean RGB) of video we got
        self._listeners: list[asyncio.Future[None]] = []

        @self.pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            watch = self._watch if track.kind == "video" else self._listen
            self._listeners.append(asyncio.ensure_future(watch(track)))

        self.call_id = ""
        self.customer_token: str | None = None  # the business's app's, sent with the offer
        self.invite: str | None = None  # a call link's token: straight to its agent or queue
        self.upgrade: tuple[str, str] | None = None  # (a chat's id, its caller token)
        self.invite: str | None = None  # a call link's token: straight to its agent
        self.answer: dict[str, Any] = {}
        self.as_caller = False  # True: read the stream with the caller token, as their page
        self.events: list[dict[str, Any]] = []
        self.events_at: list[float] = []  # time.monotonic() each event came
        self.ended = asyncio.Event()
        self.connected_seconds = 0.0  # from our answer arriving to hanging up
        self._dialed_at = 0.0
        self._reader: asyncio.Task[None] | None = None

    async def dial(self) -> dict[str, Any]:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"type": "offer", "sdp": self.pc.localDescription.sdp}
        if self.language:
            body["language"] = self.language
        if self.caller:
            body["caller"] = self.caller
        if self.customer_token:
            body["customer_token"] = self.customer_token
        if self.invite:
            body["invite"] = self.invite
        headers = {}
        if self.upgrade is not None:  # the chat goes on as this call: its token says so
            body["upgrade_from"] = self.upgrade[0]
            headers["Authorization"] = f"Bearer {self.upgrade[1]}"
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as http:
            r = await http.post("/api/v1/calls", json=body, headers=headers)
        r.raise_for_status()
        self.answer = r.json()
        self.call_id = self.answer["call_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(self.answer["sdp"], "answer"))
        if sends_opus(self.answer["sdp"]):
            self.track.send_opus()  # as the engine does: no encoding thread hop per frame
        self._dialed_at = time.monotonic()
        self._reader = asyncio.create_task(self._read_events())
        return self.answer

    @property
    def auth(self) -> dict[str, str]:
        """The caller token the engine gave this call: it reaches this call only."""
        token = self.answer.get("caller_token")
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def post(self, path: str, body: object = None) -> httpx.Response:
        """As this call's caller (its page would do the same with its cookie)."""
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as http:
            return await http.post(path, json=body, headers=self.auth)

    async def accept(self, http: httpx.AsyncClient, call_id: str) -> None:
        """As an agent's softphone: answer a ringing call (``http`` is signed in)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        r = await http.post(
            f"/api/v1/calls/{call_id}/accept", json={"sdp": self.pc.localDescription.sdp}
        )
        if r.status_code != 200:
            raise RuntimeError(f"accept refused: {r.status_code} {r.text}")
        self.call_id = call_id
        await self.pc.setRemoteDescription(RTCSessionDescription(r.json()["sdp"], "answer"))

    async def _listen(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray().reshape(-1)  # type: ignore[union-attr]
                channels = len(frame.layout.channels)  # type: ignore[union-attr]
                self.heard.append(pcm.reshape(-1, channels).mean(axis=1).astype(np.int16))
                self.heard_at.append(time.monotonic())

    async def _watch(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                rgb = frame.to_ndarray(format="rgb24")  # type: ignore[union-attr]
                self.seen.append((time.monotonic(), rgb.reshape(-1, 3).mean(axis=0)))

    def heard_pcm(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """What we heard, from frame ``start`` to ``end`` (``len(self.heard)`` marks now)."""
        frames = self.heard[start:end]
        return np.concatenate(frames) if frames else np.zeros(0, np.int16)

    async def wait_for(self, type_: str, within: float = 30.0, **match: Any) -> dict[str, Any]:
        """The first event of ``type_`` (with ``match``ing fields) on this call's stream."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            for e in self.events:
                if e["type"] == type_ and all(e.get(k) == v for k, v in match.items()):
                    return e
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no {type_} {match or ''} within {within} s")
            await asyncio.sleep(0.1)

    async def _read_events(self) -> None:
        ws_url = self.base_url.replace("http", "ws", 1) + f"/api/v1/calls/{self.call_id}/events"
        # Tests check what the engine says about the call (mood, escalation, offers...):
        # read as the staff do when the engine is one the tests started; a caller's own
        # stream carries only what their page shows (engine/api/streams.py)
        headers = (None if self.as_caller else STAFF.get(self.base_url)) or self.auth
        async with websockets.connect(ws_url, additional_headers=headers) as ws:
            async for message in ws:
                event = json.loads(message)
                self.events.append(event)
                self.events_at.append(time.monotonic())
                if event["type"] == "call.ended":
                    self.ended.set()
                    return

    async def talk_and_hang_up(self, tail: float = 2.0, end_timeout: float = 20.0) -> None:
        """Play the whole file, keep the line open ``tail`` seconds, hang up, await call.ended."""
        assert isinstance(self.track, WavFileTrack)
        await self.track.finished.wait()
        await asyncio.sleep(tail)
        await self.pc.close()
        self.connected_seconds = time.monotonic() - self._dialed_at
        await asyncio.wait_for(self.ended.wait(), end_timeout)

    async def complete_call(self) -> dict[str, Any]:
        """Dial, say everything, hang up, and return the stored call."""
        try:
            await self.dial()
            await self.talk_and_hang_up()
        finally:
            await self.close()
        return await self.call_record()

    async def call_record(self) -> dict[str, Any]:
        """The stored call as the staff read it (the caller's own token reads only the
        caller's view, engine/api/rest.py ``get_call``), or as the caller with
        ``as_caller``, like the stream."""
        headers = (None if self.as_caller else STAFF.get(self.base_url)) or self.auth
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as http:
            r = await http.get(f"/api/v1/calls/{self.call_id}", headers=headers)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    async def close(self) -> None:
        await self.pc.close()
        for task in (*self._listeners, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
