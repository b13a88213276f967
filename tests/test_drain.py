"""Draining a node (engine/drain.py), in-process: the decision with ``now`` passed in,
then the real app (tests/controlplane.py) and its SIP front on a loopback socket.

Before draining existed, the only way to take a node out was to stop it: every call on
it ended (``engine_shutdown``), while /healthz, SIP OPTIONS and every new call said
"come in" until the very end. These tests fail on that behaviour.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import httpx
import pytest

from engine.callstate import Overloaded
from engine.drain import END_REASON, POLL, RETRY_AFTER, TRANSITIONS, Drain, Draining, NodeDrain
from engine.events import CallEnded
from media.rtp import RtpSession
from media.sip.peer import SipPeer
from media.sip.sdp import parse_offer
from tests.controlplane import PHONE_SDP, ControlPlane, phone_call

FIXTURES = Path(__file__).parent / "fixtures"
STATES = ("serving", "draining", "drained")


# -- the decision ---------------------------------------------------------------------------


def test_the_transition_table_is_the_whole_state_machine() -> None:
    """Every (state, trigger) pair moves as TRANSITIONS says, or not at all: the table
    the module's theory of operation shows is the one the code follows."""
    for state in STATES:
        for trigger in ("drain", "calls_ended", "timeout"):
            d = Drain(timeout=10)
            d.state = state  # type: ignore[assignment]
            d.started = 0.0 if state != "serving" else None
            if trigger == "drain":
                d.begin(1.0, "test")
            elif trigger == "calls_ended":
                d.step(1.0, calls_left=0)
            else:
                d.step(100.0, calls_left=3)
            assert d.state == TRANSITIONS.get((state, trigger), state), (state, trigger)


def test_a_drain_refuses_new_calls_and_exits_when_the_calls_end() -> None:
    d = Drain(timeout=60)
    d.admit()  # serving: no refusal
    assert d.step(0.0, calls_left=0) == "wait"  # an idle serving node does not exit
    assert d.begin(10.0, "SIGTERM") and d.draining
    assert not d.begin(11.0, "admin ann")  # asking again changes nothing
    assert d.by == "SIGTERM" and d.deadline() == 70.0
    with pytest.raises(Draining) as refused:
        d.admit()
    assert isinstance(refused.value, Overloaded)  # the 503 paths treat it as such
    assert refused.value.retry_after == RETRY_AFTER
    assert d.step(20.0, calls_left=2) == "wait"
    assert d.step(69.9, calls_left=1) == "wait"
    assert d.step(30.0, calls_left=0) == "exit" and d.state == "drained"
    assert d.step(31.0, calls_left=0) == "wait"  # exits once
    with pytest.raises(Draining):
        d.admit()


def test_at_the_deadline_the_calls_left_are_ended_once() -> None:
    d = Drain(timeout=60)
    d.begin(10.0, "SIGTERM")
    assert d.step(70.0, calls_left=2) == "end_calls" and d.state == "drained"
    assert d.step(71.0, calls_left=2) == "wait"


async def test_the_runner_ends_the_stragglers_and_reports_drained() -> None:
    """NodeDrain on the loop: it watches the calls left, ends them at the deadline with
    ``node_drained`` and calls ``on_drained`` once (``ccengine serve`` stops there)."""
    calls = {"a", "b"}
    ended: list[str] = []
    changes: list[bool] = []

    async def end_calls(reason: str) -> None:
        ended.append(reason)
        calls.clear()

    drain = NodeDrain(0.3, lambda: len(calls), end_calls, on_change=changes.append)
    drained: list[bool] = []
    drain.on_drained = lambda: drained.append(True)
    drain.start()
    assert drain.begin("test") and not drain.begin("again")
    assert changes == [True] and drain.status().calls_left == 2
    await asyncio.wait_for(drain.drained.wait(), 5)
    assert ended == [END_REASON] and drained == [True] and drain.status().state == "drained"
    await drain.stop()


