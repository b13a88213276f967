"""ICE servers come from configuration only: none by default, the same list for the
engine's own peer connections and for the pages.

aiortc, given no list, asks the public STUN server stun.l.google.com on every call: a
DNS lookup and a request nobody configured, which leaks call timing to an outsider and
stalls ICE gathering where there is no DNS.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from engine.calls import aiortc_ice_servers
from engine.config import Settings
from media.webrtc import WebRtcLeg
from tests.engine_proc import ROOT, EngineProcess

CHROMIUM = (Path(__file__).parent / "fixtures" / "chromium_offer.sdp").read_text()
STUN = "stun:stun.example.net:3478"
TURN = {"urls": ["turn:turn.example.net:3478?transport=udp"], "username": "u1", "credential": "s3"}
SPY = Path(__file__).parent / "fixtures" / "resolver_spy"


def _is_address(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def _ice(leg: WebRtcLeg) -> tuple[object, object]:
    """The STUN and TURN server the peer's ICE agent (aioice) will really ask: aiortc has
    no getConfiguration(), so we look where its gatherer keeps them."""
    transport = leg.pc.getTransceivers()[0].sender.transport
    connection = transport.transport.iceGatherer._connection
    return connection.stun_server, connection.turn_server


async def _answer(ice_servers: list[object]) -> WebRtcLeg:
    async def ended(_reason: str) -> None:
        return None

    leg = WebRtcLeg(ended, ice_servers=ice_servers)  # type: ignore[arg-type]
    await leg.answer(CHROMIUM)
    return leg


async def test_engine_peer_has_no_ice_servers_and_asks_no_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With nothing configured, the engine's RTCPeerConnection has no ICE servers, and
    answering an offer resolves no name (aiortc's default looked up stun.l.google.com)."""
    names: list[str] = []
    real_gethostbyname, real_getaddrinfo = socket.gethostbyname, socket.getaddrinfo

    def gethostbyname(host: str) -> str:
        if not _is_address(host):
            names.append(host)
            raise OSError("no DNS in this test")
        return real_gethostbyname(host)

    def getaddrinfo(host: object, *args: object, **kw: object) -> object:
        if isinstance(host, str | bytes) and not _is_address(
            str(host, "ascii") if isinstance(host, bytes) else host
        ):
            names.append(str(host))
            raise socket.gaierror("no DNS in this test")
        return real_getaddrinfo(host, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "gethostbyname", gethostbyname)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    servers = aiortc_ice_servers(Settings(_env_file=None).ice_servers)  # type: ignore[call-arg]
    leg = await _answer(list(servers))
    try:
        assert _ice(leg) == (None, None)
        assert "a=candidate" in leg.pc.localDescription.sdp  # host candidates still
    finally:
        await leg.close()
    await asyncio.sleep(0.1)  # anything gathering started in the background
    assert names == []


async def test_configured_servers_reach_the_engine_peer() -> None:
    settings = Settings(_env_file=None, ice_servers=[{"urls": STUN}, TURN])  # type: ignore[call-arg]
    servers = aiortc_ice_servers(settings.ice_servers)
    assert [(s.urls, s.username, s.credential) for s in servers] == [
        ([STUN], None, None),
        (TURN["urls"], "u1", "s3"),
    ]

    async def ended(_reason: str) -> None:
        return None

    leg = WebRtcLeg(ended, ice_servers=servers)
    leg.pc.addTransceiver("audio")  # its ICE agent exists now; nothing is gathered yet
    try:
        assert _ice(leg) == (("stun.example.net", 3478), ("turn.example.net", 3478))
    finally:
        await leg.close()


@pytest.mark.parametrize(
    ("server", "error"),
    [
        ({"urls": "http://stun.example.net"}, "not a stun:, turn: or turns: URL"),
        ({"urls": "turn:turn.example.net"}, "a TURN server needs a username and a credential"),
        ({"urls": []}, "at least 1 item"),
    ],
)
def test_bad_ice_server_settings_are_refused(server: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        Settings(_env_file=None, ice_servers=[server])  # type: ignore[call-arg]


@pytest.mark.integration
def test_engine_and_pages_get_the_same_list(tmp_path: Path) -> None:
    """A real engine with nothing configured: the pages are told "none", and a call
    looks up no name at all (a resolver spy in the engine process records every
    lookup). Configured (calls not public): the pages get exactly the list, TURN
    credentials included, once they show credentials or a call link."""
    lookups = tmp_path / "lookups.txt"
    quick = {"CCENGINE_PRELOAD_LANGUAGES": "[]"}  # no recognizer needed to answer an offer
    plain = EngineProcess(
        tmp_path / "plain", PYTHONPATH=f"{SPY}:{ROOT}", CCENGINE_TEST_LOOKUPS=str(lookups), **quick
    ).start()
    try:
        with httpx.Client(base_url=plain.url, headers=plain.headers, timeout=30) as http:
            assert http.get("/api/v1/ice-servers").json() == {"ice_servers": []}
            r = http.post("/api/v1/calls", json={"sdp": CHROMIUM})
            assert r.status_code == 201, r.text
            http.post(f"/api/v1/calls/{r.json()['call_id']}/hangup")
    finally:
        plain.stop()
    assert "WebRTC ICE servers: none (host candidates only)" in plain.log.read_text()
    assert lookups.exists(), "the resolver spy did not load in the engine"
    looked_up = [h for h in lookups.read_text().split() if h != "spy-loaded"]
    assert "stun.l.google.com" not in looked_up and not looked_up

    servers = json.dumps([{"urls": STUN}, TURN])
    configured = EngineProcess(
        tmp_path / "configured",
        CCENGINE_ICE_SERVERS=servers,
        CCENGINE_PUBLIC_CALLS="false",
        **quick,
    ).start()
    try:
        with httpx.Client(base_url=configured.url, timeout=30) as anonymous:
            assert anonymous.get("/api/v1/ice-servers").status_code == 401
            forged = anonymous.get("/api/v1/ice-servers", headers={"x-call-invite": "x"})
            assert forged.status_code == 401
        with httpx.Client(base_url=configured.url, headers=configured.headers, timeout=30) as http:
            r = http.get("/api/v1/ice-servers")
            assert r.status_code == 200, r.text
            assert r.json() == {"ice_servers": [{"urls": [STUN]}, TURN]}
            link = http.post("/api/v1/call-links", json={"caller": "cust-1"})
            assert link.status_code == 201, link.text
            token = link.json()["token"]
        with httpx.Client(base_url=configured.url, timeout=30) as invited:
            r = invited.get("/api/v1/ice-servers", headers={"x-call-invite": token})
            assert r.status_code == 200 and r.json()["ice_servers"][1] == TURN
    finally:
        configured.stop()
    assert f"WebRTC ICE servers: {STUN}, {TURN['urls'][0]}" in configured.log.read_text()
