"""Every frame of caller audio is analysed or counted as lost, as it is lost, and audio
lost on the node makes admission refuse new calls (issue 12, item 5): the media pump,
the leg pipeline and phone RTP are fed frames and packets; the admission decision is
fed samples; the kernel's drops are read for real sockets."""

from __future__ import annotations

import asyncio
import fractions
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpreceiver import RemoteStreamTrack

from engine.callstate import Overloaded
from engine.capacity import Capacity, UdpDrops
from engine.config import Settings
from engine.metrics import Metrics
from media.asr.base import AsrResult
from media.loss import LossReason
from media.pipeline import LegPipeline
from media.rtp import RtpSession
from media.sip.sdp import parse_offer
from media.wavtrack import read_wav_mono
from media.webrtc import CATCH_UP, MAX_BEHIND, pump_audio, queued_frames
from tests import speech

PHONE_SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


# -- item 5: every lost frame is counted, and admission reads it -------------------------


class QueuedTrack(MediaStreamTrack):
    """Decoded frames already waiting, as aiortc keeps them in ``_queue``: a node that
    fell behind. ``pts`` as aiortc sets them (RTP timestamps from 0); ``missing``
    leaves those frames out of the stream (lost on the way)."""

    kind = "audio"

    def __init__(self, frames: int, missing: range = range(0)) -> None:
        super().__init__()
        self._queue: asyncio.Queue[av.AudioFrame | None] = asyncio.Queue()
        for i in range(frames):
            if i in missing:
                continue
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 960), np.int16), format="s16", layout="mono"
            )
            frame.sample_rate = 48000
            frame.pts = i * 960
            frame.time_base = fractions.Fraction(1, 48000)
            self._queue.put_nowait(frame)
        self._queue.put_nowait(None)

    async def recv(self) -> av.AudioFrame:
        frame = await self._queue.get()
        if frame is None:
            raise MediaStreamError
        return frame


async def test_the_pump_counts_missing_and_skipped_audio() -> None:
    """Past capacity 26-66% of frames went unanalysed while every drop counter stayed at
    0. Audio missing from the stream is counted as "gap"; audio waiting more than
    MAX_BEHIND seconds is skipped down to CATCH_UP and counted as "late": every frame
    is either pushed to analysis or counted."""
    track = QueuedTrack(400, missing=range(200, 210))  # 8 s behind, 10 frames lost
    lost: dict[LossReason, int] = {}
    pushed = 0

    def push(_pcm: np.ndarray, _rate: int, _channels: int) -> int:
        nonlocal pushed
        pushed += 1
        return 1

    def on_lost(reason: LossReason, frames: int) -> None:
        lost[reason] = lost.get(reason, 0) + frames

    reason = await pump_audio(track, push, 1.0, on_lost=on_lost)
    assert reason == "remote_closed"
    assert lost.get("gap") == 10
    assert lost.get("late", 0) >= 390 - round((MAX_BEHIND + CATCH_UP) / 0.02)
    assert pushed + lost["late"] == 390  # each frame that arrived: analysed or counted


def test_aiortc_keeps_decoded_frames_where_the_pump_looks() -> None:
    """The pump reads aiortc's private track queue to know how far behind it is: if an
    aiortc upgrade moves it, this fails rather than the count silently reading 0."""
    track = RemoteStreamTrack(kind="audio")
    track._queue.put_nowait(None)
    assert queued_frames(track) == 1


class Stuck:
    """A recognizer whose worker has stopped answering."""

    async def accept(self, pcm: bytes) -> str | None:
        await asyncio.Event().wait()
        return None

    async def peek(self) -> AsrResult:
        await asyncio.Event().wait()
        return AsrResult("")

    async def finish(self) -> AsrResult:
        return AsrResult("")

    async def close(self) -> None:
        return None


async def stuck_pipeline(
    pool: ThreadPoolExecutor, lost: list[tuple[LossReason, int]]
) -> LegPipeline:
    """A leg's pipeline, started, whose recognizer never answers; losses go to ``lost``."""

    async def opener() -> Stuck:
        return Stuck()

    pipeline = LegPipeline(
        "leg", opener, pool, lambda _ev: None, on_lost=lambda r, n: lost.append((r, n))
    )
    await pipeline.start()
    return pipeline


@pytest.fixture(scope="module")
def turn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speech.piper_script(
        ["I would like to cancel my order, please.", "Thank you so much."],
        tmp_path_factory.mktemp("speech") / "turn.wav",
    )


async def test_speech_dropped_for_a_recognizer_behind_is_counted_at_once(turn: Path) -> None:
    """Dropped speech chunks were added to ccengine_asr_dropped_chunks only when the call
    ended, so a node dropping audio looked healthy while it did. Now each chunk is
    reported as it is dropped, with its frames."""
    lost: list[tuple[LossReason, int]] = []
    pcm, rate = read_wav_mono(str(turn))
    with ThreadPoolExecutor(1) as pool:
        pipeline = await stuck_pipeline(pool, lost)
        for _ in range(12):  # over 30 s of speech at once: more than the queue holds
            pipeline.push_pcm(pcm, rate, 1)
        assert lost and all(r == "recognizer" and 0 < n <= 5 for r, n in lost)
        assert pipeline.dropped_chunks >= len(lost)
        pipeline.cancel()


