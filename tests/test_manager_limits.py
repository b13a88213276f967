"""The call manager's limits, in-process on a real SQLite store with real aiortc peers:
the call limit holds when offers and INVITEs arrive together (issue 12, item 2); an
offer without media costs no recognizer, is capped per address and in all, and expires
(item 1); the language lookup remembers a bounded number of answers and escapes what it
logs (item 4); decoded audio waiting for analysis counts in the backlog (item 5)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiortc import AudioStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from engine.calls import CallManager
from engine.callstate import Overloaded, Throttled
from engine.config import Settings
from engine.events import EventBus, utcnow
from engine.livecall import Call, Leg
from engine.metrics import Metrics
from engine.store.db import Store
from media.asr import ModelChoice
from media.asr.registry import MAX_CHOICES
from media.rtp import RtpSession
from media.sip.peer import SipPeer
from media.sip.sdp import parse_offer
from media.vad import VadSettings
from tests.controlplane import PHONE_SDP
from tests.test_lost_audio import QueuedTrack

# -- a call manager on a real store ------------------------------------------------------


@contextlib.asynccontextmanager
async def manager(tmp_path: Path, **settings: object) -> AsyncIterator[CallManager]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}")
    await store.open()
    values: dict[str, object] = {
        "model_dirs": [], "asr_workers": 1, "ivr_prompt": "",
        "recordings_dir": str(tmp_path / "recordings"), **settings,
    }  # fmt: skip
    m = CallManager(Settings(_env_file=None, **values), store, EventBus(), Metrics())
    try:
        yield m
    finally:
        await m.shutdown()
        await store.close()


async def browser_offer(audio: MediaStreamTrack | None = None) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    if audio is None:
        pc.addTransceiver("audio", direction="sendrecv")
    else:
        pc.addTrack(audio)
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def rejected(m: CallManager, reason: str) -> float:
    value = m.metrics.registry.get_sample_value(
        "ccengine_offers_rejected_total", {"reason": reason}
    )
    return value or 0.0


async def wait_until(check: Callable[[], object], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


# -- item 2: the call limit holds under concurrent offers --------------------------------


async def test_concurrent_offers_cannot_pass_the_call_limit(tmp_path: Path) -> None:
    """20 offers at once against a limit of 4 all got 201: the limit was checked before
    the peer connection was answered (an await) and the call counted only after it.
    Now the slot is taken at admission, before any await: exactly 4 calls start, 16
    are refused with the limit as the reason, and a refused offer's slot is free again."""
    async with manager(tmp_path, max_concurrent_calls=4, max_pending_offers=100,
                       max_pending_offers_per_address=100) as m:  # fmt: skip
        offers = [await browser_offer() for _ in range(20)]
        try:
            results = await asyncio.gather(
                *(m.create_webrtc_call(sdp, "fr", None, "192.0.2.1") for _, sdp in offers),
                return_exceptions=True,
            )
            started = [r for r in results if isinstance(r, tuple)]
            refused = [r for r in results if isinstance(r, Overloaded)]
            assert (len(started), len(refused)) == (4, 16), results
            assert all("the configured limit" in str(r) for r in refused)
            assert len(m.calls) == m.calls_in_progress() == 4
            assert rejected(m, "limit") == 16
            await m.end_call(started[0][0].id, "hangup")
            assert m.calls_in_progress() == 3
        finally:
            await asyncio.gather(*(pc.close() for pc, _ in offers))


async def test_concurrent_phone_calls_cannot_pass_the_call_limit(tmp_path: Path) -> None:
    """SIPp at 20 INVITEs/s held 127 calls against a limit of 64: a phone call also
    awaited (the caller's history) between admission and being counted. The SIP front
    creates its calls through the same manager: 10 at once against a limit of 3 start 3."""
    async with manager(tmp_path, max_concurrent_calls=3) as m:
        offer = parse_offer(PHONE_SDP)
        peers = [
            SipPeer(RtpSession(offer, lambda _d: None), hangup=lambda: None) for _ in range(10)
        ]
        try:
            results = await asyncio.gather(
                *(m.create_phone_call(p, f"+1555000{i:04d}", "PCMU", "fr", menu=False)
                  for i, p in enumerate(peers)),
                return_exceptions=True,
            )  # fmt: skip
            started = [r for r in results if isinstance(r, Call)]
            assert len(started) == 3, results
            assert all(isinstance(r, Overloaded) for r in results if not isinstance(r, Call))
            assert m.calls_in_progress() == 3
        finally:
            for p in peers:
                p.remote_ended = True
                await p.close()