async def test_a_signal_handler_starts_the_drain_on_the_loop() -> None:
    """``request`` is what the SIGTERM handler calls: before the app started it says
    no (the server then stops as before); after, the drain starts on the loop."""

    async def end_calls(_reason: str) -> None:
        pass

    drain = NodeDrain(60, lambda: 1, end_calls)
    assert not drain.request("SIGTERM")
    drain.start()
    assert drain.request("SIGTERM") and not drain.draining  # not yet: on the loop
    await asyncio.sleep(0)
    assert drain.draining and drain.status().by == "SIGTERM"
    await drain.stop()


async def test_sigterm_drains_then_stops_and_is_never_raised_again() -> None:
    """The server's SIGTERM handler: the first drains, a second while draining stops at
    once, and one after stopping began changes nothing. None reaches uvicorn's list of
    signals to raise again on exit: one there ended a drained engine with 143, not 0
    (a drain through the API, then ``docker stop``)."""
    import signal

    import uvicorn

    from engine.server import DrainingServer

    async def end_calls(_reason: str) -> None:
        pass

    drain = NodeDrain(60, lambda: 1, end_calls)
    server = DrainingServer(uvicorn.Config(app=None), drain)
    drain.start()
    server.handle_exit(signal.SIGTERM, None)
    await asyncio.sleep(0)
    assert drain.draining and not server.should_exit  # the calls go on
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit  # a second: stop now
    server.handle_exit(signal.SIGTERM, None)
    assert server._captured_signals == []
    await drain.stop()


# -- the app ----------------------------------------------------------------------------


def offer() -> dict[str, str]:
    return {"type": "offer", "sdp": (FIXTURES / "chromium_offer.sdp").read_text()}


def check_draining(r: httpx.Response) -> None:
    """A 503 problem that says the node drains, with Retry-After."""
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["retry-after"] == str(RETRY_AFTER)
    body = r.json()
    assert body["title"] == "Node draining" and body["draining"] is True, body
    assert body["retry_after"] == RETRY_AFTER
    assert "draining" in body["detail"] and "calls in progress go on" in body["detail"]


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, name
    return float(match.group(1))


async def test_a_drained_node_refuses_new_calls_and_keeps_the_one_it_has(
    control_plane: ControlPlane,
) -> None:
    """Regression for "stopping is the only way out": the admin drains the node; from
    then /readyz is 503 (Kubernetes takes it out of its Services) while /healthz stays
    200 (liveness: restarting it would drop its calls), a new in-app call gets 503 with
    Retry-After and a problem saying why, the phone call already up goes on (and can be
    hung up), and once it has ended the node reports itself drained."""
    cp = control_plane
    anonymous, admin = cp.anonymous(), cp.http()
    reader = cp.anonymous(headers={"Authorization": f"Bearer {await cp.new_key('ro', 'read')}"})
    r = await anonymous.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready", "draining": False}
    node = (await reader.get("/api/v1/node")).json()
    assert node["state"] == "serving" and not node["draining"] and node["calls_left"] == 0
    assert node["drain_timeout"] == 3600.0 and node["since"] is None
    call, _peer = await phone_call(cp.calls, "+15550001234")

    # only admins drain: anonymous 401, a read key 403
    assert (await anonymous.post("/api/v1/node/drain")).status_code == 401
    assert (await reader.post("/api/v1/node/drain")).status_code == 403
    assert (await anonymous.get("/readyz")).status_code == 200
    r = await admin.post("/api/v1/node/drain")
    assert r.status_code == 202, r.text
    node = r.json()
    assert node["state"] == "draining" and node["draining"] and node["calls_left"] == 1
    assert node["by"] == "api:tests (POST /api/v1/node/drain)" and node["deadline"]

    r = await anonymous.get("/readyz")
    assert r.status_code == 503 and r.json()["detail"] == "no new calls; 1 calls left"
    health = await anonymous.get("/healthz")
    assert health.status_code == 200 and health.json()["draining"] is True
    check_draining(await anonymous.post("/api/v1/calls", json=offer()))
    assert [c["id"] for c in (await admin.get("/api/v1/calls")).json()["calls"]] == [call.id]
    metrics = (await admin.get("/metrics")).text
    assert metric(metrics, "ccengine_node_draining") == 1.0
    assert metric(metrics, 'ccengine_offers_rejected_total{reason="draining"}') == 1.0
    # asking again changes nothing: the first drain's time and author stay
    again = (await admin.post("/api/v1/node/drain")).json()
    assert again["since"] == node["since"] and again["by"] == node["by"]

    # the call in progress is untouched, and ends as any call does
    await asyncio.sleep(3 * POLL)
    assert cp.calls.live(call.id) is call and call.state == "active"
    drain = cp.app.state.drain  # type: ignore[union-attr]
    assert not drain.drained.is_set()
    async with cp.events(call.id) as sub:
        assert (await admin.post(f"/api/v1/calls/{call.id}/hangup")).status_code == 202
        ended = await cp.next_event(sub, "call.ended")
    assert isinstance(ended, CallEnded) and ended.reason == "hangup"
    await asyncio.wait_for(drain.drained.wait(), 5)
    node = (await reader.get("/api/v1/node")).json()
    assert node["state"] == "drained" and node["calls_left"] == 0
    assert (await anonymous.get("/readyz")).status_code == 503