async def test_concealed_phone_audio_is_counted_as_a_gap() -> None:
    """A phone call's lost packets are filled in (concealed) and were counted only in
    the session's own stats: now they reach the frame-loss count too."""
    lost: list[tuple[LossReason, int]] = []
    session = RtpSession(
        parse_offer(PHONE_SDP), lambda _d: None, on_lost=lambda r, n: lost.append((r, n))
    )
    header = bytes([0x80, 0])
    for seq in [*range(10), *range(15, 25)]:  # 5 packets never arrive
        packet = header + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
        session._receive(packet + (7).to_bytes(4, "big") + b"\xff" * 160, ("127.0.0.1", 4000))
    assert lost == [("gap", 5)]


class Node:
    """A Capacity fed by the test: frames analysed and lost go through the metrics, as
    the call manager counts them; the kernel's UDP drops are a number."""

    def __init__(self, **settings: float) -> None:
        self.metrics = Metrics()
        self.udp = 0
        self.capacity = Capacity(
            Settings(_env_file=None, **settings),
            self.metrics,
            calls_count=lambda: 0,
            backlog=lambda: 0.0,
            worker_pids=lambda: [],
            cores=2,
            cpu_times=lambda pids: {pid: 0.0 for pid in pids},
            udp_drops=lambda: self.udp,
        )

    def run(self, seconds: float, analysed: int, lost: dict[str, int], udp: int = 0) -> float:
        """Every 0.5 s: ``analysed`` frames processed, ``lost`` by reason, ``udp`` drops."""
        now = 0.0
        for i in range(int(seconds / 0.5) + 1):
            now = i * 0.5
            self.metrics.frames.inc(analysed)
            for reason, n in lost.items():
                self.metrics.frames_lost.labels(reason).inc(n)
            self.udp += udp
            self.capacity.sample_loss(now)
        return now


def test_audio_lost_on_the_node_refuses_new_calls() -> None:
    """Past capacity the engine still answered 201. Losing audio on the node (skipped
    late, dropped from full queues or by the kernel's socket buffers) is now a signal:
    over admission_max_frame_loss new calls are refused, with the reason."""
    node = Node(admission_max_frame_loss=0.05)
    now = node.run(6, analysed=100, lost={"late": 20})
    refusal = node.capacity.check(now)
    assert refusal is not None and refusal.signal == "loss"
    assert refusal.reason == "audio lost 17% > 5%"
    with pytest.raises(Overloaded, match="audio lost"):
        node.capacity.admit(now)

    kernel = Node(admission_max_frame_loss=0.05)
    now = kernel.run(6, analysed=100, lost={}, udp=10)
    refusal = kernel.capacity.check(now)
    assert refusal is not None and refusal.signal == "loss"
    assert kernel.metrics.registry.get_sample_value("ccengine_udp_receive_drops_total") > 0


def test_the_networks_losses_do_not_refuse_calls() -> None:
    """A caller on a bad network loses packets before they reach us: counted (gap), but
    no reason to refuse other callers; nor are a few frames in a quiet window, nor
    datagrams dropped while no audio flows."""
    node = Node(admission_max_frame_loss=0.05)
    assert node.capacity.check(node.run(6, analysed=100, lost={"gap": 50})) is None
    few = Node(admission_max_frame_loss=0.05)
    assert few.capacity.check(few.run(6, analysed=10, lost={"late": 5})) is None
    flood = Node(admission_max_frame_loss=0.05)  # junk at the SIP port, no calls up
    assert flood.capacity.check(flood.run(6, analysed=0, lost={}, udp=100)) is None


def test_kernel_udp_drops_are_read_for_our_sockets() -> None:
    """Datagrams the kernel drops because a socket was not read in time: the loss a
    busy event loop causes without any queue of ours noticing."""
    drops = UdpDrops()
    if drops.read() is None:
        pytest.skip("no /proc here")
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        rx.bind(("127.0.0.1", 0))
        for _ in range(500):
            tx.sendto(b"\0" * 200, rx.getsockname())
        total = drops.read()
    assert total is not None and total > 100


async def test_speech_left_for_a_recognizer_at_hang_up_is_counted(turn: Path) -> None:
    """A call ending while its recognizer is stuck waits 10 s, then gives up: the
    speech still queued for it was dropped without being counted. Now it is lost
    for the recognizer, frame by frame."""
    lost: list[tuple[LossReason, int]] = []
    pcm, rate = read_wav_mono(str(turn))
    with ThreadPoolExecutor(1) as pool:
        pipeline = await stuck_pipeline(pool, lost)
        pipeline.push_pcm(pcm, rate, 1)
        assert lost == []  # it all fits in the queue
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pipeline.close(), 0.5)
        pipeline.cancel()
    assert lost and {r for r, _ in lost} == {"recognizer"}
    assert sum(n for _, n in lost) >= 50  # at least a second of the speech queued