# -- item 1: an offer without media costs little, is capped, and expires ----------------


async def test_an_offer_without_audio_costs_no_recognizer_and_expires(tmp_path: Path) -> None:
    """Offers that never send media each allocated a recognizer (~75 MB) at once: 100 of
    them took an engine from 0.6 to 5.6 GB. Now a leg's analysis (its recognizer in a
    worker, its pipeline) starts with its first audio: a media-less offer has none, is
    counted as pending, and ends after the media timeout, freeing its place."""
    async with manager(tmp_path, media_timeout=1.0) as m:
        client, sdp = await browser_offer()
        try:
            call, _answer = await m.create_webrtc_call(sdp, "fr", None, "192.0.2.7")
            await asyncio.sleep(0.5)
            assert call.caller_leg().pipeline is None
            assert m.recognizers.pool.stats().legs == 0
            assert len(m.offers) == 1 and m.offers.from_address("192.0.2.7") == 1
            await wait_until(lambda: call.id not in m.calls, 5, "the offer never expired")
            assert len(m.offers) == 0 and m.calls_in_progress() == 0
            ended = m.metrics.registry.get_sample_value(
                "ccengine_calls_ended_total", {"reason": "no_media"}
            )
            assert ended == 1
        finally:
            await client.close()


async def test_audio_starts_the_analysis(tmp_path: Path) -> None:
    """The other half: a caller who does send audio gets its pipeline at its first
    frame, is no longer pending, and its frames are analysed."""
    async with manager(tmp_path, media_timeout=10.0) as m:
        client, sdp = await browser_offer(AudioStreamTrack())
        try:
            call, answer = await m.create_webrtc_call(sdp, "fr", None, "192.0.2.8")
            assert len(m.offers) == 1
            await client.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            await wait_until(lambda: call.caller_leg().pipeline is not None, 15, "no pipeline")
            assert len(m.offers) == 0
            assert call.caller_leg().pipeline.vad == VadSettings()  # type: ignore[union-attr]
            frames = m.metrics.registry.get_sample_value("ccengine_frames_processed_total")
            await wait_until(
                lambda: (m.metrics.registry.get_sample_value("ccengine_frames_processed_total")
                         or 0) > (frames or 0),
                5, "no frames analysed",
            )  # fmt: skip
        finally:
            await client.close()


async def test_a_phone_leg_gets_the_phone_line_settings(tmp_path: Path) -> None:
    """The level gate tuned at 16 kHz splits more sentences on a phone line
    (bench.endpointing --band phone): a G.711 leg's analysis gets the phone settings, a
    G.722 one (16 kHz, wideband) the others."""
    wideband = PHONE_SDP.replace("RTP/AVP 0", "RTP/AVP 9").replace("0 PCMU/8000", "9 G722/8000")
    async with manager(tmp_path) as m:
        for i, (sdp, codec, expected) in enumerate([
            (PHONE_SDP, "PCMU", VadSettings().for_phone()),
            (wideband, "G722", VadSettings()),
        ]):  # fmt: skip
            peer = SipPeer(RtpSession(parse_offer(sdp), lambda _d: None), hangup=lambda: None)
            try:
                call = await m.create_phone_call(peer, f"+1555000123{i}", codec, "fr", menu=False)
                pipeline = await m._start_analysis(call, call.caller_leg())
                assert pipeline.vad == expected, codec
            finally:
                peer.remote_ended = True
                await peer.close()
    assert VadSettings().for_phone().speech_margin_db > VadSettings().speech_margin_db


