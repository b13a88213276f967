"""A typed Python client for the engine's API (``ccengine`` commands and the tests
use it). Async, on httpx; every answer is parsed into the same pydantic models the
engine's OpenAPI document is made of, and every refusal raises ``ApiError`` carrying
the problem details.

    async with Client("http://127.0.0.1:8080", api_key="cck_…") as cc:
        for call in (await cc.calls(state="queued")).calls:
            print(call.id, call.escalation_reason)
        async for event in cc.events(after=1041):   # resumes by itself after a drop
            print(event["id"], event["type"])
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from engine.api.schemas import (
    AgentOut,
    AnswerOut,
    ArticleOut,
    CallAnswer,
    CallbackOut,
    CallDetail,
    CallerCallDetail,
    CallLinkOut,
    CallList,
    DeliveryOut,
    DtmfOut,
    FlowOut,
    FlowsOut,
    HistoryItem,
    LoginOut,
    ModelOut,
    NoteOut,
    PlacedCall,
    PlayOut,
    QueueOut,
    UserOut,
    UtteranceOut,
    WebhookCreated,
    WebhookOut,
)
from engine.escalation import Rule

T = TypeVar("T")
Presence = Literal["login", "available", "away", "logout"]


class ApiError(Exception):
    """The engine refused: ``status``, and the RFC 9457 problem it sent."""

    def __init__(self, status: int, problem: dict[str, Any], retry_after: float | None) -> None:
        self.status = status
        self.problem = problem
        self.detail = str(problem.get("detail", ""))
        self.retry_after = retry_after
        super().__init__(f"{status} {problem.get('title', '')}: {self.detail}")


class Client:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        """``api_key`` (cck_…) or ``token`` (a person's, or a caller's, token)."""
        credential = api_key or token
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, into: type[T] | None = None, **kwargs: Any) -> T:
        r = await self.http.request(method, path, **kwargs)
        if r.status_code >= 400:
            raise _error(r)
        if into is None:
            return None  # type: ignore[return-value]
        return TypeAdapter(into).validate_json(r.content)

    # people

    async def login(self, username: str, password: str) -> LoginOut:
        """Sign in as a person; later requests carry their token."""
        out = await self._call(
            "POST", "/api/v1/auth/login", LoginOut,
            json={"username": username, "password": password},
        )  # fmt: skip
        self.http.headers["Authorization"] = f"Bearer {out.token}"
        return out

    async def logout(self) -> None:
        """Sign out: every token of this person stops working, in any program or
        browser (this client's too)."""
        await self._call("POST", "/api/v1/auth/logout")
        self.http.headers.pop("Authorization", None)

    async def me(self) -> UserOut:
        return await self._call("GET", "/api/v1/auth/me", UserOut)

    async def agents(self) -> list[AgentOut]:
        return await self._call("GET", "/api/v1/agents", list[AgentOut])

    async def add_user(
        self, username: str, password: str, *, role: str = "agent",
        skills: list[str] | None = None, display_name: str | None = None,
    ) -> UserOut:  # fmt: skip
        body = {"username": username, "password": password, "role": role,
                "skills": skills or [], "display_name": display_name}  # fmt: skip
        return await self._call("POST", "/api/v1/agents", UserOut, json=body)

    async def change_user(self, username: str, **changes: Any) -> UserOut:
        """Any of password, role, skills, display_name."""
        return await self._call("PATCH", f"/api/v1/agents/{username}", UserOut, json=changes)

    async def remove_user(self, username: str) -> None:
        await self._call("DELETE", f"/api/v1/agents/{username}")

    async def set_presence(self, event: Presence, reason: str | None = None) -> AgentOut:
        """``reason``, with "away" only: break, lunch, meeting, training or other. "available"
        is refused (409) while a call of yours waits for its disposition (``wrap_up``)."""
        body: dict[str, str] = {"event": event}
        if reason is not None:
            body["reason"] = reason
        return await self._call("POST", "/api/v1/agents/me/presence", AgentOut, json=body)

    # calls

    async def start_call(
        self, sdp: str, *, language: str | None = None, caller: str | None = None
    ) -> CallAnswer:
        """An in-app call: our SDP offer in, the engine's answer and a caller token out."""
        body = {"type": "offer", "sdp": sdp, "language": language, "caller": caller}
        body = {k: v for k, v in body.items() if v is not None}
        return await self._call("POST", "/api/v1/calls", CallAnswer, json=body)

    async def calls(
        self, *, state: str | None = None, limit: int = 50, offset: int = 0, **filters: Any
    ) -> CallList:
        """Filters: queue, agent (username), emotion, channel, caller, since, until
        (datetimes), escalated (bool)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state:
            params["state"] = state
        for name, value in filters.items():
            if value is not None:
                params[name] = value.isoformat() if hasattr(value, "isoformat") else value
        return await self._call("GET", "/api/v1/calls", CallList, params=params)

    async def call(self, call_id: str) -> CallDetail:
        """The call's record, all of it (staff credentials; a caller's token reads
        ``caller_view``)."""
        return await self._call("GET", f"/api/v1/calls/{call_id}", CallDetail)

    async def caller_view(self, call_id: str) -> CallerCallDetail:
        """The call as its caller reads it with the call's caller token: its course and
        the words they heard (``CallerCallDetail``). Staff credentials get the same
        fields of the staff's record, every word included."""
        return await self._call("GET", f"/api/v1/calls/{call_id}", CallerCallDetail)

    async def transcript(self, call_id: str, fmt: Literal["txt", "vtt"] = "txt") -> str:
        r = await self.http.get(f"/api/v1/calls/{call_id}/transcript.{fmt}")
        if r.status_code >= 400:
            raise _error(r)
        return r.text

    async def transcript_lines(self, call_id: str) -> list[UtteranceOut]:
        path = f"/api/v1/calls/{call_id}/transcript.json"
        return await self._call("GET", path, list[UtteranceOut])

    async def history(self, call_id: str, limit: int = 10) -> list[HistoryItem]:
        path = f"/api/v1/calls/{call_id}/history"
        return await self._call("GET", path, list[HistoryItem], params={"limit": limit})

    async def hangup(self, call_id: str) -> None:
        await self._call("POST", f"/api/v1/calls/{call_id}/hangup")

    async def record(self, call_id: str, on: bool = True) -> None:
        """Start (or resume) recording a live call; ``on=False`` pauses it."""
        await self._call("POST", f"/api/v1/calls/{call_id}/recording/{'start' if on else 'stop'}")

    async def recording(self, call_id: str) -> bytes:
        """The ended call's recording as WAV bytes (stereo: caller left, agent right)."""
        r = await self.http.get(f"/api/v1/calls/{call_id}/recording.wav")
        if r.status_code >= 400:
            raise _error(r)
        return r.content

    async def annotate(self, call_id: str, text: str) -> NoteOut:
        return await self._call(
            "POST", f"/api/v1/calls/{call_id}/notes", NoteOut, json={"text": text}
        )

    async def send_dtmf(self, call_id: str, digits: str) -> str:
        """Keys to the caller's side; "rfc4733" or "inband"."""
        path = f"/api/v1/calls/{call_id}/dtmf"
        return (await self._call("POST", path, DtmfOut, json={"digits": digits})).sent_as

    async def play(self, call_id: str, text: str) -> PlayOut:
        """Speak ``text`` to the live caller."""
        return await self._call(
            "POST", f"/api/v1/calls/{call_id}/play", PlayOut, json={"text": text}
        )

    # the agent's desk (a signed-in person)

    async def accept(self, call_id: str, sdp: str) -> AnswerOut:
        body = {"type": "offer", "sdp": sdp}
        return await self._call("POST", f"/api/v1/calls/{call_id}/accept", AnswerOut, json=body)

    async def decline(self, call_id: str) -> None:
        await self._call("POST", f"/api/v1/calls/{call_id}/decline")

    async def mute(self, call_id: str, muted: bool = True) -> None:
        await self._call("POST", f"/api/v1/calls/{call_id}/mute", json={"muted": muted})

    async def hold(self, call_id: str) -> None:
        await self._call("POST", f"/api/v1/calls/{call_id}/hold")

    async def resume(self, call_id: str) -> None:
        await self._call("POST", f"/api/v1/calls/{call_id}/resume")

    async def transfer(
        self, call_id: str, *, queue: str | None = None, agent: str | None = None,
        number: str | None = None, note: str | None = None,
    ) -> None:  # fmt: skip
        """To a queue and/or an agent, or outside: a number or a sip: URI."""
        body = {"queue": queue, "agent": agent, "number": number, "note": note}
        await self._call("POST", f"/api/v1/calls/{call_id}/transfer", json=body)

    async def wrap_up(
        self, call_id: str, disposition: str, notes: str = "",
        then: Literal["available", "away"] = "available",
    ) -> None:  # fmt: skip
        body = {"disposition": disposition, "notes": notes, "then": then}
        await self._call("POST", f"/api/v1/calls/{call_id}/wrap-up", json=body)

    async def dispositions(self) -> list[str]:
        return await self._call("GET", "/api/v1/dispositions", list[str])

    # callbacks and queues

    async def request_callback(self, call_id: str, contact: str | None = None) -> CallbackOut:
        path = f"/api/v1/calls/{call_id}/callback"
        return await self._call("POST", path, CallbackOut, json={"contact": contact})

    async def call_link(
        self, *, callback_id: str | None = None, caller: str | None = None,
        queue: str | None = None, agent: str | None = None, ttl_minutes: int = 60,
    ) -> CallLinkOut:  # fmt: skip
        """A link that starts an in-app call straight to an agent or queue."""
        body = {"callback_id": callback_id, "caller": caller, "queue": queue,
                "agent": agent, "ttl_minutes": ttl_minutes}  # fmt: skip
        return await self._call("POST", "/api/v1/call-links", CallLinkOut, json=body)

    async def callbacks(self, status: Literal["pending", "done"] = "pending") -> list[CallbackOut]:
        params = {"status": status}
        return await self._call("GET", "/api/v1/callbacks", list[CallbackOut], params=params)

    async def callback_done(self, callback_id: str) -> CallbackOut:
        return await self._call("POST", f"/api/v1/callbacks/{callback_id}/done", CallbackOut)

    async def call_out(
        self, to: str, *, prompt: str | None = None, queue: str | None = None,
        agent: str | None = None,
    ) -> PlacedCall:  # fmt: skip
        """Call a number through the trunk; returns once they answer."""
        body = {"to": to, "prompt": prompt, "queue": queue, "agent": agent}
        return await self._call("POST", "/api/v1/calls/outbound", PlacedCall, json=body)

    async def place_callback(self, callback_id: str) -> PlacedCall:
        return await self._call("POST", f"/api/v1/callbacks/{callback_id}/call", PlacedCall)

    async def queues(self) -> list[QueueOut]:
        return await self._call("GET", "/api/v1/queues", list[QueueOut])

    async def put_queue(self, name: str, **config: Any) -> QueueOut:
        return await self._call("PUT", f"/api/v1/queues/{name}", QueueOut, json=config)

    async def delete_queue(self, name: str) -> None:
        await self._call("DELETE", f"/api/v1/queues/{name}")

    # webhooks (admin)

    async def create_webhook(
        self, url: str, events: list[str], description: str = ""
    ) -> WebhookCreated:
        body = {"url": url, "events": events, "description": description}
        return await self._call("POST", "/api/v1/webhooks", WebhookCreated, json=body)

    async def webhooks(self) -> list[WebhookOut]:
        return await self._call("GET", "/api/v1/webhooks", list[WebhookOut])

    async def delete_webhook(self, webhook_id: str) -> None:
        await self._call("DELETE", f"/api/v1/webhooks/{webhook_id}")

    async def deliveries(
        self, webhook_id: str, status: str | None = None, limit: int = 100
    ) -> list[DeliveryOut]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        path = f"/api/v1/webhooks/{webhook_id}/deliveries"
        return await self._call("GET", path, list[DeliveryOut], params=params)

    # the system

    async def models(self, *languages: str) -> list[ModelOut]:
        params = {"language": list(languages)} if languages else None
        return await self._call("GET", "/api/v1/models", list[ModelOut], params=params)

    async def escalation_rules(self) -> list[Rule]:
        return await self._call("GET", "/api/v1/escalation-rules", list[Rule])

    async def put_rule(self, rule: Rule) -> Rule:
        body = rule.model_dump(mode="json")
        return await self._call("PUT", f"/api/v1/escalation-rules/{rule.id}", Rule, json=body)

    async def delete_rule(self, rule_id: str) -> None:
        await self._call("DELETE", f"/api/v1/escalation-rules/{rule_id}")

    async def articles(self) -> list[ArticleOut]:
        return await self._call("GET", "/api/v1/knowledge-base/articles", list[ArticleOut])

    async def article(self, article_id: str) -> ArticleOut:
        path = f"/api/v1/knowledge-base/articles/{article_id}"
        return await self._call("GET", path, ArticleOut)

    async def put_article(
        self, article_id: str, title: str, body: str, tags: list[str] | None = None
    ) -> ArticleOut:
        data = {"title": title, "body": body, "tags": tags or []}
        path = f"/api/v1/knowledge-base/articles/{article_id}"
        return await self._call("PUT", path, ArticleOut, json=data)

    async def delete_article(self, article_id: str) -> None:
        await self._call("DELETE", f"/api/v1/knowledge-base/articles/{article_id}")

    async def flows(self) -> FlowsOut:
        return await self._call("GET", "/api/v1/bot/flows", FlowsOut)

    async def flow(self, flow_id: str) -> FlowOut:
        return await self._call("GET", f"/api/v1/bot/flows/{flow_id}", FlowOut)

    async def put_flow(self, flow_id: str, yaml: str) -> FlowOut:
        """``yaml``: the flow as its file would say it."""
        headers = {"content-type": "application/yaml"}
        path = f"/api/v1/bot/flows/{flow_id}"
        return await self._call("PUT", path, FlowOut, content=yaml.encode(), headers=headers)

    async def delete_flow(self, flow_id: str) -> None:
        await self._call("DELETE", f"/api/v1/bot/flows/{flow_id}")

    # events

    async def events(
        self, call_id: str | None = None, *, after: int = 0, reconnect: bool = True
    ) -> AsyncIterator[dict[str, Any]]:
        """Events as Server-Sent Events: replay after ``after``, then live. A dropped
        connection is resumed from the last id seen (no gaps, no repeats) unless
        ``reconnect`` is False; refusals (401, 403, 404) raise ApiError."""
        path = f"/api/v1/calls/{call_id}/events" if call_id else "/api/v1/events"
        last = after
        while True:
            try:
                async with self.http.stream(
                    "GET", path, params={"after": last}, timeout=httpx.Timeout(30, read=None)
                ) as r:
                    if r.status_code >= 400:
                        await r.aread()
                        raise _error(r)
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            event: dict[str, Any] = json.loads(line[6:])
                            last = max(last, int(event["id"]))
                            yield event
            except (httpx.TransportError, httpx.RemoteProtocolError):
                pass
            if not reconnect:
                return
            await asyncio.sleep(1.0)

    async def audio(
        self, call_id: str, inject: AsyncIterator[bytes] | None = None
    ) -> AsyncIterator[tuple[str, bytes] | dict[str, Any]]:
        """A live call's audio fork: the start and stop envelopes as dicts, each 20 ms
        frame as (speaker, 16 kHz s16le PCM). ``inject`` (16 kHz s16le, a second or less
        a chunk) is played to the caller as it comes."""
        import websockets

        url = str(self.http.base_url.join(f"/api/v1/calls/{call_id}/audio"))
        url = url.replace("http", "ws", 1)
        auth = {"Authorization": self.http.headers["Authorization"]}
        async with websockets.connect(url, additional_headers=auth) as ws:
            sender = None
            if inject is not None:

                async def pump(chunks: AsyncIterator[bytes]) -> None:
                    async for chunk in chunks:
                        await ws.send(chunk)

                sender = asyncio.create_task(pump(inject))
            try:
                channels: dict[str, str] = {}
                async for message in ws:
                    if isinstance(message, bytes):
                        yield channels.get(str(message[0]), "agent"), message[1:]
                        continue
                    envelope: dict[str, Any] = json.loads(message)
                    channels = envelope.get("channels", channels)
                    yield envelope
            except websockets.ConnectionClosedError as exc:
                code = exc.rcvd.code if exc.rcvd else 1006  # 4401, 4403, 4404: refused
                reason = exc.rcvd.reason if exc.rcvd else "connection lost"
                raise ApiError(code, {"detail": reason}, None) from None
            finally:
                if sender is not None:
                    sender.cancel()


def _error(r: httpx.Response) -> ApiError:
    try:
        problem = r.json()
        if not isinstance(problem, dict):
            raise ValueError
    except ValueError:
        problem = {"title": r.reason_phrase, "detail": r.text[:500]}
    retry = r.headers.get("retry-after")
    return ApiError(r.status_code, problem, float(retry) if retry else None)


def dump(model: BaseModel | list[Any]) -> str:
    """JSON for people and scripts (the CLI prints this)."""
    if isinstance(model, list):
        return json.dumps([m.model_dump(mode="json") for m in model], indent=2)
    return model.model_dump_json(indent=2)
