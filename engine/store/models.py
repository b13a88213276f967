"""Tables. Changing them means a new alembic revision in ``migrations/versions``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class Base(DeclarativeBase):
    pass


class UtcDateTime(TypeDecorator[datetime]):
    """A time with its zone: PostgreSQL keeps it, SQLite hands back none, which the
    API then wrote without one ("2026-11-27T10:51:05", not a date-time by its own
    schema; found once the API fuzzing could start chats). Read back in UTC either way."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)


# Event ids: every engine start reserves a block of a million, which would run a 32-bit
# INTEGER out in a few thousand starts. SQLite's INTEGER is 64-bit already (and a column
# declared otherwise would no longer be the table's rowid), so the variant keeps it.
EventId = BigInteger().with_variant(Integer(), "sqlite")


class CallRow(Base):
    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    language: Mapped[str] = mapped_column(String(16))
    recognizer: Mapped[str | None] = mapped_column(String(32))
    recognizer_note: Mapped[str] = mapped_column(Text, default="")
    caller: Mapped[str | None] = mapped_column(String(200), index=True)
    emotion: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    answered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    end_reason: Mapped[str | None] = mapped_column(String(64))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    escalated_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    escalation_reason: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text, default="")
    facts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    agent_id: Mapped[str | None] = mapped_column(String(36), index=True)  # the last agent
    disposition: Mapped[str | None] = mapped_column(String(64))
    wrapped_up_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    topic: Mapped[str | None] = mapped_column(String(64))  # chosen in the phone menu
    queue: Mapped[str | None] = mapped_column(String(64), index=True)  # the last one
    # the engine process running it (engine/recovery.py); None: from before this was kept
    engine_id: Mapped[str | None] = mapped_column(String(36))
    # the customer the caller is (engine/customers.py), and how they proved it: "pin",
    # "dob", "last4", "app_token", ...; None: not verified (the customer may be known by
    # the caller id alone)
    customer_id: Mapped[str | None] = mapped_column(String(64), index=True)
    verified_by: Mapped[str | None] = mapped_column(String(16))
    # the carrier's STIR/SHAKEN attestation of the caller's number (A, B, C): shown, not
    # proof (engine/stirshaken.py)
    attestation: Mapped[str | None] = mapped_column(String(1))
    # the chat this call was upgraded from (the agent sees the chat with it)
    upgraded_from: Mapped[str | None] = mapped_column(String(36))
    # the virtual agent: what the caller wanted, and what it was doing about it
    # ({"intent", "slots", "done"})
    intent: Mapped[str | None] = mapped_column(String(40))
    bot_task: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    legs: Mapped[list[LegRow]] = relationship(back_populates="call", order_by="LegRow.created_at")


class EngineRow(Base):
    """A running engine process. Its calls are its own while its heartbeat is fresh."""

    __tablename__ = "engines"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # where the other engines reach its API (engine/forward.py); None: an older engine
    url: Mapped[str | None] = mapped_column(String(300), default=None)


class LegRow(Base):
    __tablename__ = "legs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # caller, agent, supervisor
    transport: Mapped[str] = mapped_column(String(16))  # webrtc, sip
    codec: Mapped[str | None] = mapped_column(String(32))
    user_id: Mapped[str | None] = mapped_column(String(36))  # the agent, for agent legs
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    call: Mapped[CallRow] = relationship(back_populates="legs")


class UtteranceRow(Base):
    __tablename__ = "utterances"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    leg_id: Mapped[str] = mapped_column(ForeignKey("legs.id", ondelete="CASCADE"))
    speaker: Mapped[str] = mapped_column(String(16))
    seq: Mapped[int] = mapped_column(Integer)
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)
    words: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # False: said while the caller was held for a consult; staff read it, the caller's
    # own reads leave it out (engine/api/rest.py)
    caller_heard: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class EscalationRow(Base):
    __tablename__ = "escalations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    rule: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    actions: Mapped[list[str]] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(Integer)
    skill: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))  # agent, supervisor, admin
    skills: Mapped[list[str]] = mapped_column(JSON)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # In every token issued to them; raised to revoke those (sign-out, new password).
    token_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class PresenceRow(Base):
    __tablename__ = "presence_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    presence: Mapped[str] = mapped_column(String(16))
    previous: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    # why, when there is a reason: the agent's for "away" (break, lunch ...), or the
    # engine's (missed_call, disconnected, wrap_up_timed_out)
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True, default=None)


class EmotionRow(Base):
    __tablename__ = "emotion_samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    leg_id: Mapped[str] = mapped_column(ForeignKey("legs.id", ondelete="CASCADE"))
    utterance_id: Mapped[str] = mapped_column(String(36))
    at: Mapped[float] = mapped_column(Float)
    label: Mapped[str] = mapped_column(String(16))
    arousal: Mapped[float] = mapped_column(Float)
    valence: Mapped[float] = mapped_column(Float)
    trend: Mapped[float] = mapped_column(Float)
    call_label: Mapped[str] = mapped_column(String(16))
    scores: Mapped[dict[str, float]] = mapped_column(JSON)
    features: Mapped[dict[str, Any]] = mapped_column(JSON)