async def test_pending_offers_are_capped_per_address_and_in_all(tmp_path: Path) -> None:
    """A burst of offers that never send media, from one address or several, holds at
    most the configured number of call slots: past the per-address cap 429 (Throttled)
    with Retry-After, past the total 503 (Overloaded); both counted, both free again
    once the pending offers expire."""
    async with manager(tmp_path, media_timeout=1.0, max_pending_offers_per_address=3,
                       max_pending_offers=5) as m:  # fmt: skip
        offers = [await browser_offer() for _ in range(8)]
        sdps = iter(sdp for _, sdp in offers)
        try:
            for _ in range(3):
                await m.create_webrtc_call(next(sdps), "fr", None, "198.51.100.1")
            with pytest.raises(Throttled) as throttled:
                await m.create_webrtc_call(next(sdps), "fr", None, "198.51.100.1")
            assert throttled.value.retry_after == 1
            assert "3 offers from your address" in str(throttled.value)
            for _ in range(2):
                await m.create_webrtc_call(next(sdps), "fr", None, "198.51.100.2")
            with pytest.raises(Overloaded) as busy:
                await m.create_webrtc_call(next(sdps), "fr", None, "198.51.100.3")
            assert "5 offers are still waiting" in str(busy.value)
            assert rejected(m, "pending_address") == 1 and rejected(m, "pending") == 1
            assert m.calls_in_progress() == 5
            await wait_until(lambda: not m.calls, 5, "the pending offers never expired")
            assert len(m.offers) == 0
            await m.create_webrtc_call(next(sdps), "fr", None, "198.51.100.1")
        finally:
            await asyncio.gather(*(pc.close() for pc, _ in offers))


# -- item 4: the model cache is bounded, and the log escaped -----------------------------


async def test_the_model_cache_is_bounded_and_its_log_escaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """/models?language= remembered every distinct value forever and logged each at
    WARNING (22 MB and 17.6 MB of log from 300 requests; a CRLF in the value forged a
    log line). The API now refuses values that are no language tag (422, in the
    integration test); here: what is remembered is bounded, the configured languages
    stay, and a value that reaches the log is escaped."""
    async with manager(tmp_path, preload_languages=["en", "ko"]) as m:
        for i in range(300):
            m.model_choice(f"x{i:03d}", quiet=True)
        assert len(m.recognizers.choices) <= MAX_CHOICES + 2
        assert "x299" in m.recognizers.choices and "x000" not in m.recognizers.choices
        m.model_choice("ko")
        for i in range(300, 400):
            m.model_choice(f"x{i:03d}", quiet=True)
        assert "ko" in m.recognizers.choices
        with caplog.at_level(logging.INFO, logger="media.asr.registry"):
            m.model_choice("zz\r\nforged line")
        [record] = [r for r in caplog.records if "zz" in r.getMessage()]
        assert "\n" not in record.getMessage() and "\\r\\n" in record.getMessage()


# -- item 5: the backlog admission reads ----------------------------------------------


async def test_waiting_audio_counts_in_the_backlog(tmp_path: Path) -> None:
    """Admission's backlog read only speech queued for recognizers: decoded audio
    piling up before analysis (a node that fell behind) now counts too."""
    async with manager(tmp_path) as m:
        call = Call("c", "webrtc", "fr", ModelChoice("fr", None, None, []), None, utcnow())
        leg = Leg("l", "caller", "webrtc")

        track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        track.set_result(QueuedTrack(100))
        # only its track is read: the rest of a peer does not matter here
        leg.peer = types.SimpleNamespace(audio_track=track)  # type: ignore[assignment]
        call.legs.append(leg)
        m.calls[call.id] = call
        assert m.recognition_backlog() == pytest.approx(2.02)  # 100 frames and the end
        del m.calls[call.id]


async def test_the_backlog_is_the_most_delayed_caller_not_the_sum(tmp_path: Path) -> None:
    """The backlog admission reads was the sum over every leg: 16 healthy calls with
    0.1 s each in flight read 1.6 s, so a big node was refused calls for being big.
    Now it is how far behind the most delayed caller is."""
    async with manager(tmp_path) as m:
        for i, frames in enumerate([50, 20, 50, 10]):
            call = Call(f"c{i}", "webrtc", "fr", ModelChoice("fr", None, None, []), None, utcnow())
            leg = Leg(f"l{i}", "caller", "webrtc")
            track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
            track.set_result(QueuedTrack(frames))
            leg.peer = types.SimpleNamespace(audio_track=track)  # type: ignore[assignment]
            call.legs.append(leg)
            m.calls[call.id] = call
        assert m.recognition_backlog() == pytest.approx(1.02)  # 50 frames and the end
        m.calls.clear()
