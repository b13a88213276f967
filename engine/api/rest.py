"""REST routes under /api/v1."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

from engine import exports
from engine.api.auth import CALLER_COOKIE, Operator, Principal, Reader, Who, cookie_options
from engine.api.schemas import (
    CallAnswer,
    CallDetail,
    CallerCallDetail,
    CallerLegOut,
    CallLinkIn,
    CallLinkOut,
    CallList,
    CallOffer,
    CallOut,
    ChatIn,
    ChatOut,
    DtmfIn,
    DtmfOut,
    EmotionOut,
    EscalationOut,
    IceServerOut,
    IceServersOut,
    KeysIn,
    LanguageTag,
    LegOut,
    MessageIn,
    ModelOut,
    NoteIn,
    NoteOut,
    PathId,
    PlayIn,
    PlayOut,
    UtteranceOut,
)
from engine.apptoken import AppIdentity, TokenRejected
from engine.calls import CallManager
from engine.callstate import STATES, NotAllowed
from engine.customers import normalize_app_user
from engine.escalation import Rule
from engine.events import as_utc
from engine.store.db import CallRecord as StoredCall
from engine.users import (
    ApiActor,
    AuthError,
    issue_caller_token,
    issue_invite,
    read_invite,
)

router = APIRouter(prefix="/api/v1")
MAX_LANGUAGES = 16  # languages one GET /models may ask about


def manager(request: Request) -> CallManager:
    m: CallManager = request.app.state.calls
    return m


@router.post("/calls", status_code=201, response_model=CallAnswer, tags=["calls"])
async def create_call(offer: CallOffer, request: Request, response: Response, p: Who) -> CallAnswer:
    """Start an in-app call: post the browser's SDP offer, get our answer and a caller
    token that reaches this call only (also set as a cookie for the caller's page).
    Open to anyone unless CCENGINE_PUBLIC_CALLS=false; then it needs a control key.
    Offers that have not sent audio yet are capped per address (429) and in all (503),
    both with Retry-After; one that sends none ends after the media timeout."""
    m = manager(request)
    invite = None
    if offer.invite is not None:
        try:
            invite = read_invite(offer.invite, request.app.state.secret_key)
        except AuthError as exc:
            raise HTTPException(401, str(exc)) from None
        if "callback" in invite:
            row = await m.store.get_callback(invite["callback"])
            if row is None or row.status != "pending":
                raise HTTPException(409, "this call link was used already")
    elif not m.settings.public_calls:
        p.need("control")
    app_user = _app_user(request, offer.customer_token)
    if offer.upgrade_from is not None:
        # only the chat's own caller takes it on to a call (its token, as a bearer)
        if invite is not None or p.kind != "caller" or p.call_id != offer.upgrade_from:
            raise HTTPException(403, "send the chat's caller token to take it on to a call")
        chat = m.live(offer.upgrade_from)
        if chat is None or chat.channel != "chat":
            raise HTTPException(404, f"no live chat {offer.upgrade_from}")
    caller = _caller(invite.get("caller") if invite else offer.caller, app_user)
    address = request.client.host if request.client else ""
    call, sdp = await m.create_webrtc_call(
        offer.sdp, offer.language, caller, address, bot=invite is None, app_user=app_user
    )
    if offer.upgrade_from is not None:
        try:
            await m.upgrade_chat(offer.upgrade_from, call)
        except BaseException:
            # the chat ended meanwhile: no call is left behind with nothing to go on
            await m.end_call(call.id, "upgrade_failed")
            raise
    if invite is not None:
        by = invite.get("by", "a call link")
        if "callback" in invite:
            with contextlib.suppress(NotAllowed):  # two tabs opened the link at once
                await m.finish_callback(ApiActor(by, by, "operator"), invite["callback"])
        await m.route_invited(
            call, queue=invite.get("queue"), agent_id=invite.get("agent"),
            reason=f"call link from {by}",
        )  # fmt: skip
    token = _caller_token(request, response, m, call.id)
    return CallAnswer(
        caller_token=token,
        call_id=call.id,
        sdp=sdp,
        language=call.language,
        recognizer=call.model.backend,
        recognizer_note=call.model.note,
        events_url=f"/api/v1/calls/{call.id}/events",
        view_url=f"/calls/{call.id}",
    )


@router.get(
    "/ice-servers",
    response_model=IceServersOut,
    response_model_exclude_none=True,
    tags=["calls"],
)
async def ice_servers(
    request: Request,
    p: Who,
    x_call_invite: Annotated[str | None, Header(max_length=4096)] = None,
) -> IceServersOut:
    """The STUN/TURN servers (CCENGINE_ICE_SERVERS) a page or app gives its
    RTCPeerConnection, the same the engine uses. Whoever may start a call may read them:
    anyone unless CCENGINE_PUBLIC_CALLS=false; then any credentials, or a call link's
    token in ``X-Call-Invite``."""
    settings = manager(request).settings
    if not settings.public_calls and p.kind == "anonymous":
        if x_call_invite is None:
            p.need("read")  # 401: send credentials
        else:
            try:
                read_invite(x_call_invite, request.app.state.secret_key)
            except AuthError as exc:
                raise HTTPException(401, str(exc)) from None
    return IceServersOut(
        ice_servers=[IceServerOut.model_validate(s.public()) for s in settings.ice_servers]
    )


@router.post("/call-links", status_code=201, response_model=CallLinkOut, tags=["calls"])
async def call_link(body: CallLinkIn, request: Request, actor: Operator) -> CallLinkOut:
    """A link that starts an in-app call straight to an agent or a queue: call a customer
    back in the browser, or invite them from an email or a chat. With ``callback_id`` it
    answers that callback (once); the agent defaults to you if you take calls. The token
    sits in the URL's fragment, which browsers never send, so no log ever holds it."""
    m = manager(request)
    caller, queue, agent = body.caller, body.queue, body.agent
    if body.callback_id is not None:
        row = await m.store.get_callback(body.callback_id)
        if row is None or row.status != "pending":
            raise HTTPException(409, f"no pending callback {body.callback_id}")
        caller, queue = caller or row.caller or row.contact, queue or row.queue
    if queue is not None and queue not in m.acd.queues:
        raise HTTPException(422, f"queue: no queue {queue}")
    agent_id = None
    if agent is None and actor.role == "agent":
        agent_id = actor.id
    elif agent is not None:
        user = await m.store.user_by_name(agent)
        if user is None or user.role != "agent":
            raise HTTPException(422, f"agent: no agent {agent}")
        agent_id = user.id
    ttl = body.ttl_minutes * 60
    token = issue_invite(
        {"caller": caller, "queue": queue, "agent": agent_id, "by": actor.username,
         "callback": body.callback_id},
        request.app.state.secret_key, ttl,
    )  # fmt: skip
    return CallLinkOut(
        url=f"{str(request.base_url).rstrip('/')}/call#invite={token}",
        token=token,
        expires_at=datetime.now(UTC) + timedelta(seconds=ttl),
    )


@router.get("/calls", response_model=CallList, tags=["calls"])
async def list_calls(
    request: Request,
    _p: Reader,
    state: str | None = Query(None, description=f"one of {', '.join(STATES)}"),
    queue: str | None = Query(None, max_length=64, description="the queue it waited in"),
    agent: str | None = Query(None, max_length=64, description="an agent who took it (username)"),
    emotion: str | None = Query(None, max_length=16, description="the call's overall mood"),
    channel: Literal["webrtc", "sip"] | None = None,
    caller: str | None = Query(None, max_length=200),
    since: Annotated[datetime | None, Query(description="started at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="started before (ISO 8601)")] = None,
    escalated: bool | None = Query(None, description="an escalation rule routed it to a person"),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=1_000_000_000),
) -> CallList:
    """Calls, newest first, filtered by any of state, queue, agent, mood, channel, caller,
    escalation and start time."""
    if state is not None and state not in STATES:
        raise HTTPException(422, f"state must be one of {', '.join(STATES)}")
    m = manager(request)
    since = as_utc(since) if since else None
    until = as_utc(until) if until else None
    agent_id = None
    if agent is not None:
        user = await m.store.user_by_name(agent)
        if user is None:
            raise HTTPException(422, f"agent: no user {agent}")
        agent_id = user.id
    rows = await m.store.list_calls(
        state=state, limit=limit, offset=offset, queue=queue, agent_id=agent_id,
        emotion=emotion, channel=channel, caller=caller, since=since, until=until,
        escalated=escalated,
    )  # fmt: skip
    return CallList(calls=[CallOut.model_validate(r, from_attributes=True) for r in rows])


def _transcript(found: StoredCall, p: Principal) -> list[UtteranceOut]:
    """The call's utterances as ``p`` may read them: a caller, only what they heard
    (not what the agents said while they were held for a consult)."""
    caller = p.kind == "caller"
    return [
        UtteranceOut.model_validate(u, from_attributes=True)
        for u in found.utterances
        if not caller or u.caller_heard
    ]


@router.get(
    "/calls/{call_id}",
    response_model=CallDetail | CallerCallDetail,
    responses={200: {"description": "staff get ``CallDetail``; the call's own caller "
                     "(their caller token) ``CallerCallDetail``"}},
    tags=["calls"],
)  # fmt: skip
async def get_call(call_id: PathId, request: Request, p: Who) -> CallDetail | CallerCallDetail:
    """A call's record. Staff get all of it (``CallDetail``); the call's own caller
    gets what happened to their call and the words they heard (``CallerCallDetail``),
    never what the engine or the staff concluded about them."""
    p.need_call(call_id, "read")
    found = await manager(request).store.get_call(call_id)
    if found is None:
        raise HTTPException(404, f"no call {call_id}")
    call = found.call
    if p.kind == "caller":
        return CallerCallDetail(
            id=call.id, channel=call.channel, state=call.state, language=call.language,
            created_at=call.created_at, answered_at=call.answered_at, ended_at=call.ended_at,
            end_reason=call.end_reason, queue=call.queue, upgraded_from=call.upgraded_from,
            # a caller is not told who listened in (engine/monitoring.py)
            legs=[
                CallerLegOut.model_validate(leg, from_attributes=True)
                for leg in call.legs
                if leg.role != "supervisor"
            ],
            transcript=_transcript(found, p),
        )  # fmt: skip
    base = CallOut.model_validate(call, from_attributes=True)
    return CallDetail(
        **base.model_dump(),
        legs=[LegOut.model_validate(leg, from_attributes=True) for leg in call.legs],
        transcript=_transcript(found, p),
        emotion_timeline=[
            EmotionOut.model_validate(e, from_attributes=True) for e in found.emotions
        ],
        escalations=[
            EscalationOut.model_validate(e, from_attributes=True) for e in found.escalations
        ],
        notes=[NoteOut.model_validate(n, from_attributes=True) for n in found.notes],
        facts=call.facts or [],
    )


EXPORTS = {"txt": "text/plain; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}


@router.get(
    "/calls/{call_id}/transcript.{fmt}",
    tags=["calls"],
    response_model=list[UtteranceOut],
    responses={200: {"content": {v.split(";")[0]: {} for v in EXPORTS.values()}}},
)
async def export_transcript(
    call_id: PathId, fmt: Literal["json", "txt", "vtt"], request: Request, p: Who
) -> Response | list[UtteranceOut]:
    """The call's redacted transcript, both speakers, as JSON, plain text or WebVTT.
    The call's own caller gets only what they heard: not what the agents said while
    they were held for a consult."""
    p.need_call(call_id, "read")
    found = await manager(request).store.get_call(call_id)
    if found is None:
        raise HTTPException(404, f"no call {call_id}")
    lines = _transcript(found, p)
    if fmt == "json":
        return lines
    body = exports.webvtt(lines) if fmt == "vtt" else exports.plain_text(lines)
    disposition = f'attachment; filename="call-{call_id}.{fmt}"'
    return Response(body, media_type=EXPORTS[fmt], headers={"Content-Disposition": disposition})


@router.get("/escalation-rules", response_model=list[Rule], tags=["escalation"])
async def escalation_rules(request: Request, _p: Reader) -> list[Rule]:
    """The rules every new call is judged by (built-in set, or CCENGINE_ESCALATION_RULES)."""
    return manager(request).content.rules


@router.post(
    "/calls/{call_id}/hangup",
    status_code=202,
    response_class=Response,
    responses={202: {"description": "the call is ending"}},
    tags=["calls"],
)
async def hangup(call_id: PathId, request: Request, p: Who) -> Response:
    """End a live call (control scope, or the call's own caller). 404 if no engine runs
    it (ended, or unknown); one that another engine runs is ended there
    (engine/api/forward.py)."""
    p.need_call(call_id, "control")
    m = manager(request)
    call = m.get(call_id)
    by_agent = p.identity is not None and p.identity.user_id == call.agent_id
    if p.identity is not None and p.identity.role == "agent" and not by_agent:
        # offered it while it waits in line: e.g. the callback they placed. A colleague
        # rung to consult is not offered the caller (the call is with its agent), even
        # one whose ring outlived its consult, and must not hang them up
        offered = call.state == "queued" and m.offered_to(p.identity.user_id, call_id)
        if not offered:
            raise HTTPException(403, f"call {call_id} is not on your line")
    await m.end_call(call_id, "agent_hangup" if by_agent else "hangup")
    return Response(status_code=202)


@router.post("/calls/{call_id}/notes", status_code=201, response_model=NoteOut, tags=["calls"])
async def annotate(call_id: PathId, body: NoteIn, request: Request, actor: Operator) -> NoteOut:
    """Write a note on a call, live or ended (a person, or a control key); it is kept
    with the call, shown in its record and published as ``call.annotated``."""
    note = await manager(request).annotate(actor, call_id, body.text)
    return NoteOut.model_validate(note, from_attributes=True)


def _caller(given: str | None, app_user: AppIdentity | None) -> str | None:
    """The caller identity a call or chat shows: as given, else who the app vouched for."""
    if given is not None or app_user is None:
        return given
    return app_user.name or app_user.phone or app_user.user_id


def _caller_token(request: Request, response: Response, m: CallManager, call_id: str) -> str:
    """A token that reaches this call only, also set as a cookie for the caller's page."""
    ttl = m.settings.caller_token_ttl
    token = issue_caller_token(call_id, request.app.state.secret_key, ttl)
    response.set_cookie(
        CALLER_COOKIE, token, max_age=ttl, **cookie_options(request, f"/api/v1/calls/{call_id}")
    )
    return token


def _app_user(request: Request, token: str | None) -> AppIdentity | None:
    """Who the business's app says the caller is, or 401 with why not."""
    if token is None:
        return None
    try:
        app_user: AppIdentity = request.app.state.app_tokens.verify(token)
    except TokenRejected as exc:
        raise HTTPException(401, f"customer token: {exc}") from None
    if normalize_app_user(app_user.user_id) is None:  # found in review: it was a 500
        raise HTTPException(401, "customer token: its sub is not a usable user id")
    return app_user


@router.post("/chats", status_code=201, response_model=ChatOut, tags=["chat"])
async def create_chat(body: ChatIn, request: Request, response: Response, p: Who) -> ChatOut:
    """Start a text chat (the caller page's Chat): the virtual agent answers it as it
    answers calls, and a person takes it from the agent desk when it goes to one. Its
    lines are posted to ``/calls/{id}/messages`` and come back on its event stream
    (``transcript.final``, ``bot.said``). Open to anyone unless CCENGINE_PUBLIC_CALLS=
    false, like calls."""
    m = manager(request)
    if not m.settings.public_calls:
        p.need("control")
    app_user = _app_user(request, body.customer_token)
    caller = _caller(body.caller, app_user)
    address = request.client.host if request.client else ""
    call = await m.create_chat(body.language, caller, address, app_user=app_user)
    token = _caller_token(request, response, m, call.id)
    return ChatOut(
        call_id=call.id, events_url=f"/api/v1/calls/{call.id}/events", caller_token=token
    )


@router.post("/calls/{call_id}/messages", status_code=204, tags=["chat"])
async def post_message(call_id: PathId, body: MessageIn, request: Request, p: Who) -> Response:
    """A line of a chat, from its caller (their token) or the agent on it (signed in).
    409 if the call is not a live chat, or not with this agent."""
    p.need_call(call_id, "read")
    if p.kind == "caller":
        user_id = None
    elif p.identity is not None:
        user_id = p.identity.user_id
    else:
        raise HTTPException(403, "only the chat's caller, or the agent on it, writes in it")
    manager(request).chat_message(call_id, user_id, body.text)
    return Response(status_code=204)


@router.post("/calls/{call_id}/keys", status_code=204, tags=["calls"])
async def press_keys(call_id: PathId, body: KeysIn, request: Request, p: Who) -> Response:
    """Keys the in-app caller pressed on the page's keypad (the call's own caller, or a
    control key): they answer the virtual agent like a phone's, and never pass through
    the audio, so a PIN keyed here is in no recording. 404 if the call is not live
    here."""
    p.need_call(call_id, "control")
    m = manager(request)
    m.get(call_id)  # 404 when it is not live on this engine
    for digit in body.digits:
        m.press_key(call_id, digit)
    return Response(status_code=204)


@router.post("/calls/{call_id}/dtmf", response_model=DtmfOut, tags=["calls"])
async def send_dtmf(call_id: PathId, body: DtmfIn, request: Request, actor: Operator) -> DtmfOut:
    """Send keys to the caller's side (navigate an IVR you called): RFC 4733 events to a
    phone that offered them, tones in the audio otherwise. Returns once they are sent."""
    how = await manager(request).send_dtmf(actor, call_id, body.digits.upper())
    return DtmfOut(sent_as=how)


@router.post("/calls/{call_id}/play", status_code=202, response_model=PlayOut, tags=["calls"])
async def play(call_id: PathId, body: PlayIn, request: Request, actor: Operator) -> PlayOut:
    """Speak a prompt to a live caller (text to speech), after what is already playing.
    409 while the call is on hold or has no audio path yet."""
    ahead = await manager(request).play(actor, call_id, body.text)
    return PlayOut(queued_behind=round(ahead, 2))


@router.post("/calls/{call_id}/recording/{action}", status_code=204, tags=["calls"])
async def recording(
    call_id: PathId, action: Literal["start", "stop"], request: Request, actor: Operator
) -> None:
    """Start recording a live call (both sides, one WAV), pause it (``stop``) and resume
    it (``start``); paused stretches are silent in the file. The WAV is written when the
    call ends: ``GET /api/v1/calls/{id}/recording.wav``."""
    manager(request).recording(actor, call_id, action == "start")


@router.get(
    "/calls/{call_id}/recording.wav",
    tags=["calls"],
    response_class=FileResponse,
    responses={200: {"content": {"audio/wav": {}}}},
)
async def download_recording(call_id: PathId, request: Request, _p: Reader) -> FileResponse:
    """The call's recording: 16 kHz 16-bit stereo WAV, caller left, agent right. 404
    when the call was not recorded, 409 while it is still going on."""
    m = manager(request)
    path = m.recording_path(call_id)
    if call_id in m.calls:
        raise HTTPException(
            409, f"call {call_id} is still going on; its recording is written at the end"
        )
    if not path.is_file():
        raise HTTPException(404, f"no recording of call {call_id}")
    return FileResponse(path, media_type="audio/wav", filename=f"call-{call_id}.wav")


@router.get("/models", response_model=list[ModelOut], tags=["system"])
async def models(
    request: Request,
    _p: Reader,
    language: Annotated[
        list[LanguageTag] | None,
        Query(max_length=MAX_LANGUAGES, description="BCP 47 tags, e.g. 'en', 'pt-br'"),
    ] = None,
) -> list[ModelOut]:
    """Which recognizer and model each language uses, and where the engine looked."""
    m = manager(request)
    langs = language or sorted({m.settings.default_language, *m.settings.preload_languages})
    return [
        ModelOut.model_validate(m.model_choice(lang.lower(), quiet=True), from_attributes=True)
        for lang in dict.fromkeys(langs)
    ]
