"""Baseline for the benchmark: the same HTTP offer/answer, aiortc receiving and
decoding audio, and nothing else (no resampling, VAD, ASR, emotion, storage)."""

from __future__ import annotations

import argparse
import asyncio
import uuid

import uvicorn
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()
peers: dict[str, RTCPeerConnection] = {}
tasks: set[asyncio.Task[None]] = set()


class Offer(BaseModel):
    sdp: str
    type: str = "offer"


async def drain(call_id: str, track: MediaStreamTrack) -> None:
    try:
        while True:
            await asyncio.wait_for(track.recv(), 10)
    except (MediaStreamError, TimeoutError):
        pass
    pc = peers.pop(call_id, None)
    if pc:
        await pc.close()


@app.post("/api/v1/calls", status_code=201)
async def create(offer: Offer) -> dict[str, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # as the engine: no STUN
    call_id = str(uuid.uuid4())
    peers[call_id] = pc

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        task = asyncio.create_task(drain(call_id, track))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return {"call_id": call_id, "sdp": pc.localDescription.sdp, "type": "answer"}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
