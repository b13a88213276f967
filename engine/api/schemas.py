"""Request and response bodies of the REST API (they make the OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from engine.events import FactOut, WordTiming


class CallOffer(BaseModel):
    sdp: str = Field(max_length=65536, description="The caller's SDP offer (non-trickle ICE)")
    type: Literal["offer"] = "offer"
    language: str | None = Field(
        None, pattern=r"^[a-zA-Z]{2,3}(-[a-zA-Z0-9]{2,8})?$", description="BCP 47, e.g. 'en'"
    )
    caller: str | None = Field(None, max_length=200, description="Caller identity, if known")


class CallAnswer(BaseModel):
    call_id: str
    type: Literal["answer"] = "answer"
    sdp: str
    language: str
    recognizer: str | None
    recognizer_note: str
    events_url: str
    view_url: str


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


class CallList(BaseModel):
    calls: list[CallOut]


class ModelOut(BaseModel):
    language: str
    backend: str | None
    path: str | None
    fallback: bool
    note: str
    looked_in: list[str]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    active_calls: int
