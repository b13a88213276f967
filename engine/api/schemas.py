"""Request and response bodies of the REST API (they make the OpenAPI document)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from engine.bot.flows import NAME as FLOW_NAME
from engine.bot.flows import Flow, Source
from engine.customers import (
    MAX_KEYS,
    SECRET_FORMS,
    normalize_app_user,
    normalize_email,
    normalize_phone,
    normalize_secret,
)
from engine.events import EVENT_TYPES, FactOut, WordTiming
from engine.inputs import Input

# Ids in paths: every id we hand out (a uuid) fits, anything else gets 422 naming the
# parameter before it reaches a lookup, a file name or a header (a 5,000-character call
# id made recording.wav fail with 500: the file name was too long for the system).
PathId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_\-]{1,64}$", description="an id")]
# rule and queue names, as their bodies require them
PathName = Annotated[str, Path(pattern=r"^[a-z0-9_\-]{1,64}$")]
# flows, as their ids must be
PathFlow = Annotated[str, Path(pattern=FLOW_NAME)]
# knowledge-base articles are named after their files
PathArticle = Annotated[str, Path(min_length=1, max_length=255)]


# A BCP 47 language tag as the recognizers know them: a language, perhaps a region
LANGUAGE = r"^[a-zA-Z]{2,3}(-[a-zA-Z0-9]{2,8})?$"
LanguageTag = Annotated[str, StringConstraints(pattern=LANGUAGE, max_length=12)]


class CallOffer(Input):
    sdp: str = Field(max_length=65536, description="The caller's SDP offer (non-trickle ICE)")
    type: Literal["offer"] = "offer"
    language: str | None = Field(None, pattern=LANGUAGE, description="BCP 47, e.g. 'en'")
    caller: str | None = Field(None, max_length=200, description="Caller identity, if known")
    invite: str | None = Field(
        None, max_length=4096, description="the token of a call link (POST /api/v1/call-links)"
    )
    customer_token: str | None = Field(
        None,
        max_length=8192,
        description="a JWT the business's app signed for its signed-in user "
        "(CCENGINE_CUSTOMER_TOKEN_KEY): the call is theirs, verified; 401 if it is not valid",
    )
    upgrade_from: str | None = Field(
        None,
        max_length=36,
        description="the live chat this call continues (send that chat's caller token)",
    )


class IceServerOut(BaseModel):
    urls: list[str] = Field(description="stun:, turn: or turns: URLs")
    username: str | None = None
    credential: str | None = None


class IceServersOut(BaseModel):
    ice_servers: list[IceServerOut] = Field(
        description="give to RTCPeerConnection as iceServers (empty: host candidates only)"
    )


class CallLinkIn(Input):
    callback_id: str | None = Field(None, description="a pending callback: who and where from it")
    caller: str | None = Field(None, max_length=200, description="who is invited")
    queue: str | None = Field(None, max_length=64)
    agent: str | None = Field(
        None, max_length=64, description="ring this agent (default: you, if you take calls)"
    )
    ttl_minutes: int = Field(60, ge=1, le=7 * 24 * 60)


class CallLinkOut(BaseModel):
    url: str = Field(description="send it to the customer; opening it starts the call")
    token: str = Field(description="for apps: POST /api/v1/calls with {invite: token}")
    expires_at: datetime


class CallAnswer(BaseModel):
    call_id: str
    type: Literal["answer"] = "answer"
    sdp: str
    language: str
    recognizer: str | None
    recognizer_note: str
    events_url: str
    view_url: str
    caller_token: str = Field(
        description="Bearer token for this call only: its events, record and hang-up"
    )


class LegOut(BaseModel):
    id: str
    role: str
    transport: str
    codec: str | None
    user_id: str | None
    created_at: datetime
    ended_at: datetime | None


class UtteranceOut(BaseModel):
    id: str
    leg_id: str
    speaker: str
    start: float
    end: float
    text: str
    words: list[WordTiming]
    caller_heard: bool = Field(
        description="false: said, any of it (more than 40 ms), while the caller was held "
        "for a consult (a caller's own reads leave it out)",
    )


class EmotionOut(BaseModel):
    utterance_id: str
    leg_id: str
    at: float
    label: str
    arousal: float
    valence: float
    trend: float
    call_label: str
    scores: dict[str, float]
    confidence: float = 0.0  # the label's calibrated probability
    evidence: list[str] = []  # the cues behind the label

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, row: Any) -> Any:
        # a stored sample keeps confidence and evidence with its measurements
        features = getattr(row, "features", None)
        if isinstance(features, dict):
            return {
                **{k: getattr(row, k) for k in cls.model_fields if hasattr(row, k)},
                "confidence": features.get("confidence", 0.0),
                "evidence": features.get("evidence", []),
            }
        return row


class CallOut(BaseModel):
    id: str
    channel: str
    state: str
    language: str
    recognizer: str | None
    recognizer_note: str
    caller: str | None
    emotion: str | None
    created_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    priority: int
    escalated_at: datetime | None
    escalation_reason: str | None
    summary: str
    agent_id: str | None
    disposition: str | None
    wrapped_up_at: datetime | None
    topic: str | None = Field(None, description="what a phone caller chose in the key menu")
    queue: str | None = Field(None, description="the queue the call waited in last")
    intent: str | None = Field(None, description="what the caller asked the virtual agent for")
    customer_id: str | None = Field(None, description="the caller's customer record")
    verified_by: str | None = Field(
        None, description="how the caller proved who they are (pin, dob, last4, app_token)"
    )
    attestation: str | None = Field(
        None, description="the carrier's STIR/SHAKEN level for the caller's number (A, B, C)"
    )
    upgraded_from: str | None = Field(None, description="the chat this call continues")


class EscalationOut(BaseModel):
    id: str
    rule: str
    reason: str
    actions: list[str]
    priority: int
    skill: str | None
    at: float
    evidence: dict[str, Any]


class NoteOut(BaseModel):
    author: str
    kind: str = Field(description="wrap_up, transfer or note")
    text: str
    disposition: str | None
    created_at: datetime


class CallDetail(CallOut):
    legs: list[LegOut]
    transcript: list[UtteranceOut]
    emotion_timeline: list[EmotionOut]
    escalations: list[EscalationOut]
    facts: list[FactOut]
    notes: list[NoteOut]


class CallerLegOut(BaseModel):
    """A leg of the call as its caller reads it: not who the agent on it is."""

    id: str
    role: str
    transport: str
    codec: str | None
    created_at: datetime
    ended_at: datetime | None


class CallerCallDetail(BaseModel):
    """A call as its own caller reads it (their caller token): what happened to the
    call and the words they heard, never what the engine or the staff concluded about
    them (mood, escalations, summary, facts, notes, priority, disposition, intent,
    topic), who they are on record (customer, verification, attestation, the caller
    name an invite gave), who the agents are, or what the agents said while the caller
    was held for a consult. Staff (a read key, a person signed in) get ``CallDetail``."""

    id: str
    channel: str
    state: str
    language: str
    created_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    queue: str | None = Field(
        None, description="the queue the call waited in last (its stream says so too)"
    )
    upgraded_from: str | None = Field(None, description="the chat this call continues")
    legs: list[CallerLegOut] = Field(description="no supervisors listening in")
    transcript: list[UtteranceOut] = Field(description="only what the caller heard")


class CallList(BaseModel):
    calls: list[CallOut]


class ModelOut(BaseModel):
    language: str
    backend: str | None
    path: str | None
    fallback: bool
    note: str
    looked_in: list[str]


class LoadOut(BaseModel):
    """How full the node is. ``full``: new calls get 503 with Retry-After, for ``reason``
    (engine/capacity.py). Measurements are null until there are enough samples."""

    state: Literal["ok", "full"]
    reason: str | None = None
    loop_lag_p50_ms: float | None = None
    loop_lag_p99_ms: float | None = None
    backlog_s: float | None = Field(
        None, description="seconds of caller audio awaiting analysis or recognition"
    )
    cpu: float | None = Field(None, description="fraction of usable cores, last 5 s")
    audio_loss: float | None = Field(
        None, description="fraction of caller audio lost on this node, last 5 s"
    )
    calls: int
    limit: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    active_calls: int
    load: LoadOut
    # writes held in memory because storage fails (a full disk): above 0 for long, look
    waiting_writes: int = 0
    # no new calls; the process exits once its calls end (engine/drain.py). Liveness
    # stays 200 meanwhile: /readyz is the probe that says "send nothing new"
    draining: bool = False


class NodeOut(BaseModel):
    """This node's drain (engine/drain.py). ``serving``: it takes new calls;
    ``draining``: it refuses them (503) and exits once ``calls_left`` is 0, or at
    ``deadline``, ending the calls left (reason ``node_drained``); ``drained``: exiting."""

    state: Literal["serving", "draining", "drained"]
    draining: bool
    by: str | None = Field(None, description="who started the drain: SIGTERM, or a user or key")
    since: datetime | None = None
    deadline: datetime | None = None
    calls_left: int
    drain_timeout: float


# why an agent is away: the agent's choice (engine/acd.py AWAY_REASONS); the engine sets
# "missed_call" (an offer rang out) and "disconnected" (every desk of theirs went away)
AwayReason = Literal["break", "lunch", "meeting", "training", "other"]


class PresenceIn(Input):
    event: Literal["login", "available", "away", "logout"]
    reason: AwayReason | None = Field(None, description='why, with "away" only')

    @model_validator(mode="after")
    def _reason_with_away(self) -> PresenceIn:
        if self.reason is not None and self.event != "away":
            raise ValueError('a reason goes with "away" only')
        return self


class AgentOut(BaseModel):
    id: str
    username: str
    display_name: str
    skills: list[str]
    presence: str
    away_reason: str | None = Field(
        None, description="while away: break, lunch, meeting, training, other; or "
        "missed_call, disconnected (set by the engine)",
    )  # fmt: skip
    presence_since: datetime | None = None
    wrap_up_call: str | None = Field(
        None, description='the call waiting for this agent\'s disposition ("available" is '
        "refused until it is saved)",
    )  # fmt: skip
    wrap_up_since: datetime | None = None
    wrap_up_ends_at: datetime | None = Field(
        None, description='with CCENGINE_WRAPUP_SECONDS: when the engine saves "timed-out"'
    )


class UserIn(Input):
    username: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    password: str = Field(min_length=8, max_length=1024)
    role: Literal["agent", "supervisor", "admin"] = "agent"
    skills: list[str] = Field(default_factory=list, max_length=50)
    display_name: str | None = Field(None, max_length=200)


class UserPatch(Input):
    password: str | None = Field(None, min_length=8, max_length=1024)
    role: Literal["agent", "supervisor", "admin"] | None = None
    skills: list[str] | None = Field(None, max_length=50)
    display_name: str | None = Field(None, min_length=1, max_length=200)


class AnswerIn(Input):
    sdp: str
    type: Literal["offer"] = "offer"


class AnswerOut(BaseModel):
    call_id: str
    type: Literal["answer"] = "answer"
    sdp: str


class MuteIn(Input):
    muted: bool = Field(description="true: the caller no longer hears the agent")


# a number dialled outside: through the trunk, or a sip: URI (CCENGINE_SIP_DIAL_DOMAINS)
DIAL_NUMBER = r"^(\+?[0-9*#]{2,32}|sip:\S{1,330})$"


class TransferIn(Input):
    queue: str | None = Field(None, max_length=64, description="a queue; default: the call's")
    agent: str | None = Field(None, max_length=64, description="ring only this agent (username)")
    number: str | None = Field(
        None,
        pattern=DIAL_NUMBER,
        description="outside: a number through the trunk, or a sip: URI",
    )
    note: str | None = Field(None, max_length=2000, description="hand-over for the next agent")

    @model_validator(mode="after")
    def _somewhere(self) -> TransferIn:
        if self.number is not None and (self.queue is not None or self.agent is not None):
            raise ValueError("a number, or a queue and/or an agent: not both")
        if self.queue is None and self.agent is None and self.number is None:
            raise ValueError("give a queue, an agent or a number to transfer to")
        return self


class WrapUpIn(Input):
    disposition: str = Field(min_length=1, max_length=64)
    notes: str = Field("", max_length=10_000)
    then: Literal["available", "away"] = Field(
        "available", description="the agent's presence after wrap-up"
    )


# a phone number as people type one: digits with + ( ) . - and spaces, 6 digits at least
PHONE = re.compile(r"[0-9+()\s.-]{6,30}")
PHONE_HELP = "a phone number: 6 to 30 digits, spaces and + ( ) . -, with 6 digits at least"


class CallbackIn(Input):
    contact: str | None = Field(
        None,
        max_length=200,
        description=f"where to call back ({PHONE_HELP}); null: the caller identity",
    )

    @field_validator("contact")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        # a callback is a phone call: a name or an address here is a number nobody can dial
        if value is None:
            return None
        value = value.strip()
        if not PHONE.fullmatch(value) or sum(c.isdigit() for c in value) < 6:
            raise ValueError(f"must be {PHONE_HELP}")
        return value


class CallbackOut(BaseModel):
    id: str
    call_id: str
    caller: str | None
    contact: str | None
    queue: str
    priority: int
    summary: str
    escalation_reason: str | None
    status: str
    requested_at: datetime
    done_by: str | None
    done_at: datetime | None


class HistoryItem(BaseModel):
    id: str
    created_at: datetime
    ended_at: datetime | None
    channel: str
    state: str
    summary: str
    emotion: str | None
    escalation_reason: str | None
    disposition: str | None
    end_reason: str | None
    intent: str | None = None
    verified_by: str | None = None


class ChatIn(Input):
    language: str | None = Field(None, pattern=LANGUAGE, description="BCP 47, e.g. 'en'")
    caller: str | None = Field(None, max_length=200, description="Caller identity, if known")
    customer_token: str | None = Field(
        None, max_length=8192, description="as for a call: the business app's signed user"
    )


class ChatOut(BaseModel):
    call_id: str = Field(description="the chat is a call of channel chat")
    events_url: str
    caller_token: str = Field(description="Bearer token for this chat only")


class MessageIn(Input):
    text: str = Field(min_length=1, max_length=2000, description="one line of the chat")


class KeysIn(Input):
    digits: str = Field(pattern=r"^[0-9*#]{1,32}$", description="keys pressed, in order")


class QueueIn(Input):
    skills: list[str] = Field(default_factory=list, max_length=20)
    priority: int = Field(0, ge=0, le=100, description="base priority of calls in this queue")
    max_wait: float = Field(600.0, gt=0, description="seconds before a callback is offered")
    announcement: str = Field(
        "Thank you for calling. An agent will be with you shortly.", max_length=1000
    )


class QueueOut(BaseModel):
    name: str
    skills: list[str]
    priority: int
    max_wait: float
    announcement: str
    waiting: int
    average_handle_time: float


class ArticleIn(Input):
    title: str = Field(min_length=1, max_length=300)
    body: str = Field(min_length=1, max_length=100_000, description="the suggested answer")
    tags: list[str] = Field(default_factory=list, max_length=50)


class ArticleOut(ArticleIn):
    id: str


class FlowIn(Input):
    yaml: str = Field(description="the flow as its YAML file would say it")


class FlowSummary(BaseModel):
    id: str
    numbers: list[str] = Field(description="dialled numbers it answers; none: the default flow")
    intents: list[str] = Field(description="the names of its intents")
    source: Source = Field(description="file: CCENGINE_BOT_FLOWS; api: put through the API")


class FlowsOut(BaseModel):
    on: bool = Field(
        description="the virtual agent answers calls (CCENGINE_BOT_FLOWS is set); when off, "
        "flows are kept but answer nobody"
    )
    flows: list[FlowSummary]


class FlowOut(FlowSummary):
    flow: Flow = Field(description="the flow, every default filled in")
    yaml: str = Field(description="its text as written (the file's, or the one put)")


class NoteIn(Input):
    text: str = Field(min_length=1, max_length=10_000, description="redacted before it is kept")


class DtmfIn(Input):
    digits: str = Field(pattern=r"^[0-9A-Da-d*#]{1,32}$")


class DtmfOut(BaseModel):
    sent_as: Literal["rfc4733", "inband"]


class PlayIn(Input):
    text: str = Field(min_length=1, max_length=2000, description="spoken to the caller")


class PlayOut(BaseModel):
    queued_behind: float = Field(description="seconds of audio the caller hears before it")


class OutboundIn(Input):
    to: str = Field(
        pattern=r"^(\+?[0-9*#]{2,32}|sip:\S{1,330})$",
        description="a number (through the trunk) or a sip: URI (CCENGINE_SIP_DIAL_DOMAINS)",
    )
    prompt: str | None = Field(None, max_length=2000, description="said when they answer")
    queue: str | None = Field(None, max_length=64, description="then wait for a person here")
    agent: str | None = Field(None, max_length=64, description="then ring this agent")


class PlacedCall(BaseModel):
    call_id: str


class WebhookIn(Input):
    url: AnyHttpUrl = Field(description="where events are POSTed (http or https)")
    events: list[str] = Field(
        min_length=1, max_length=len(EVENT_TYPES), description='event types, or ["*"] for all'
    )
    description: str = Field("", max_length=200)

    @field_validator("events")
    @classmethod
    def _known(cls, events: list[str]) -> list[str]:
        unknown = sorted(set(events) - {*EVENT_TYPES, "*"})
        if unknown:
            raise ValueError(f"unknown event types {unknown}; known: {', '.join(EVENT_TYPES)}")
        return sorted(set(events))


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    description: str
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="signs every delivery; shown only now")


class DeliveryOut(BaseModel):
    id: str = Field(description="the idempotency id, sent as Ccengine-Delivery")
    event_id: int
    event_type: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None


class Login(Input):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class UserOut(BaseModel):
    id: str
    username: str
    display_name: str
    role: str
    skills: list[str]


class LoginOut(BaseModel):
    token: str
    expires_in: int
    user: UserOut


class SecretsIn(Input):
    """Write-only: kept as argon2 hashes, never shown. A secret left out keeps its
    hash; one given as null is removed."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")

    pin: str | None = Field(None, max_length=64, description=SECRET_FORMS["pin"])
    dob: str | None = Field(None, max_length=64, description=SECRET_FORMS["dob"])
    last4: str | None = Field(None, max_length=64, description=SECRET_FORMS["last4"])

    @field_validator("pin", "dob", "last4")
    @classmethod
    def _form(cls, value: str | None, info: ValidationInfo) -> str | None:
        # the message names the form, never the value given
        if value is not None and normalize_secret(str(info.field_name), value) is None:
            raise ValueError(f"must be {SECRET_FORMS[str(info.field_name)]}")
        return value

    def given(self) -> dict[str, str | None]:
        return {name: getattr(self, name) for name in sorted(self.model_fields_set)}