async def test_a_call_ringing_when_the_drain_begins_is_counted_and_put_through(
    control_plane: ControlPlane,
) -> None:
    """Regression: a number we dialled (a callback, a program's call) was admitted
    before it rang, then admitted again once answered: a drain begun while it rang hung
    the callee up the moment they answered, and the drain, not counting the ringing
    call, could let the node exit under it. Its slot is now held while it rings."""
    cp = control_plane
    drain = cp.app.state.drain  # type: ignore[union-attr]
    with cp.calls.reserve():  # as the SIP front does before it rings or dials
        assert cp.calls.calls_in_progress() == 1
        assert drain.begin("test")
        assert drain.status().calls_left == 1  # the ringing call keeps the node up
        call, _peer = await phone_call(cp.calls, "+15550001234")  # answered: put through
        with pytest.raises(Draining):  # the slot is the call's: anyone new is refused
            await phone_call(cp.calls, "+15550009999")
    assert cp.calls.calls_in_progress() == 1 and cp.calls.live(call.id) is call
    with pytest.raises(Draining):
        cp.calls.reserve()
    assert cp.calls.calls_in_progress() == 1  # a refused reservation holds nothing


async def test_a_caller_already_queued_here_is_still_put_through_to_an_agent(
    control_plane: ControlPlane,
) -> None:
    """Draining must not strand the callers it has: one waiting for an agent can only be
    answered where their media is, so an agent's accept is not a new call and is not
    refused. The node waits for the bridged call, and is drained once it ends."""
    cp = control_plane
    await cp.add_user("ann", "pw-ann-123")
    ann = await cp.store.user_by_name("ann")
    assert ann is not None
    await cp.calls.agent_presence(ann, "login")
    await cp.calls.agent_presence(ann, "available")
    call, _peer = await phone_call(cp.calls, "+15550001234")
    assert (await cp.http().post("/api/v1/node/drain")).status_code == 202

    await cp.calls.route_invited(call, queue=None, agent_id=ann.id, reason="asked for ann")
    assert cp.calls.offered_to(ann.id, call.id)
    desk_phone = SipPeer(RtpSession(parse_offer(PHONE_SDP), lambda _d: None), hangup=lambda: None)
    await cp.calls.accept_peer(ann.id, call.id, desk_phone, "sip", "PCMU")
    assert call.state == "bridged" and call.agent_id == ann.id
    drain = cp.app.state.drain  # type: ignore[union-attr]
    await asyncio.sleep(3 * POLL)
    assert not drain.drained.is_set()
    await cp.calls.end_call(call.id, "agent_hangup")
    await asyncio.wait_for(drain.drained.wait(), 5)


