"""Phone calls with SIPp as the phone: real SIP over UDP/TCP, real RTP with G.711."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from engine.client import ApiError, Client
from media.sip import message as sm
from media.wavtrack import read_wav_mono
from tests import sipp, speech
from tests.engine_proc import EngineProcess, free_port
from tests.rtc_client import Caller
from tests.sniff import RtpSniffer, voiced_seconds

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def phone_speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The calm caller through a phone: 8 kHz, 300-3400 Hz, G.711 u-law in RTP."""
    d = tmp_path_factory.mktemp("phone")
    wav = speech.piper_script(speech.CALM_SCRIPT, d / "calm48.wav")
    pcap, encoded, seconds = sipp.phone_pcap(wav, d / "calm.pcap")
    return {"pcap": pcap, "encoded": encoded, "seconds": seconds}


def trunk_engine(tmp_path: Path, trunk_port: int, **env: str) -> EngineProcess:
    """A started engine whose carrier (a SIPp on ``trunk_port``) knows it as acct with
    password trunk-pass, as ``sipp.trunk_uas_scenario`` and the registrar expect."""
    return EngineProcess(
        tmp_path / "engine",
        CCENGINE_SIP_TRUNK=f"127.0.0.1:{trunk_port}",
        CCENGINE_SIP_TRUNK_USERNAME="acct",
        CCENGINE_SIP_TRUNK_PASSWORD="trunk-pass",
        **env,
    ).start()