KeyList = Annotated[
    list[Annotated[str, StringConstraints(max_length=512)]], Field(max_length=MAX_KEYS)
]


class CustomerPut(Input):
    name: str = Field(min_length=1, max_length=200)
    phones: KeyList = Field(
        default_factory=list, description="numbers as callers' ids arrive: matched as given"
    )
    emails: KeyList = Field(default_factory=list)
    app_user_ids: KeyList = Field(
        default_factory=list, description="the business app's user ids (its tokens' sub)"
    )
    secrets: SecretsIn | None = None

    @field_validator("phones", "emails", "app_user_ids")
    @classmethod
    def _usable(cls, values: list[str], info: ValidationInfo) -> list[str]:
        normalize = {"phones": normalize_phone, "emails": normalize_email,
                     "app_user_ids": normalize_app_user}[str(info.field_name)]  # fmt: skip
        for value in values:
            if normalize(value) is None:
                raise ValueError(f"not usable: {value[:80]!r}")
        return values


class CustomerOut(BaseModel):
    id: str
    name: str
    phones: list[str]
    emails: list[str]
    app_user_ids: list[str]
    factors: list[str] = Field(description="which secrets are set (pin, dob, last4)")
    locked_until: datetime | None = Field(
        description="too many wrong answers: nothing verifies them until then"
    )
    created_at: datetime
    updated_at: datetime