async def test_calls_left_at_the_drain_timeout_end_as_node_drained(tmp_path: Path) -> None:
    """A call that outlasts ``drain_timeout`` must not keep the node up for ever: it is
    ended with reason ``node_drained`` (not ``engine_shutdown``, which says nothing of
    why), and the node is drained."""
    async with ControlPlane(tmp_path / "engine", drain_timeout=0.5) as cp:
        call, _peer = await phone_call(cp.calls, "+15550001234")
        async with cp.events(call.id) as sub:
            assert (await cp.http().post("/api/v1/node/drain")).status_code == 202
            ended = await cp.next_event(sub, "call.ended", within=10)
        assert isinstance(ended, CallEnded) and ended.reason == END_REASON
        await asyncio.wait_for(cp.app.state.drain.drained.wait(), 5)  # type: ignore[union-attr]
        record = (await cp.http().get(f"/api/v1/calls/{call.id}")).json()
        assert record["end_reason"] == END_REASON and record["state"] == "ended"


# -- the SIP front, on a loopback socket --------------------------------------------------


def _sip(method: str, port: int, branch: str, call_id: str, body: str = "") -> bytes:
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"{method} sip:support@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
        "From: <sip:15551230001@127.0.0.1>;tag=drain1\r\n"
        "To: <sip:support@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Contact: <sip:15551230001@127.0.0.1:{port}>\r\n"
        "Max-Forwards: 70\r\n"
        f"{ctype}Content-Length: {len(body.encode())}\r\n\r\n{body}"
    ).encode()


SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


async def _final(sock: socket.socket, within: float = 5) -> str:
    """The first final (>= 200) response that comes to ``sock``, as text."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(within):
        while True:
            data = (await loop.sock_recv(sock, 65535)).decode()
            if int(data.split(" ", 2)[1]) >= 200:
                return data


async def test_sip_options_and_invites_get_503_while_draining(tmp_path: Path) -> None:
    """Kamailio's dispatcher pings with OPTIONS and takes a 503 as "out of rotation";
    an INVITE that still arrives gets 503 with Retry-After and the reason, before any
    ringing; a call the engine would place through the API is refused before the trunk
    is asked (this engine has none: a node that ignores the drain answers 409)."""
    async with ControlPlane(
        tmp_path / "engine", sip_enabled=True, sip_port=0, sip_trunks=["127.0.0.1"]
    ) as cp:
        port = cp.app.state.sip.port  # type: ignore[union-attr]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            me = sock.getsockname()[1]
            loop, engine = asyncio.get_running_loop(), ("127.0.0.1", port)
            await loop.sock_sendto(sock, _sip("OPTIONS", me, "z9hG4bKo1", "o1"), engine)
            assert (await _final(sock)).startswith("SIP/2.0 200")

            assert (await cp.http().post("/api/v1/node/drain")).status_code == 202
            await loop.sock_sendto(sock, _sip("OPTIONS", me, "z9hG4bKo2", "o2"), engine)
            busy = await _final(sock)
            assert busy.startswith("SIP/2.0 503"), busy
            assert re.search(rf"^Retry-After: {RETRY_AFTER}\r$", busy, re.M | re.I), busy

            invite = _sip("INVITE", me, "z9hG4bKi1", "i1", SDP)
            await loop.sock_sendto(sock, invite, engine)
            refused = await _final(sock)
            assert refused.startswith("SIP/2.0 503"), refused
            assert re.search(rf"^Retry-After: {RETRY_AFTER}\r$", refused, re.M | re.I)
            assert re.search(r'^Warning: 399 ccengine "this node is draining', refused, re.M)
            assert "180 Ringing" not in refused
            to = re.search(r"^To: (.*)\r$", refused, re.M | re.I)
            assert to is not None
            ack = invite.replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK")
            ack = ack.replace(b"To: <sip:support@127.0.0.1>", f"To: {to.group(1)}".encode())
            ack = ack.split(b"Content-Type")[0] + b"Content-Length: 0\r\n\r\n"
            await loop.sock_sendto(sock, ack, engine)

        r = await cp.http().post("/api/v1/calls/outbound", json={"to": "+15557654321"})
        check_draining(r)
        assert cp.calls.calls == {}