class NoteRow(Base):
    """Something a person wrote about a call: wrap-up notes, a transfer's hand-over."""

    __tablename__ = "call_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    author_id: Mapped[str | None] = mapped_column(String(36))
    author: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # wrap_up, transfer, note
    text: Mapped[str] = mapped_column(Text)
    disposition: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class CallbackRow(Base):
    """A caller chose to be called back rather than wait."""

    __tablename__ = "callbacks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    caller: Mapped[str | None] = mapped_column(String(200))
    contact: Mapped[str | None] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(64))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[str] = mapped_column(Text, default="")
    escalation_reason: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending, done
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime())
    done_by: Mapped[str | None] = mapped_column(String(64))
    done_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class OverrideRow(Base):
    """Queues, escalation rules and articles changed through the API; they win over
    the files. ``config`` None: removed."""

    __tablename__ = "config_overrides"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # queue, rule, article
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    updated_by: Mapped[str] = mapped_column(String(100))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ApiKeyRow(Base):
    """A developer's API key: only a hash of its secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # public part of the key
    name: Mapped[str] = mapped_column(String(100))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    secret_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the secret part
    rate_per_minute: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class EventRow(Base):
    """The durable event log: what streams resume from and webhooks deliver."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(40))
    call_id: Mapped[str | None] = mapped_column(String(36), index=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    body: Mapped[str] = mapped_column(Text)  # the event as JSON, exactly as streamed


class EventSequenceRow(Base):
    """Event ids handed out up to here; a restarted engine continues above it."""

    __tablename__ = "event_sequence"

    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    reserved_to: Mapped[int] = mapped_column(EventId)


class WebhookRow(Base):
    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON)  # event types, or ["*"]
    secret: Mapped[str] = mapped_column(String(100))  # signs bodies, so it is kept as is
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class DeliveryRow(Base):
    """The outbox: one event for one webhook, tried until it lands or runs out of tries."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # the idempotency id
    webhook_id: Mapped[str] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), index=True
    )
    event_id: Mapped[int] = mapped_column(EventId)
    event_type: Mapped[str] = mapped_column(String(40))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # The engine sending it, until when (Store.claim_deliveries): several engines share
    # one outbox and each delivery goes out from one of them. A claim whose engine died
    # mid-send runs out, and the delivery is claimed again.
    claimed_by: Mapped[str | None] = mapped_column(String(36))
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime())


class CustomerRow(Base):
    """A customer of the business, under the business's own id (engine/customers.py).
    ``secrets``: {factor: argon2 hash} for "pin", "dob", "last4"; never the values."""

    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    secrets: Mapped[dict[str, str]] = mapped_column(JSON)
    # wrong answers since the last right one; at the limit the record locks until
    # ``locked_until`` (no answer is checked meanwhile)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class CustomerKeyRow(Base):
    """What finds a customer: a phone number, an email address, the business app's
    user id. Each belongs to one customer at most (the primary key)."""

    __tablename__ = "customer_keys"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # phone, email, app_user
    value: Mapped[str] = mapped_column(String(320), primary_key=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )


class CallAnalyticsRow(Base):
    """A finished call's analytics (engine/callanalytics.py): the whole result in
    ``data``, and the figures reports add up as columns, so a report reads no JSON."""

    __tablename__ = "call_analytics"

    call_id: Mapped[str] = mapped_column(
        ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer)
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    handle_seconds: Mapped[float] = mapped_column(Float)
    queue_seconds: Mapped[float] = mapped_column(Float)
    bot_seconds: Mapped[float] = mapped_column(Float)
    agent_seconds: Mapped[float] = mapped_column(Float)
    hold_seconds: Mapped[float] = mapped_column(Float)
    wrap_up_seconds: Mapped[float] = mapped_column(Float)
    # None for a chat (typed lines take no time); non-talk is dead air
    caller_talk_seconds: Mapped[float | None] = mapped_column(Float)
    agent_talk_seconds: Mapped[float | None] = mapped_column(Float)  # the agent's and the bot's
    non_talk_seconds: Mapped[float | None] = mapped_column(Float)
    longest_non_talk_seconds: Mapped[float | None] = mapped_column(Float)
    caller_interruptions: Mapped[int] = mapped_column(Integer)  # by the caller
    agent_interruptions: Mapped[int] = mapped_column(Integer)  # by the agent or the bot
    categories: Mapped[list[str]] = mapped_column(JSON)


class AlertRow(Base):
    """A supervisor alert (engine/alerts.py): raised by an escalation rule, kept across
    restarts, acknowledged by a person, closed when its call ends. ``id`` is the
    escalation's, so that every engine storing it stores it once."""

    __tablename__ = "alerts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    call_id: Mapped[str] = mapped_column(String(36), index=True)  # no FK: may come first
    reason: Mapped[str] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    raised_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    acked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # "api:<key name>" (names up to 100) or a username: room to spare
    acked_by: Mapped[str | None] = mapped_column(String(200))
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    closed_reason: Mapped[str | None] = mapped_column(String(64))
