"""The desktop softphone: ``ccengine phone --agent ann``.

For agents who do not use a browser. It signs in over the REST API, goes available,
follows the event stream the agent desk page reads, shows each offer's preview in the
terminal, answers over WebRTC (aiortc) with the microphone and speaker (pyaudio), or
with WAV files standing in for them, prints both sides of the transcript while the
call lasts, and wraps up when it ends (disposition and notes from the options, or
asked in the terminal).

On a terminal, while a call is up: ``m`` + Enter mutes or unmutes, ``h`` holds or
resumes, ``q`` hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import websockets
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)

from media.devices import AudioSink, MicrophoneTrack
from media.wavtrack import WavFileTrack


@dataclass
class PhoneOptions:
    url: str
    username: str
    password: str
    input_wav: str | None = None
    output_wav: str | None = None
    auto_answer: bool = False
    calls: int = 0  # stop after this many calls; 0: run until interrupted
    disposition: str | None = None
    notes: str = ""


class PhoneError(RuntimeError):
    pass


def _say(line: str) -> None:
    print(line, flush=True)


def preview(offer: dict[str, Any]) -> str:
    lines = [
        f"Incoming call from {offer.get('caller') or 'unknown caller'} ({offer['channel']}), "
        f"queue {offer['queue']}, waited {offer['waited']:.0f} s",
        f"  why: {offer.get('escalation_reason') or 'asked for a person'}",
        f"  mood: {offer.get('emotion') or '-'}; earlier calls: {offer.get('previous_calls', 0)}",
        f"  so far: {offer.get('summary') or '-'}",
    ]
    if offer.get("transferred_by"):
        lines.append(f"  from {offer['transferred_by']}: {offer.get('transfer_note') or ''}")
    return "\n".join(lines)


async def _ask(question: str) -> str:
    return (await asyncio.to_thread(input, question)).strip()


class Phone:
    def __init__(self, options: PhoneOptions, http: httpx.AsyncClient | None = None) -> None:
        """``http``: the client to the engine (tests hand in one to the app itself)."""
        self.o = options
        self.http = http or httpx.AsyncClient(base_url=options.url, timeout=30)
        self.me: dict[str, Any] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.interactive = sys.stdin.isatty()
        self.started = time.time()

    def _microphone(self) -> MediaStreamTrack:
        if self.o.input_wav:
            return WavFileTrack(self.o.input_wav)
        return MicrophoneTrack()

    def _sink(self) -> AudioSink:
        return AudioSink(wav_path=self.o.output_wav)

    async def _post(self, path: str, body: object = None) -> httpx.Response:
        r = await self.http.post(path, json=body)
        if r.status_code >= 400:
            raise PhoneError(f"{path}: {r.status_code} {r.json().get('detail', r.text)}")
        return r

    async def sign_in(self) -> None:
        r = await self.http.post(
            "/api/v1/auth/login", json={"username": self.o.username, "password": self.o.password}
        )
        if r.status_code != 200:
            raise PhoneError(f"sign-in refused: {r.json().get('detail', r.status_code)}")
        self.me = r.json()["user"]
        self.token = r.json()["token"]
        # a program carries its token itself: cookies are for pages, and their writes
        # need X-Requested-With
        self.http.cookies.clear()
        self.http.headers["Authorization"] = f"Bearer {self.token}"
        if self.me["role"] != "agent":
            raise PhoneError(f"{self.o.username} is a {self.me['role']}, not an agent")
        with contextlib.suppress(PhoneError):  # already signed in elsewhere: fine
            await self._post("/api/v1/agents/me/presence", {"event": "login"})
        # a call of ours still waits for its disposition (the phone was stopped in its
        # wrap-up, or the call was on the desk page): "available" is refused until it
        # has one, so it is given first, or this phone could never take a call
        owed = await self._owed()
        if owed is not None:
            _say(f"call {owed} still needs its wrap-up")
            await self.wrap_up(owed)
        else:
            await self._post("/api/v1/agents/me/presence", {"event": "available"})
        _say(f"signed in as {self.me['display_name']}; available")

    async def _owed(self) -> str | None:
        """The call this agent owes a disposition, if any (GET /agents)."""
        r = await self.http.get("/api/v1/agents")
        if r.status_code >= 400:
            raise PhoneError(f"/api/v1/agents: {r.status_code} {r.json().get('detail', r.text)}")
        me = next((a for a in r.json() if a["id"] == self.me["id"]), None)
        return None if me is None else me.get("wrap_up_call")

    async def _back_from_away(self) -> None:
        """The engine set this phone away while it was cut off (reason "disconnected"):
        go available again, asked first on a terminal (the agent may have walked off)."""
        if not self.o.auto_answer:
            answer = await _ask(
                "you were set away while this phone was cut off; available again? [Y/n] "
            )
            if answer.lower().startswith("n"):
                _say("staying away; start the phone again to take calls")
                return
        try:
            owed = await self._owed()
            if owed is not None:
                await self.wrap_up(owed)
            else:
                await self._post("/api/v1/agents/me/presence", {"event": "available"})
                _say("available again")
        except PhoneError as exc:
            _say(f"could not go available: {exc}")

    async def _follow(self) -> None:
        ws_url = self.o.url.replace("http", "ws", 1) + "/api/v1/events"
        last = 0
        while True:
            try:
                auth = {"Authorization": f"Bearer {self.token}"}
                async with websockets.connect(
                    f"{ws_url}?after={last}", additional_headers=auth
                ) as ws:
                    async for message in ws:
                        event = json.loads(message)
                        last = max(last, event["id"])
                        await self.events.put(event)
            except (OSError, websockets.ConnectionClosed):
                await asyncio.sleep(1.0)  # the engine restarted or the network blinked

    def _set_away(self, event: dict[str, Any]) -> bool:
        """The engine set us away because our stream was gone (engine/liveness.py)."""
        return (
            event["type"] == "agent.presence_changed"
            and event["agent_id"] == self.me["id"]
            and event.get("reason") == "disconnected"
            # the stream replays recent history first: not a disconnection before this run
            and datetime.fromisoformat(event["time"]).timestamp() >= self.started
        )

    def _still_ringing(self, offer: dict[str, Any]) -> bool:
        # the stream replays recent history first: only a live offer rings
        sent = datetime.fromisoformat(offer["time"]).timestamp()
        return offer["agent_id"] == self.me["id"] and sent + offer["expires_in"] > time.time()

    async def run(self) -> int:
        await self.sign_in()
        follower = asyncio.create_task(self._follow())
        answered = 0
        try:
            while self.o.calls == 0 or answered < self.o.calls:
                event = await self.events.get()
                if self._set_away(event):
                    _say("this phone was disconnected for a while, so you were set away")
                    await self._back_from_away()
                if event["type"] != "call.offered" or not self._still_ringing(event):
                    continue
                _say(preview(event))
                if not self.o.auto_answer:
                    if (await _ask("answer? [Y/n] ")).lower().startswith("n"):
                        await self._post(f"/api/v1/calls/{event['call_id']}/decline")
                        continue
                await self.talk(event["call_id"])
                answered += 1
        finally:
            follower.cancel()
            with contextlib.suppress(PhoneError):
                await self._post("/api/v1/agents/me/presence", {"event": "logout"})
            await self.http.aclose()
        return 0

    async def _ice_servers(self) -> list[RTCIceServer]:
        """The engine's STUN/TURN servers (none unless configured): never aiortc's
        default public STUN server, which nobody here chose."""
        r = await self.http.get("/api/v1/ice-servers")
        if r.status_code >= 400:
            raise PhoneError(f"ICE servers: {r.status_code} {r.json().get('detail', r.text)}")
        return [RTCIceServer(**s) for s in r.json()["ice_servers"]]

    async def talk(self, call_id: str) -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=await self._ice_servers()))
        mic = self._microphone()
        pc.addTrack(mic)
        sink = self._sink()
        players: list[asyncio.Task[None]] = []

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                players.append(asyncio.create_task(sink.play(track)))

        keys: asyncio.Task[None] | None = None
        try:
            await pc.setLocalDescription(await pc.createOffer())
            answer = await self._post(
                f"/api/v1/calls/{call_id}/accept", {"sdp": pc.localDescription.sdp}
            )
            await pc.setRemoteDescription(RTCSessionDescription(answer.json()["sdp"], "answer"))
            _say("connected")
            if self.interactive:
                keys = asyncio.create_task(self._keys(call_id))
            reason = await self._during(call_id, _say)
            _say(f"call over: {reason}")
        finally:
            if keys is not None:
                keys.cancel()
            await pc.close()
            for task in players:
                task.cancel()
            sink.close()
        await self.wrap_up(call_id)

    async def _during(self, call_id: str, show: Callable[[str], None]) -> str:
        """Print the call's transcript until our part of it is over; why it ended."""
        mine = False
        while True:
            ev = await self.events.get()
            if ev.get("call_id") != call_id:
                continue
            if ev["type"] == "transcript.final":
                show(f"[{ev['speaker']}] {ev['text']}")
            elif ev["type"] == "escalation.raised":
                show(f"(escalated: {ev['reason']})")
            elif ev["type"] == "call.ended":
                return str(ev["reason"])
            elif ev["type"] == "call.state_changed":
                if ev["state"] == "bridged" and ev["reason"] == self.me["username"]:
                    mine = True
                elif mine and ev["state"] == "queued":
                    return "transferred"
                elif mine:
                    show(f"({ev['state']})")

    async def _keys(self, call_id: str) -> None:
        muted = held = False
        while True:
            key = (await _ask("")).lower()
            try:
                if key == "m":
                    muted = not muted
                    await self._post(f"/api/v1/calls/{call_id}/mute", {"muted": muted})
                elif key == "h":
                    held = not held
                    await self._post(f"/api/v1/calls/{call_id}/{'hold' if held else 'resume'}")
                elif key == "q":
                    await self._post(f"/api/v1/calls/{call_id}/hangup")
            except PhoneError as exc:
                _say(str(exc))

    async def wrap_up(self, call_id: str) -> None:
        disposition, notes = self.o.disposition, self.o.notes
        if disposition is None:
            choices = (await self.http.get("/api/v1/dispositions")).json()
            disposition = choices[0]
            if self.interactive:
                while True:  # a typo asks again, rather than ending the phone with a 422
                    given = await _ask(f"disposition ({', '.join(choices)}): ") or choices[0]
                    if given in choices:
                        disposition = given
                        break
                    _say(f"'{given}' is not one of: {', '.join(choices)}")
                notes = await _ask("notes: ")
        await self._post(
            f"/api/v1/calls/{call_id}/wrap-up",
            {"disposition": disposition, "notes": notes, "then": "available"},
        )
        _say(f"wrapped up ({disposition}); available")


def run_phone(options: PhoneOptions) -> int:
    if not options.auto_answer and not sys.stdin.isatty():
        print("error: not on a terminal: use --auto-answer", file=sys.stderr)
        return 2
    try:
        return asyncio.run(Phone(options).run())
    except PhoneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