@pytest.fixture(scope="module")
def shared_phone_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    proc = EngineProcess(
        tmp_path_factory.mktemp("phone-engine"),
        CCENGINE_MEDIA_TIMEOUT="8",
        CCENGINE_SIP_TRUNKS='["127.0.0.1"]',
        CCENGINE_SIP_USERS='{"deskphone7": "s3cret-pass"}',
        CCENGINE_KNOWLEDGE_BASE=str(Path(__file__).parent / "fixtures" / "kb"),
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def phone_engine(shared_phone_engine: EngineProcess) -> EngineProcess:
    """The module's phone engine (one start instead of a dozen), once the calls of
    earlier tests have ended; ``sip_calls`` then shows a test only its own calls."""
    engine = shared_phone_engine
    deadline = time.monotonic() + 30
    while live := [c for c in sip_calls(engine, everyone=True) if c["state"] != "ended"]:
        assert time.monotonic() < deadline, f"an earlier test left calls live: {live}"
        time.sleep(0.2)
    engine.calls_since = datetime.now(UTC)
    return engine


def sip_calls(engine: EngineProcess, everyone: bool = False) -> list[dict[str, Any]]:
    """The engine's phone calls, newest first; those of this test only, on a shared engine."""
    params: dict[str, Any] = {"channel": "sip", "limit": 500}
    if engine.calls_since is not None and not everyone:
        params["since"] = engine.calls_since.isoformat()
    r = httpx.get(f"{engine.url}/api/v1/calls", params=params, headers=engine.headers)
    r.raise_for_status()
    calls: list[dict[str, Any]] = r.json()["calls"]
    return calls


def wait_ended(engine: EngineProcess, call_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        detail: dict[str, Any] = httpx.get(
            f"{engine.url}/api/v1/calls/{call_id}", headers=engine.headers
        ).json()
        if detail["state"] == "ended":
            return detail
        time.sleep(0.3)
    raise AssertionError(f"call {call_id} did not end")


def test_phone_caller_transcribed_as_well_as_offline(
    phone_engine: EngineProcess, phone_speech: dict[str, Any], tmp_path: Path
) -> None:
    """The pipeline (jitter buffer, resampling, VAD cuts) costs no accuracy: the stored
    transcript's WER is within 5 points of decoding the same G.711 audio offline."""
    scenario = sipp.call_scenario(sipp.play(phone_speech["pcap"], phone_speech["seconds"] + 2.5))
    result = sipp.run(scenario, tmp_path / "sipp", phone_engine.sip)
    assert result.ok, result.output + result.errors
    assert "SIP/2.0 180 Ringing" in result.messages and "SIP/2.0 100 Trying" in result.messages
    [call] = sip_calls(phone_engine)
    detail = wait_ended(phone_engine, call["id"])
    assert detail["end_reason"] == "remote_closed" and detail["caller"] == "15551230001"
    assert detail["legs"][0]["codec"] == "PCMU"
    heard = " ".join(u["text"] for u in detail["transcript"] if u["speaker"] == "caller")
    reference = " ".join(speech.CALM_SCRIPT)
    offline = speech.recognise(sipp.decode_g711(phone_speech["encoded"]), 8000)
    wer_engine, wer_offline = speech.wer(reference, heard), speech.wer(reference, offline)
    print(f"WER through the engine {wer_engine:.1%}: {heard}")
    print(f"WER offline, same G.711 {wer_offline:.1%}: {offline}")
    assert wer_engine <= wer_offline + 0.05
    # Moonshine on 8 kHz G.711 speech through a real SIPp call (pocketsphinx: ~48 %)
    assert wer_engine <= 0.15, heard
    assert len(detail["transcript"]) >= 3  # several utterances, not one blob
    assert detail["emotion_timeline"], "phone callers get emotion analysis too"
    # the same transcript as files
    base = f"{phone_engine.url}/api/v1/calls/{call['id']}/transcript"
    vtt = httpx.get(f"{base}.vtt", headers=phone_engine.headers)
    assert vtt.headers["content-type"].startswith("text/vtt")
    assert vtt.text.startswith("WEBVTT") and vtt.text.count(" --> ") == len(detail["transcript"])
    txt = httpx.get(f"{base}.txt", headers=phone_engine.headers).text.splitlines()
    assert len(txt) == len(detail["transcript"]) and txt[0].startswith("[00:")
    assert httpx.get(f"{base}.json", headers=phone_engine.headers).json() == detail["transcript"]
    assert httpx.get(f"{base}.pdf", headers=phone_engine.headers).status_code == 422


async def test_keys_reach_the_menu_once_each(phone_engine: EngineProcess, tmp_path: Path) -> None:
    """'1' (marker bit, three end packets) picks billing; '0' sent without any marker
    bit and with five end packets escalates to a person: each reported once."""
    keys = [sipp.Key("1", 0.6), sipp.Key("0", 2.2, marker=False, end_repeats=5)]
    quiet = np.zeros(8000 * 5, dtype=np.int16)
    pcap = sipp.write_pcap(tmp_path / "keys.pcap", sipp.phone_stream(quiet, keys))
    events: list[dict[str, Any]] = []
    reader = asyncio.create_task(phone_engine.watch_events(events))
    await asyncio.sleep(0.5)
    scenario = sipp.call_scenario(sipp.play(pcap, 9.0))
    media_port = free_port()
    heard = RtpSniffer(media_port)
    result = await asyncio.to_thread(
        sipp.run, scenario, tmp_path / "sipp", phone_engine.sip, media_port=media_port
    )
    received = heard.stop()
    print(f"the phone heard {voiced_seconds(received):.1f} s of speech:",
          speech.recognise(received, 8000))  # fmt: skip
    # the menu, then "billing. How can I help?", then the queue announcement
    assert voiced_seconds(received) >= 1.5
    await asyncio.sleep(1.0)
    reader.cancel()
    assert result.ok, result.output + result.errors
    [call] = sip_calls(phone_engine)
    got = [e for e in events if e["type"] == "dtmf.received" and e["call_id"] == call["id"]]
    assert [k["digit"] for k in got] == ["1", "0"], got
    assert got[0]["menu"] == "billing"
    detail = wait_ended(phone_engine, call["id"])
    assert detail["topic"] == "billing"
    assert [e["rule"] for e in detail["escalations"]] == ["pressed_zero"]
    queued = [e for e in events if e["type"] == "call.state_changed" and e["state"] == "queued"]
    assert queued, "pressing 0 puts the caller in the queue for a person"


def test_cancel_before_answer(phone_engine: EngineProcess, tmp_path: Path) -> None:
    result = sipp.run(sipp.cancel_scenario(), tmp_path / "sipp", phone_engine.sip)
    assert result.ok, result.output + result.errors
    assert "SIP/2.0 487 Request Terminated" in result.messages


def test_engine_hangs_up_with_bye(phone_engine: EngineProcess, tmp_path: Path) -> None:
    silence = sipp.write_pcap(
        tmp_path / "quiet.pcap", sipp.g711_packets(np.zeros(8000 * 6, dtype=np.int16))[0]
    )
    proc, base = sipp.start(
        sipp.call_scenario(sipp.play(silence, 1.0), hangup="engine"), tmp_path / "sipp",
        phone_engine.sip,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not (calls := sip_calls(phone_engine)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert calls, "the call never reached the engine"
    time.sleep(1.5)
    r = httpx.post(
        f"{phone_engine.url}/api/v1/calls/{calls[0]['id']}/hangup", headers=phone_engine.headers
    )
    assert r.status_code == 202, r.text
    result = sipp.finish(proc, base)
    assert result.ok, result.output + result.errors
    assert "BYE sip:" in result.messages
    assert wait_ended(phone_engine, calls[0]["id"])["state"] == "ended"


def test_digest_credentials(phone_engine: EngineProcess, tmp_path: Path) -> None:
    """From an address that is not a trunk a phone must authenticate: the right password
    is let in, a wrong one gets 403, and an unknown user gets the very same 403."""
    not_trunk = "127.0.0.2"
    good = sipp.call_scenario(caller="deskphone7", password="s3cret-pass")
    ok = sipp.run(good, tmp_path / "good", phone_engine.sip, local_ip=not_trunk)
    assert ok.ok, ok.output + ok.errors
    assert "SIP/2.0 401 Unauthorized" in ok.messages
    wrong = sipp.rejected_scenario(403, caller="deskphone7", password="guess")
    bad = sipp.run(wrong, tmp_path / "wrong", phone_engine.sip, local_ip=not_trunk)
    assert bad.ok, bad.output + bad.errors
    nobody = sipp.rejected_scenario(403, caller="nosuchuser", password="guess")
    unknown = sipp.run(nobody, tmp_path / "unknown", phone_engine.sip, local_ip=not_trunk)
    assert unknown.ok, unknown.output + unknown.errors
    assert len(sip_calls(phone_engine)) == 1


def test_precise_rejections(phone_engine: EngineProcess, tmp_path: Path) -> None:
    """404 for a number nobody answers, 488 when we share no codec."""
    nowhere = sipp.run(
        sipp.rejected_scenario(404), tmp_path / "404", phone_engine.sip, service="nobody-here"
    )
    assert nowhere.ok, nowhere.output + nowhere.errors
    g729 = sipp.run(sipp.rejected_scenario(488, codecs=(18,)), tmp_path / "488", phone_engine.sip)
    assert g729.ok, g729.output + g729.errors
    assert sip_calls(phone_engine) == []


def test_tcp_call(
    phone_engine: EngineProcess, phone_speech: dict[str, Any], tmp_path: Path
) -> None:
    scenario = sipp.call_scenario(sipp.play(phone_speech["pcap"], 3.0))
    result = sipp.run(scenario, tmp_path / "sipp", phone_engine.sip, transport="t1")
    assert result.ok, result.output + result.errors
    [call] = sip_calls(phone_engine)
    assert wait_ended(phone_engine, call["id"])["end_reason"] == "remote_closed"


def _mutations(seed: int, n: int) -> list[bytes]:
    """Deterministic garbage: a valid INVITE with bytes flipped, inserted, cut."""
    from tests.test_sip_core import SDP, request

    rnd = random.Random(seed)
    valid = request(body=SDP)
    out = []
    for _ in range(n):
        data = bytearray(valid)
        for _ in range(rnd.randint(1, 6)):
            pos = rnd.randrange(len(data)) if data else 0
            op = rnd.choice(["flip", "insert", "delete", "cut"])
            if op == "flip" and data:
                data[pos] = rnd.randrange(256)
            elif op == "insert":
                data[pos:pos] = rnd.choice([b"\r\n", b";", b":", b" ", b"<", b'"', b"\x00"])
            elif op == "delete":
                del data[pos : pos + rnd.randint(1, 30)]
            else:
                data = data[:pos]
        out.append(bytes(data))
    return out


def test_torture_and_fuzz_then_a_normal_call(
    phone_engine: EngineProcess, phone_speech: dict[str, Any], tmp_path: Path
) -> None:
    """RFC 4475 messages and 300 mangled ones over UDP, some over TCP: each gets an error
    answer or is dropped, and the engine then takes a call as if nothing happened."""
    from tests.test_sip_core import TORTURE_INVALID

    junk = [data for data, _ in TORTURE_INVALID.values()] + _mutations(4475, 300)
    answers: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(0.05)
        for data in junk:
            udp.sendto(data, ("127.0.0.1", phone_engine.sip_port))
            with contextlib.suppress(TimeoutError):
                answers.append(udp.recv(65535))
    for data in junk[:20]:
        with socket.create_connection(("127.0.0.1", phone_engine.sip_port), timeout=2) as tcp:
            tcp.sendall(data)
    codes = {int(a.split(b" ", 2)[1]) for a in answers if a.startswith(b"SIP/2.0 ")}
    print(f"{len(junk)} bad messages, {len(answers)} answered: {sorted(codes)}")
    assert 400 in codes and 505 in codes
    # the mangled INVITEs that stayed valid were answered as calls: none may linger
    for call in sip_calls(phone_engine):
        httpx.post(
            f"{phone_engine.url}/api/v1/calls/{call['id']}/hangup", headers=phone_engine.headers
        )
    assert httpx.get(f"{phone_engine.url}/healthz").status_code == 200
    scenario = sipp.call_scenario(sipp.play(phone_speech["pcap"], 3.0), caller="15559990000")
    result = sipp.run(scenario, tmp_path / "sipp", phone_engine.sip)
    assert result.ok, result.output + result.errors
    good = [c for c in sip_calls(phone_engine) if c["caller"] == "15559990000"]
    assert len(good) == 1
    assert wait_ended(phone_engine, good[0]["id"])["end_reason"] == "remote_closed"


def test_caller_holds_and_resumes(
    phone_engine: EngineProcess, phone_speech: dict[str, Any], tmp_path: Path
) -> None:
    """re-INVITE with a=sendonly: we answer recvonly (and stop sending); sendrecv again
    resumes; the call goes on and ends normally."""
    scenario = sipp.call_scenario(
        sipp.play(phone_speech["pcap"], 2.0),
        sipp.reinvite(2, "sendonly", "recvonly"),
        '<pause milliseconds="1500"/>\n',
        sipp.reinvite(3, "sendrecv", "sendrecv"),
        '<pause milliseconds="1000"/>\n',
        bye_cseq=4,
    )
    result = sipp.run(scenario, tmp_path / "sipp", phone_engine.sip)
    assert result.ok, result.output + result.errors
    [call] = sip_calls(phone_engine)
    assert wait_ended(phone_engine, call["id"])["end_reason"] == "remote_closed"


def test_desk_phone_registers(phone_engine: EngineProcess, tmp_path: Path) -> None:
    """A desk phone registers with digest auth, gets its binding and expiry back, and
    unregisters; a wrong password is refused."""
    ok = sipp.run(
        sipp.register_scenario("deskphone7", "s3cret-pass", 120), tmp_path / "reg",
        phone_engine.sip, local_ip="127.0.0.2",
    )  # fmt: skip
    assert ok.ok, ok.output + ok.errors
    assert "expires=120" in ok.messages
    off = sipp.run(
        sipp.register_scenario("deskphone7", "s3cret-pass", 0), tmp_path / "unreg",
        phone_engine.sip, local_ip="127.0.0.2",
    )  # fmt: skip
    assert off.ok, off.output + off.errors
    bad = sipp.run(
        sipp.register_scenario("deskphone7", "wrong", 120, expect=403),
        tmp_path / "bad", phone_engine.sip, local_ip="127.0.0.2",
    )  # fmt: skip
    assert bad.ok, bad.output + bad.errors


async def test_callback_is_placed_through_the_trunk(
    phone_speech: dict[str, Any], tmp_path: Path
) -> None:
    """A phone caller presses 0, waits, and asks to be called back. Agent Cara places the
    callback: the engine calls through the trunk (a SIPp UAS that demands digest
    credentials), the customer answers and talks, the call rings Cara's desk, and it is
    transcribed like any other call. Cara's hang-up sends the BYE."""
    trunk_port = free_port()
    engine = trunk_engine(
        tmp_path,
        trunk_port,
        CCENGINE_SIP_TRUNKS='["127.0.0.1"]',
        CCENGINE_IVR_PROMPT="",
        CCENGINE_MEDIA_TIMEOUT="10",
    )
    try:
        engine.add_user("cara", "pw-cara-1")
        quiet = np.zeros(8000 * 30, dtype=np.int16)
        keys = sipp.write_pcap(
            tmp_path / "zero.pcap", sipp.phone_stream(quiet, [sipp.Key("0", 0.6)])
        )
        first, first_base = sipp.start(
            sipp.call_scenario(sipp.play(keys, 0), hangup="engine"), tmp_path / "first",
            engine.sip,
        )  # fmt: skip
        async with engine.http(timeout=30) as http:
            deadline = time.monotonic() + 30
            call: dict[str, Any] = {}
            while time.monotonic() < deadline:
                calls = [c for c in sip_calls(engine) if c["state"] == "queued"]
                if calls:
                    call = calls[0]
                    break
                await asyncio.sleep(0.3)
            assert call, "pressing 0 should queue the caller"
            r = await http.post(
                f"/api/v1/calls/{call['id']}/callback", json={"contact": "15557654321"}
            )
            assert r.status_code == 201, r.text
            callback_id = r.json()["id"]
        done = await asyncio.to_thread(sipp.finish, first, first_base)
        assert done.ok, done.output + done.errors  # thanked and hung up by the engine

        cara = await engine.agent("cara", "pw-cara-1", "login", "available")
        events: list[dict[str, Any]] = []
        reader = asyncio.create_task(engine.watch_events(events))
        await asyncio.sleep(0.5)
        uas, uas_base = sipp.start(
            sipp.trunk_uas_scenario(phone_speech["pcap"], "acct", "trunk-pass"),
            tmp_path / "trunk", None, sip_port=trunk_port, timeout=120,
        )  # fmt: skip
        await asyncio.sleep(0.5)  # SIPp listening
        r = await cara.post(f"/api/v1/callbacks/{callback_id}/call")
        assert r.status_code == 202, r.text
        placed = r.json()["call_id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            detail = (await cara.get(f"/api/v1/calls/{placed}")).json()
            if len([u for u in detail["transcript"] if u["speaker"] == "caller"]) >= 2:
                break
            await asyncio.sleep(0.5)
        me = (await cara.get("/api/v1/auth/me")).json()
        offers = [e for e in events if e["type"] == "call.offered" and e["call_id"] == placed]
        assert [o["agent_id"] for o in offers] == [me["id"]], events[-5:]  # rings Cara
        # the same identity as the first call, so the desk shows that call as history
        assert detail["caller"] == "15551230001" and detail["channel"] == "sip"
        said = " ".join(u["text"] for u in detail["transcript"])
        print("the customer said:", said)
        # the calm caller's script, as the callee says it over G.711 (any of its words)
        script = {"morning", "calling", "check", "order", "week", "delivered", "thank"}
        assert script & set(speech.normalize(said)), said
        pending = (await cara.get("/api/v1/callbacks")).json()
        assert all(c["id"] != callback_id for c in pending)  # it is done
        r = await cara.post(f"/api/v1/calls/{placed}/hangup")
        assert r.status_code == 202, r.text
        result = await asyncio.to_thread(sipp.finish, uas, uas_base)
        reader.cancel()
        assert result.ok, result.output + result.errors
        assert "Authorization: Digest" in result.messages
        await cara.aclose()
    finally:
        engine.stop()


async def test_a_program_places_an_outbound_call(
    phone_speech: dict[str, Any], tmp_path: Path
) -> None:
    """A control key calls a customer through the trunk: the customer answers, hears the
    prompt and talks; the call is live and transcribed, and the program hangs it up with
    a BYE. When nobody answers: 502."""
    trunk_port = free_port()
    engine = trunk_engine(
        tmp_path,
        trunk_port,
        CCENGINE_CALLBACK_RING_TIMEOUT="3",
        CCENGINE_MEDIA_TIMEOUT="10",
        CCENGINE_SIP_DIAL_DOMAINS='["127.0.0.1"]',
    )
    bot = engine.ccengine("keys", "create", "reminders", "--scope", "control", "--quiet")
    try:
        async with Client(engine.url, api_key=bot.strip()) as cc:
            with pytest.raises(ApiError) as bad:
                await cc.call_out("15557654321", queue="no-such-queue")
            assert bad.value.status == 409
            uas, uas_base = sipp.start(
                sipp.trunk_uas_scenario(phone_speech["pcap"], "acct", "trunk-pass"),
                tmp_path / "trunk", None, sip_port=trunk_port, timeout=120,
            )  # fmt: skip
            await asyncio.sleep(0.5)  # SIPp listening
            placed = await cc.call_out(
                "15557654321", prompt="Hello, this is Acme calling about your order."
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                detail = await cc.call(placed.call_id)
                if len(detail.transcript) >= 2:
                    break
                await asyncio.sleep(0.5)
            await cc.hangup(placed.call_id)
            result = await asyncio.to_thread(sipp.finish, uas, uas_base)
            # (after the customer's phone: an unanswered INVITE's retransmissions would
            # reach a phone started later as a call of their own)
            with pytest.raises(ApiError) as unanswered:
                await cc.call_out("15557654321")
            assert unanswered.value.status == 502
            # a partner's PBX by SIP URI, straight there: allowed hosts only
            with pytest.raises(ApiError) as elsewhere:
                await cc.call_out("sip:desk@example.com")
            assert elsewhere.value.status == 409 and "DIAL_DOMAINS" in elsewhere.value.detail
            pbx_port = free_port()
            pbx, pbx_base = sipp.start(
                sipp.desk_phone_scenario(phone_speech["pcap"]), tmp_path / "pbx", None,
                sip_port=pbx_port, timeout=120,
            )  # fmt: skip
            await asyncio.sleep(0.5)
            direct = await cc.call_out(f"sip:desk@127.0.0.1:{pbx_port}")
            await asyncio.sleep(3)
            await cc.hangup(direct.call_id)
            direct_result = await asyncio.to_thread(sipp.finish, pbx, pbx_base)
            direct_call = await cc.call(direct.call_id)
    finally:
        engine.stop()
    assert result.ok, result.output + result.errors
    assert "Authorization: Digest" in result.messages
    assert direct_result.ok, direct_result.output + direct_result.errors
    assert direct_call.caller == f"sip:desk@127.0.0.1:{pbx_port}"
    assert direct_call.end_reason == "hangup"
    assert detail.channel == "sip" and detail.caller == "15557654321"
    said = set(speech.normalize(" ".join(u.text for u in detail.transcript)))
    assert said & {"morning", "calling", "check", "order", "week", "delivered", "thank"}, said


async def test_keys_sent_to_a_phone(phone_engine: EngineProcess, tmp_path: Path) -> None:
    """A program sends keys to a phone caller (as it would to an IVR it called): they
    arrive at the phone as RFC 4733 events, each key once, in order."""
    quiet = np.zeros(8000 * 8, dtype=np.int16)
    pcap = sipp.write_pcap(tmp_path / "quiet.pcap", sipp.phone_stream(quiet, []))
    media_port = free_port()
    events = RtpSniffer(media_port, payload_type=101)
    proc, base = sipp.start(
        sipp.call_scenario(sipp.play(pcap, 8.0)), tmp_path / "sipp", phone_engine.sip,
        media_port=media_port,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (live := [c for c in sip_calls(phone_engine) if c["state"] == "active"]):
            assert time.monotonic() < deadline, "the phone call never became active"
            await asyncio.sleep(0.2)
        async with Client(phone_engine.url, api_key=phone_engine.api_key) as cc:
            assert await cc.send_dtmf(live[0]["id"], "4#1") == "rfc4733"
    finally:
        result = await asyncio.to_thread(sipp.finish, proc, base)
        events.close()
    assert result.ok, result.output + result.errors
    ordered = [events.packets[k][1] for k in sorted(events.packets)]
    ends = [p[0] for p in ordered if p[1] & 0x80]
    keys = [e for i, e in enumerate(ends) if i == 0 or ends[i - 1] != e]
    assert keys == [4, 11, 1], ordered  # "4", "#", "1"


async def test_agent_transfers_the_caller_to_a_number_outside(
    phone_speech: dict[str, Any], voices: dict[str, Path], tmp_path: Path
) -> None:
    """Ann has the upset in-app caller and transfers them to a partner's number: the
    trunk rings it, the partner answers and is transcribed on the agent's side, Ann goes
    to wrap-up, and the event names the number."""
    trunk_port = free_port()
    engine = trunk_engine(
        tmp_path,
        trunk_port,
        CCENGINE_MEDIA_TIMEOUT="10",
    )
    engine.add_user("ann", "pw-ann-123")
    ann = await engine.agent("ann", "pw-ann-123", "login", "available")
    caller = Caller(engine.url, voices["angry"])
    desk = Caller(engine.url, voices["calm"])  # Ann's softphone
    try:
        await caller.dial()
        await caller.wait_for("call.offered", within=60)
        await desk.accept(ann, caller.call_id)
        await caller.wait_for("call.state_changed", state="bridged")
        uas, uas_base = sipp.start(
            sipp.trunk_uas_scenario(phone_speech["pcap"], "acct", "trunk-pass"),
            tmp_path / "partner", None, sip_port=trunk_port, timeout=120,
        )  # fmt: skip
        await asyncio.sleep(0.5)
        r = await ann.post(
            f"/api/v1/calls/{caller.call_id}/transfer",
            json={"number": "15550001111", "note": "billing partner, refund case"},
        )
        assert r.status_code == 202, r.text
        moved = await caller.wait_for("call.transferred")
        deadline = time.monotonic() + 60
        partner: list[str] = []
        while time.monotonic() < deadline and len(partner) < 2:
            detail = (await ann.get(f"/api/v1/calls/{caller.call_id}")).json()
            legs = {leg["id"]: leg for leg in detail["legs"]}
            partner = [
                u["text"] for u in detail["transcript"]
                if u["speaker"] == "agent" and legs[u["leg_id"]]["transport"] == "sip"
            ]  # fmt: skip
            await asyncio.sleep(0.5)
        presence = {a["username"]: a["presence"] for a in (await ann.get("/api/v1/agents")).json()}
        r = await ann.post(f"/api/v1/calls/{caller.call_id}/hangup")
        assert r.status_code == 403  # no longer on her line
        async with engine.http() as program:
            r = await program.post(f"/api/v1/calls/{caller.call_id}/hangup")
        assert r.status_code == 202, r.text
        result = await asyncio.to_thread(sipp.finish, uas, uas_base)
    finally:
        await asyncio.gather(caller.close(), desk.close())
        await ann.aclose()
        engine.stop()
    assert result.ok, result.output + result.errors
    assert (moved["to_number"], moved["from_agent"]) == ("15550001111", "ann")
    assert presence["ann"] == "wrap_up"
    said = set(speech.normalize(" ".join(partner)))
    assert said & {"morning", "calling", "check", "order", "week", "delivered", "thank"}, partner
    assert [n["text"] for n in detail["notes"] if n["kind"] == "transfer"] == [
        "billing partner, refund case"
    ]


def test_engine_registers_to_the_carrier_and_refreshes(tmp_path: Path) -> None:
    """Behind NAT the engine registers to its trunk: SIPp as the carrier's registrar
    challenges, checks the digest, grants 4 s, and gets the refresh in time."""
    registrar_port = free_port()
    carrier, base = sipp.start(
        sipp.registrar_scenario("acct", "trunk-pass", 4), tmp_path / "registrar", None,
        sip_port=registrar_port, timeout=40,
    )  # fmt: skip
    time.sleep(0.5)
    engine = trunk_engine(
        tmp_path,
        registrar_port,
        CCENGINE_SIP_TRUNK_REGISTER="true",
    )
    try:
        result = sipp.finish(carrier, base, timeout=60)
        assert result.ok, result.output + result.errors
        assert result.messages.count("REGISTER sip:127.0.0.1 SIP/2.0") == 4
        assert "registered to sip:127.0.0.1 for 4 s" in engine.log.read_text()
    finally:
        engine.stop()


def test_wideband_phone_g722(phone_engine: EngineProcess, tmp_path: Path) -> None:
    """A G.722 phone is answered in G.722 (16 kHz audio); its transcript is as good as
    decoding the same G.722 offline."""
    wav = speech.piper_script(speech.CALM_SCRIPT, tmp_path / "calm48.wav")
    wide = speech.sox(wav, tmp_path / "calm16k.wav", ["lowpass", "7000"], rate=16000)
    pcm, _ = read_wav_mono(str(wide))
    pcm = np.concatenate([np.zeros(8000, dtype=np.int16), pcm])
    packets, encoded = sipp.g711_packets(pcm, payload_type=9)
    pcap = sipp.write_pcap(tmp_path / "wide.pcap", packets)
    scenario = sipp.call_scenario(sipp.play(pcap, len(packets) * 0.02 + 2.5), codecs=(9, 0))
    result = sipp.run(scenario, tmp_path / "sipp", phone_engine.sip)
    assert result.ok, result.output + result.errors
    assert "a=rtpmap:9 G722/8000" in result.messages.split("SIP/2.0 200 OK", 1)[1]
    [call] = sip_calls(phone_engine)
    detail = wait_ended(phone_engine, call["id"])
    assert detail["legs"][0]["codec"] == "G722"
    heard = " ".join(u["text"] for u in detail["transcript"] if u["speaker"] == "caller")
    offline = speech.recognise(sipp.decode_g711(encoded, 9), 16000)
    reference = " ".join(speech.CALM_SCRIPT)
    wer_engine, wer_offline = speech.wer(reference, heard), speech.wer(reference, offline)
    print(f"G.722 WER through the engine {wer_engine:.1%}: {heard}")
    print(f"G.722 WER offline {wer_offline:.1%}: {offline}")
    assert wer_engine <= wer_offline + 0.05


@pytest.fixture
def desk_engine(tmp_path: Path) -> Iterator[tuple[EngineProcess, int]]:
    """An engine where agent desk7's SIP desk phone (127.0.0.2, the port given) has
    registered with its password; the agent itself has not signed in yet."""
    engine = EngineProcess(
        tmp_path / "engine",
        CCENGINE_SIP_TRUNKS='["127.0.0.1"]',
        CCENGINE_SIP_USERS='{"desk7": "s3cret-pass"}',
        CCENGINE_IVR_PROMPT="",
        CCENGINE_MEDIA_TIMEOUT="10",
    ).start()
    try:
        engine.add_user("desk7", "pw-desk-7")
        desk_port = free_port()
        reg = sipp.run(
            sipp.register_scenario("desk7", "s3cret-pass", 600), tmp_path / "reg",
            engine.sip, local_ip="127.0.0.2", sip_port=desk_port,
        )  # fmt: skip
        assert reg.ok, reg.output + reg.errors
        yield engine, desk_port
    finally:
        engine.stop()


def test_agent_answers_on_a_registered_desk_phone(
    desk_engine: tuple[EngineProcess, int], tmp_path: Path
) -> None:
    """Agent desk7 works from a SIP desk phone: it registers, the agent goes available,
    a phone caller presses 0, the desk phone rings with the caller's number, the agent
    picks up and talks (transcribed as the agent); the caller's hang-up ends both."""
    engine, desk_port = desk_engine
    agent_wav = speech.piper_script(
        ["Hello, this is the billing desk.", "I can see your order and I will fix it."],
        tmp_path / "agent.wav",
    )  # fmt: skip
    pcap, _, _ = sipp.phone_pcap(agent_wav, tmp_path / "agent.pcap", repeat=3)
    desk, desk_base = sipp.start(
        sipp.desk_phone_scenario(pcap), tmp_path / "desk", None,
        local_ip="127.0.0.2", sip_port=desk_port, timeout=90,
    )  # fmt: skip

    async def available() -> None:
        http = await engine.agent("desk7", "pw-desk-7", "login", "available")
        await http.aclose()

    asyncio.run(available())
    quiet = np.zeros(8000 * 25, dtype=np.int16)
    keys = sipp.write_pcap(tmp_path / "zero.pcap", sipp.phone_stream(quiet, [sipp.Key("0", 0.6)]))
    caller = sipp.run(sipp.call_scenario(sipp.play(keys, 22.0)), tmp_path / "caller", engine.sip)
    assert caller.ok, caller.output + caller.errors
    desk_result = sipp.finish(desk, desk_base)
    assert desk_result.ok, desk_result.output + desk_result.errors
    invite = desk_result.messages.split("INVITE sip:desk7@127.0.0.2", 1)[1]
    assert "15551230001" in invite.split("\n\n", 1)[0]  # the caller's number shows
    [call] = sip_calls(engine)
    detail = wait_ended(engine, call["id"])
    assert detail["state"] == "ended" and detail["end_reason"] == "remote_closed"
    agent_leg = [leg for leg in detail["legs"] if leg["role"] == "agent"]
    assert agent_leg and agent_leg[0]["transport"] == "sip"
    agent_said = [u["text"] for u in detail["transcript"] if u["speaker"] == "agent"]
    print("the agent said:", agent_said)
    # the desk phone's audio went through the agent's pipeline: utterances with words
    # (the words themselves are pocketsphinx's guess at 8 kHz TTS; accuracy over
    # G.711 is measured against offline decoding in test_phone_caller_transcribed...)
    assert len([t for t in agent_said if t.strip()]) >= 2, agent_said


def test_full_engine_answers_503_with_retry_after(
    phone_speech: dict[str, Any], tmp_path: Path
) -> None:
    engine = EngineProcess(
        tmp_path / "engine",
        CCENGINE_SIP_TRUNKS='["127.0.0.1"]',
        CCENGINE_MAX_CONCURRENT_CALLS="1",
        CCENGINE_IVR_PROMPT="",
    ).start()
    try:
        first, base = sipp.start(
            sipp.call_scenario(sipp.play(phone_speech["pcap"], 6.0)), tmp_path / "first",
            engine.sip,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not sip_calls(engine) and time.monotonic() < deadline:
            time.sleep(0.2)
        second = sipp.run(sipp.rejected_scenario(503), tmp_path / "second", engine.sip)
        assert second.ok, second.output + second.errors
        assert "Retry-After: 30" in second.messages
        assert sipp.finish(first, base).ok
        assert len(sip_calls(engine)) == 1
    finally:
        engine.stop()


def test_caller_dials_an_agent_directly(
    desk_engine: tuple[EngineProcess, int], tmp_path: Path
) -> None:
    """An agent's name reaches their registered desk phone: 480 while they are away,
    their phone rings once they are available, 486 to the next caller while they talk."""
    engine, desk_port = desk_engine

    async def presence(*events: str) -> None:
        http = await engine.agent("desk7", "pw-desk-7", *events)
        await http.aclose()

    asyncio.run(presence("login"))  # signed in, away
    away = sipp.run(sipp.rejected_scenario(480), tmp_path / "away", engine.sip,
                    service="desk7")  # fmt: skip
    assert away.ok, away.output + away.errors

    asyncio.run(presence("available"))
    quiet = np.zeros(8000 * 20, dtype=np.int16)
    tone = sipp.write_pcap(tmp_path / "quiet.pcap", sipp.g711_packets(quiet)[0])
    desk, desk_base = sipp.start(
        sipp.desk_phone_scenario(tone), tmp_path / "desk", None,
        local_ip="127.0.0.2", sip_port=desk_port, timeout=60,
    )  # fmt: skip
    first, first_base = sipp.start(
        sipp.call_scenario(sipp.play(tone, 12.0)), tmp_path / "first", engine.sip,
        service="desk7",
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(c["state"] == "bridged" for c in sip_calls(engine)):
            break
        time.sleep(0.3)
    assert any(c["state"] == "bridged" for c in sip_calls(engine)), sip_calls(engine)
    busy = sipp.run(sipp.rejected_scenario(486, caller="15550009999"), tmp_path / "busy",
                    engine.sip, service="desk7")  # fmt: skip
    assert busy.ok, busy.output + busy.errors
    assert sipp.finish(first, first_base).ok
    assert sipp.finish(desk, desk_base).ok
    [call] = sip_calls(engine)
    assert wait_ended(engine, call["id"])["escalation_reason"] == "dialled desk7 directly"


def _udp_ports(pid: int) -> set[int]:
    import psutil

    return {c.laddr.port for c in psutil.Process(pid).net_connections(kind="udp4")}


def _metric(engine: EngineProcess, line_start: str) -> float:
    text = httpx.get(f"{engine.url}/metrics", headers=engine.headers).text
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(line_start))


def test_a_stranger_cannot_take_over_a_phone_call(
    phone_engine: EngineProcess, phone_speech: dict[str, Any], tmp_path: Path
) -> None:
    """The hijack that worked: the engine latched to whoever sent RTP to a call's port
    first, so a stranger one second ahead of the phone received all our packets and its
    audio became the caller's transcript. Now the stranger (another host than the SDP
    and the SIP signalling named) gets nothing, its packets are counted on /metrics,
    and the phone is heard and transcribed as before."""
    refused = 'ccengine_rtp_refused_packets_total{reason="foreign"}'
    before = _metric(phone_engine, refused)
    deadline = time.monotonic() + 30  # a fresh engine may still be busy starting
    while httpx.get(f"{phone_engine.url}/healthz").json()["load"]["state"] != "ok":
        assert time.monotonic() < deadline, "the engine stays full"
        time.sleep(0.2)
    assert phone_engine.proc is not None
    pid = phone_engine.proc.pid
    known = _udp_ports(pid)
    pause = '<pause milliseconds="2000"/>\n'  # answered; the phone's RTP starts after this
    media = pause + sipp.play(phone_speech["pcap"], phone_speech["seconds"] + 2.5)
    proc, base = sipp.start(sipp.call_scenario(media), tmp_path / "sipp", phone_engine.sip)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.3", 0))
    stranger.settimeout(0.1)
    got, new = 0, set()
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if new := _udp_ports(pid) - known:
                break
            time.sleep(0.02)
        if new:
            [port] = new
            tone = (np.sin(np.arange(160) * 2 * np.pi * 440 / 8000) * 12000).astype(np.int16)
            _, loud = sipp.g711_packets(tone)
            for seq in range(50):  # a second of the stranger's audio, before the phone's
                header = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x666)
                stranger.sendto(header + loud, ("127.0.0.1", port))
                time.sleep(0.02)
            while proc.poll() is None:  # whatever the engine sends the stranger, all call
                with contextlib.suppress(TimeoutError):
                    stranger.recv(2048)
                    got += 1
    finally:
        stranger.close()
        result = sipp.finish(proc, base)
    assert new, f"no RTP port opened for the call: {result.output}{result.errors}"
    assert got == 0, f"the stranger received {got} of our packets"
    assert result.ok, result.output + result.errors  # the call went on to the caller's BYE
    assert _metric(phone_engine, refused) - before >= 50
    [call] = sip_calls(phone_engine)
    detail = wait_ended(phone_engine, call["id"])
    heard = " ".join(u["text"] for u in detail["transcript"] if u["speaker"] == "caller").lower()
    assert "order" in heard and "morning" in heard, heard


def _register(user: str, cseq: int, branch: str, sock: socket.socket, engine: EngineProcess,
              auth: str = "", expires: int = 60) -> sm.SipResponse:  # fmt: skip
    """One REGISTER over UDP from ``sock``; the engine's final answer."""
    host, port = sock.getsockname()
    uri = f"sip:127.0.0.1:{engine.sip_port}"
    msg = (
        f"REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{branch}\r\n"
        f"From: <sip:{user}@127.0.0.1>;tag=rt{branch}\r\nTo: <sip:{user}@127.0.0.1>\r\n"
        f"Call-ID: reg-{user}-{port}\r\nCSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@{host}:{port}>\r\nExpires: {expires}\r\nMax-Forwards: 70\r\n"
        + (f"Authorization: {auth}\r\n" if auth else "")
        + "Content-Length: 0\r\n\r\n"
    )
    sock.sendto(msg.encode(), ("127.0.0.1", engine.sip_port))
    while True:
        reply = sm.parse(sock.recv(65535))
        assert isinstance(reply, sm.SipResponse)
        if reply.status_code >= 200:
            return reply


def test_digest_answers_do_not_replay_and_guessing_is_locked_out(
    phone_engine: EngineProcess, tmp_path: Path
) -> None:
    """Against a real engine over UDP: a captured Authorization sent again got 200 (nc was
    not tracked) and 2,363 guesses a second went unthrottled. Now the replay is
    challenged afresh (401 stale=true) while the phone's next count is accepted, and a
    burst of guesses is cut off after five with 503 and Retry-After, counted on /metrics
    and raised as a warning in the log."""
    from tests.test_sip_core import digest

    uri = f"sip:127.0.0.1:{phone_engine.sip_port}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
        phone.bind(("127.0.0.5", 0))
        phone.settimeout(5)
        challenge = _register("deskphone7", 1, "p1", phone, phone_engine)
        assert challenge.status_code == 401
        ch = challenge.headers.get_first("www-authenticate") or ""
        auth = digest(ch, "deskphone7", "s3cret-pass", "REGISTER", uri)
        assert _register("deskphone7", 2, "p2", phone, phone_engine, auth).status_code == 200
        replayed = _register("deskphone7", 3, "p3", phone, phone_engine, auth)
        assert replayed.status_code == 401, replayed.status_code
        assert "stale=true" in (replayed.headers.get_first("www-authenticate") or "")
        next_count = digest(ch, "deskphone7", "s3cret-pass", "REGISTER", uri, nc=2)
        off = _register("deskphone7", 4, "p4", phone, phone_engine, next_count, expires=0)
        assert off.status_code == 200  # unregistered again, with the nonce's next count
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        attacker.bind(("127.0.0.4", 0))
        attacker.settimeout(5)
        ch = (
            _register("bf-target", 1, "g0", attacker, phone_engine).headers.get_first(
                "www-authenticate"
            )
            or ""
        )
        answers = []
        for n in range(1, 41):
            guess = digest(ch, "bf-target", f"guess-{n}", "REGISTER", uri, nc=n)
            r = _register("bf-target", n + 1, f"g{n}", attacker, phone_engine, guess)
            answers.append((r.status_code, r.headers.get_first("retry-after")))
    assert answers[:5] == [(403, None)] * 5, answers
    assert {status for status, _ in answers[5:]} == {503}
    assert all(after is not None and 1 <= int(after) <= 30 for _, after in answers[5:])
    metrics = httpx.get(f"{phone_engine.url}/metrics", headers=phone_engine.headers).text
    assert _metric(phone_engine, 'ccengine_sip_auth_failures_total{reason="replay"}') >= 1
    assert _metric(phone_engine, 'ccengine_sip_auth_failures_total{reason="throttled"}') >= 35
    assert 'ccengine_sip_auth_lockouts_total{kind="user"}' in metrics
    log = phone_engine.log.read_text()
    assert "SIP brute force? 5 wrong digest answers for user 'bf-target'" in log
