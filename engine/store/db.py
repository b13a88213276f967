"""Database engine, migrations and the call repository."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import and_, case, delete, event, func, or_, select, text, update
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import selectinload
from sqlalchemy.pool import ConnectionPoolEntry

from engine.store.models import (
    ApiKeyRow,
    CallbackRow,
    CallRow,
    DeliveryRow,
    EmotionRow,
    EngineRow,
    EscalationRow,
    EventRow,
    EventSequenceRow,
    LegRow,
    NoteRow,
    OverrideRow,
    UserRow,
    UtteranceRow,
    WebhookRow,
)

if TYPE_CHECKING:
    from alembic.config import Config

HERE = Path(__file__).parent


# a caller id that can be dialled back: digits, maybe a leading +
PHONE_NUMBER = re.compile(r"\+?[0-9]{3,20}")


class CutOff(NamedTuple):
    """A call a dead engine left open, as a survivor ended it."""

    call_id: str
    previous: str  # the state it was in
    created_at: datetime
    callback: CallbackRow | None  # offered to its caller, if they can be called back
    agent_id: str | None = None  # the agent on it when its engine died
    # every agent with a leg still open on it (a consulted colleague besides
    # ``agent_id``): each was on the call in the shared routing, and must leave it
    agents: tuple[str, ...] = ()


class CallRecord(NamedTuple):
    call: CallRow
    utterances: Sequence[UtteranceRow]
    emotions: Sequence[EmotionRow]
    escalations: Sequence[EscalationRow]
    notes: Sequence[NoteRow]


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest migration's revision: the one no other migration follows."""
    found: dict[str, str | None] = {}
    for path in (HERE / "migrations" / "versions").glob("*.py"):
        source = path.read_text()
        rev = re.search(r'^revision = "([^"]+)"', source, re.M)
        down = re.search(r'^down_revision = (?:"([^"]+)"|None)', source, re.M)
        if rev and down:
            found[rev.group(1)] = down.group(1)
    heads = set(found) - set(found.values())
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def _sqlite_revision(path: Path) -> str | None:
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None  # a new file, or one older than alembic
    return str(row[0]) if row else None


def upgrade_schema(url: str) -> None:
    """Bring the schema to the newest revision (blocking; alembic runs its own loop).
    A SQLite database already at the newest revision is left alone without importing
    alembic, which would stay in the engine's memory (~10 MB) for nothing."""
    path = sqlite_file(url)
    if path is not None and path.exists() and _sqlite_revision(path) == head_revision():
        return
    from alembic import command

    # alembic keeps the running migration's context in a global: two threads migrating
    # at once (stores opened together in one process) would mix theirs up
    with _MIGRATING:
        command.upgrade(alembic_config(url), "head")


_MIGRATING = threading.Lock()


class DamagedDatabase(Exception):
    """The database file failed SQLite's integrity check: where, and what SQLite says."""


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None: another database, or in memory)."""
    if not url.startswith("sqlite") or ":///" not in url:
        return None
    path = url.split(":///", 1)[1].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_integrity(url: str, full: bool = False) -> None:
    """SQLite's own check of the whole file, before anything else opens it: a damaged
    page or index found at start is one clear refusal, not a traceback now or wrong
    answers later. ``quick_check`` reads every page (O(N)); ``integrity_check`` (full)
    also compares every index with its table, which takes longer on a big file."""
    path = sqlite_file(url)
    if path is None or not path.exists():
        return  # a new database: nothing to check
    pragma = "integrity_check" if full else "quick_check"
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            found = [str(row[0]) for row in db.execute(f"PRAGMA {pragma}(5)")]
    except sqlite3.DatabaseError as exc:  # not a database, or damaged past reading
        raise DamagedDatabase(f"{path}: {exc}") from None
    if found != ["ok"]:  # SQLite's findings span lines: the refusal is one
        raise DamagedDatabase(f"{path}: {'; '.join(' '.join(f.split()) for f in found)}")


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers (API, live views) never block the writers that persist calls.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=15000")  # other processes (backups, sqlite3 shell)
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


# What PostgreSQL refuses and SQLite keeps. Written anyway, differently: a caller
# identity, a note or a transcript with a NUL character, or emotion features with a NaN,
# would fail its write on PostgreSQL (the call, or what was said, never stored).


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, tuple | list):
        return type(value)(_without_nul(v) for v in value)
    if isinstance(value, dict):
        return {k: _without_nul(v) for k, v in value.items()}
    return value


def _postgres_text(
    _conn: object, _cursor: object, statement: str, parameters: Any, *_args: object
) -> tuple[str, Any]:
    """NUL in text becomes U+FFFD, the replacement character, as an undecodable byte
    does."""
    return statement, _without_nul(parameters)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple | list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _postgres_json(value: Any) -> str:
    """NaN and Infinity in JSON become null: PostgreSQL's JSON is the standard's."""
    return json.dumps(_finite(value))


IDLE_CONNECTIONS = 5  # a database server's connections kept open while an engine is idle
CLOCK_SKEW_WARNING = 1.0  # seconds between this host's clock and the database server's

log = logging.getLogger(__name__)


class Store:
    def __init__(
        self, url: str, max_connections: int = 15, wall: Callable[[], float] = time.time
    ) -> None:
        """``max_connections``: to a database server (PostgreSQL), at most this many at
        once from this engine, ``IDLE_CONNECTIONS`` of them kept open; more writers wait
        for one (several engines share the server's ``max_connections``). ``wall``: this
        host's clock (tests give a wrong one)."""
        self.url = url
        self._wall = wall
        self.clock_offset = 0.0  # seconds the database server's clock is ahead of ours
        sqlite = url.startswith("sqlite")
        # a server (PostgreSQL) may have been restarted, or have closed an idle
        # connection: checked as it leaves the pool, rather than failing the write
        self.engine: AsyncEngine = (
            create_async_engine(url)
            if sqlite
            else create_async_engine(
                url,
                pool_pre_ping=True,
                json_serializer=_postgres_json,
                pool_size=min(IDLE_CONNECTIONS, max_connections),
                max_overflow=max(0, max_connections - IDLE_CONNECTIONS),
            )
        )
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            event.listen(
                self.engine.sync_engine, "before_cursor_execute", _postgres_text, retval=True
            )
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time. Through aiosqlite a write transaction
        # can hold that lock across event-loop turns, and under load (many calls
        # starting at once) other writers then time out with "database is
        # locked". Queueing our writers here instead costs nothing: SQLite would
        # serialise them anyway, and WAL readers are not blocked. PostgreSQL takes
        # concurrent writers, locking rows, not the database: no queue there.
        self._write_lock = asyncio.Lock() if self.engine.dialect.name == "sqlite" else None

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session whose failures to reach the database are SQLAlchemy errors: asyncpg
        lets a refused or reset connection out as the socket's own OSError, which
        SQLAlchemy does not wrap, and every ``except SQLAlchemyError`` that keeps a
        background loop alive through an outage (heartbeats, the webhook sender, the
        event log) let it through: with PostgreSQL stopped for a moment the heartbeat
        task died, and other engines then ended this live engine's calls."""
        try:
            async with self._sessions() as s:
                yield s
        except SQLAlchemyError:
            raise
        except Exception as exc:
            if isinstance(exc, OSError) or type(exc).__module__.startswith("asyncpg"):
                raise OperationalError(None, None, exc) from exc
            raise

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncSession]:
        async with contextlib.AsyncExitStack() as stack:
            if self._write_lock is not None:
                await stack.enter_async_context(self._write_lock)
            s = await stack.enter_async_context(self.session())
            await stack.enter_async_context(s.begin())
            yield s

    async def open(self) -> None:
        path = sqlite_file(self.url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif await self._revision() == head_revision():
            return  # as upgrade_schema does for a SQLite file: alembic stays unimported
        await asyncio.to_thread(upgrade_schema, self.url)

    async def _revision(self) -> str | None:
        """The schema's revision on a database server (None: a new database)."""
        try:
            async with self.engine.connect() as conn:
                return await conn.scalar(text("SELECT version_num FROM alembic_version"))
        except SQLAlchemyError:
            return None

    async def close(self) -> None:
        await self.engine.dispose()

    def now(self) -> datetime:
        """The time by the database server's clock (as last measured): what heartbeats
        and claims are written and judged by. Several engines' hosts never agree to the
        second, and a node whose clock is a lease behind would be taken for dead."""
        return datetime.fromtimestamp(self._wall() + self.clock_offset, UTC)

    async def sync_clock(self) -> float:
        """Measure how far the database server's clock is from this host's (SQLite: the
        same host, nothing to measure); the offset. Raises SQLAlchemyError."""
        if self.engine.dialect.name == "sqlite":
            return 0.0
        async with self.session() as s:
            before = self._wall()
            server = await s.scalar(text("SELECT clock_timestamp()"))
            after = self._wall()
        assert isinstance(server, datetime) and server.tzinfo is not None  # timestamptz
        offset = server.timestamp() - (before + after) / 2
        if abs(offset) >= CLOCK_SKEW_WARNING and abs(offset - self.clock_offset) >= 0.5:
            log.warning("this host's clock is %.1f s %s the database server's: engines "
                        "go by the server's; set both right (NTP)", abs(offset),
                        "behind" if offset > 0 else "ahead of")  # fmt: skip
        self.clock_offset = offset
        return offset

    async def add(self, *rows: Any) -> None:
        async with self.writing() as s:
            s.add_all(rows)

    async def add_and_update_call(self, call_id: str, values: dict[str, Any], *rows: Any) -> None:
        """Rows and a change to the call in one transaction (one trip to the disk)."""
        async with self.writing() as s:
            s.add_all(rows)
            await s.flush()
            await s.execute(update(CallRow).where(CallRow.id == call_id).values(**values))

    async def time_out_wrap_up(
        self, call_id: str, values: dict[str, Any], since: datetime, note: Any
    ) -> bool:
        """The call's wrap-up timed out: ``values`` and ``note`` stored, in one
        transaction, only if no wrap-up was saved for it at or after ``since`` (when the
        agent began to owe it); whether they were."""
        fresh = or_(CallRow.wrapped_up_at.is_(None), CallRow.wrapped_up_at < since)
        async with self.writing() as s:
            done = await s.execute(
                update(CallRow).where(CallRow.id == call_id, fresh).values(**values)
            )
            if getattr(done, "rowcount", 0) != 1:
                return False
            s.add(note)
        return True

    async def update_call(self, call_id: str, **values: Any) -> None:
        async with self.writing() as s:
            await s.execute(update(CallRow).where(CallRow.id == call_id).values(**values))

    async def end_leg(self, leg_id: str, when: datetime) -> None:
        async with self.writing() as s:
            await s.execute(update(LegRow).where(LegRow.id == leg_id).values(ended_at=when))

    # Engines and the calls they own (engine/recovery.py)

    async def beat(self, row: EngineRow) -> None:
        """Register an engine, or refresh its heartbeat (re-registering it if a survivor
        took it for dead and removed it)."""
        async with self.writing() as s:
            await s.merge(row)

    async def drop_engine(self, engine_id: str) -> None:
        async with self.writing() as s:
            await s.execute(delete(EngineRow).where(EngineRow.id == engine_id))

    async def engines(self) -> Sequence[EngineRow]:
        async with self.session() as s:
            return (await s.scalars(select(EngineRow))).all()

    async def call_node(self, call_id: str) -> EngineRow | None:
        """The engine running the call, if it has not ended (None: ended, unknown, or
        run by no engine)."""
        q = (
            select(EngineRow)
            .join(CallRow, CallRow.engine_id == EngineRow.id)
            .where(CallRow.id == call_id, CallRow.state != "ended")
        )
        async with self.session() as s:
            return (await s.scalars(q)).first()

    async def open_call_owners(self) -> set[str | None]:
        """The engines that have calls not yet ended (None: calls that name no engine)."""
        q = select(CallRow.engine_id).where(CallRow.state != "ended").distinct()
        async with self.session() as s:
            return set((await s.scalars(q)).all())

    async def end_calls_of(
        self, engine_id: str | None, when: datetime, reason: str
    ) -> list[CutOff]:
        """End the open calls of a dead engine (None: of no engine), keeping their data,
        and forget the engine; what each call this ended was, with the callback it was
        given when its caller can be called back (a phone number). A call another engine
        ended meanwhile is left out: one end per call."""
        owner = CallRow.engine_id.is_(None) if engine_id is None else CallRow.engine_id == engine_id
        ended: list[CutOff] = []
        async with self.writing() as s:
            rows = (await s.scalars(select(CallRow).where(owner, CallRow.state != "ended"))).all()
            for call in rows:
                call_id, state, created_at = call.id, call.state, call.created_at
                result = await s.execute(
                    update(CallRow)
                    .where(CallRow.id == call_id, CallRow.state != "ended")
                    .values(state="ended", ended_at=when, end_reason=reason)
                )
                if not getattr(result, "rowcount", 0):
                    continue
                callback = None
                if call.channel == "sip" and PHONE_NUMBER.fullmatch(call.caller or ""):
                    # cut off mid-call: the caller is called back, not left to dial again
                    callback = CallbackRow(
                        id=str(uuid.uuid4()), call_id=call_id, caller=call.caller,
                        contact=call.caller, queue=call.queue or "", priority=call.priority,
                        summary=call.summary, status="pending", requested_at=when,
                        escalation_reason=f"the call was cut off ({reason})",
                    )  # fmt: skip
                    s.add(callback)
                ended.append(CutOff(call_id, state, created_at, callback, call.agent_id))
            if ended:
                ids = [c.call_id for c in ended]
                legs = await s.execute(
                    select(LegRow.call_id, LegRow.user_id)
                    .where(
                        LegRow.call_id.in_(ids),
                        LegRow.role == "agent",
                        LegRow.ended_at.is_(None),
                        LegRow.user_id.is_not(None),
                    )
                    .order_by(LegRow.created_at)
                )
                on: dict[str, list[str]] = {}
                for leg_call, user_id in legs.all():
                    if user_id is not None:  # (the query leaves none out: for mypy)
                        on.setdefault(leg_call, []).append(user_id)
                ended = [c._replace(agents=tuple(on.get(c.call_id, ()))) for c in ended]
                await s.execute(
                    update(LegRow)
                    .where(LegRow.call_id.in_(ids), LegRow.ended_at.is_(None))
                    .values(ended_at=when)
                )
            if engine_id is not None:
                await s.execute(delete(EngineRow).where(EngineRow.id == engine_id))
        return ended

    async def add_user(self, row: UserRow) -> None:
        async with self.writing() as s:
            s.add(row)

    async def user_by_name(self, username: str) -> UserRow | None:
        async with self.session() as s:
            return await s.scalar(select(UserRow).where(UserRow.username == username))

    async def user(self, user_id: str) -> UserRow | None:
        async with self.session() as s:
            return await s.get(UserRow, user_id)

    async def update_user(self, user_id: str, **values: Any) -> None:
        async with self.writing() as s:
            await s.execute(update(UserRow).where(UserRow.id == user_id).values(**values))

    async def delete_user(self, user_id: str) -> None:
        async with self.writing() as s:
            await s.execute(delete(UserRow).where(UserRow.id == user_id))

    async def users(self) -> Sequence[UserRow]:
        async with self.session() as s:
            return (await s.scalars(select(UserRow).order_by(UserRow.username))).all()

    async def list_calls(
        self,
        *,
        state: str | None = None,
        limit: int = 50,
        offset: int = 0,
        queue: str | None = None,
        agent_id: str | None = None,
        emotion: str | None = None,
        channel: str | None = None,
        caller: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        escalated: bool | None = None,
    ) -> Sequence[CallRow]:
        """Calls newest first; every filter given must hold."""
        q = select(CallRow).order_by(CallRow.created_at.desc()).limit(limit).offset(offset)
        for column, value in (
            (CallRow.state, state), (CallRow.queue, queue), (CallRow.emotion, emotion),
            (CallRow.channel, channel), (CallRow.caller, caller),
        ):  # fmt: skip
            if value is not None:
                q = q.where(column == value)
        if agent_id is not None:  # any agent who took part, not only the last one
            # (a supervisor who listened to a call did not take it)
            q = q.where(CallRow.legs.any((LegRow.user_id == agent_id) & (LegRow.role == "agent")))
        if since is not None:
            q = q.where(CallRow.created_at >= since)
        if until is not None:
            q = q.where(CallRow.created_at < until)
        if escalated is not None:
            q = q.where(
                CallRow.escalated_at.is_not(None) if escalated else CallRow.escalated_at.is_(None)
            )
        async with self.session() as s:
            return (await s.scalars(q)).all()

    async def get_call(self, call_id: str) -> CallRecord | None:
        async with self.session() as s:
            call = await s.scalar(
                select(CallRow).where(CallRow.id == call_id).options(selectinload(CallRow.legs))
            )
            if call is None:
                return None
            utts = await s.scalars(
                select(UtteranceRow)
                .where(UtteranceRow.call_id == call_id)
                # a chat's answer is at the time of the line it answers: written after it
                .order_by(UtteranceRow.start, UtteranceRow.created_at, UtteranceRow.seq)
            )
            emos = await s.scalars(
                select(EmotionRow).where(EmotionRow.call_id == call_id).order_by(EmotionRow.id)
            )
            escs = await s.scalars(
                select(EscalationRow)
                .where(EscalationRow.call_id == call_id)
                .order_by(EscalationRow.at, EscalationRow.created_at)
            )
            notes = await s.scalars(
                select(NoteRow).where(NoteRow.call_id == call_id).order_by(NoteRow.id)
            )
            return CallRecord(call, utts.all(), emos.all(), escs.all(), notes.all())

    async def history(self, caller: str, *, before: str | None, limit: int) -> Sequence[CallRow]:
        """Earlier calls from the same caller identity, newest first."""
        q = select(CallRow).where(CallRow.caller == caller)
        if before is not None:
            q = q.where(CallRow.id != before)
        async with self.session() as s:
            return (await s.scalars(q.order_by(CallRow.created_at.desc()).limit(limit))).all()

    async def callbacks(self, status: str | None, limit: int = 100) -> Sequence[CallbackRow]:
        q = select(CallbackRow).order_by(CallbackRow.priority.desc(), CallbackRow.requested_at)
        if status:
            q = q.where(CallbackRow.status == status)
        async with self.session() as s:
            return (await s.scalars(q.limit(limit))).all()

    async def get_callback(self, callback_id: str) -> CallbackRow | None:
        async with self.session() as s:
            return await s.get(CallbackRow, callback_id)

    async def finish_callback(
        self, callback_id: str, by: str, when: datetime
    ) -> CallbackRow | None:
        """Mark a pending callback done; None if there is no such pending callback."""
        async with self.writing() as s:
            row = await s.get(CallbackRow, callback_id)
            if row is None or row.status != "pending":
                return None
            row.status, row.done_by, row.done_at = "done", by, when
            return row

    # Queues, rules and articles changed through the API

    async def overrides(self, kind: str) -> Sequence[OverrideRow]:
        q = select(OverrideRow).where(OverrideRow.kind == kind).order_by(OverrideRow.updated_at)
        async with self.session() as s:
            return (await s.scalars(q)).all()

    async def save_override(
        self, kind: str, name: str, config: dict[str, Any] | None, by: str, when: datetime
    ) -> None:
        async with self.writing() as s:
            await s.merge(
                OverrideRow(kind=kind, name=name, config=config, updated_by=by, updated_at=when)
            )

    # API keys

    async def api_key(self, key_id: str) -> ApiKeyRow | None:
        async with self.session() as s:
            return await s.get(ApiKeyRow, key_id)

    async def api_keys(self) -> Sequence[ApiKeyRow]:
        async with self.session() as s:
            return (await s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))).all()

    async def touch_api_key(self, key_id: str, when: datetime) -> None:
        async with self.writing() as s:
            await s.execute(
                update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_used_at=when)
            )

    async def revoke_api_key(self, key_id: str, when: datetime) -> bool:
        """True if the key existed and was live."""
        async with self.writing() as s:
            result = await s.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=when)
            )
            return bool(getattr(result, "rowcount", 0))

    # The event log

    async def reserve_event_ids(self, block: int, at_least: int = 0) -> tuple[int, int]:
        """Ids (first, last) nobody else was handed: no earlier run (one that died with
        events unwritten never sees its ids reused, so a client's last id stays
        meaningful) and no other engine on the same database. One UPDATE moves the
        sequence up and says where to: the database runs it atomically (a row lock on
        PostgreSQL, the write lock on SQLite), so two engines reserving at once get two
        blocks one after the other, where a read then a write gave both the same."""
        seq = EventSequenceRow.__table__.c
        written = select(func.coalesce(func.max(EventRow.id), 0)).scalar_subquery()
        floor = case((written > at_least, written), else_=at_least)
        above = case((seq.reserved_to > floor, seq.reserved_to), else_=floor)
        move = (
            update(EventSequenceRow)
            .where(seq.name == "events")
            .values(reserved_to=above + block)
            .returning(seq.reserved_to)
        )
        async with self.writing() as s:
            last = await s.scalar(move)
            if last is None:  # its row is made by migration 0013; only a hand could drop it
                last = max(await s.scalar(select(written)) or 0, at_least) + block
                s.add(EventSequenceRow(name="events", reserved_to=last))
        return last - block + 1, last

    async def write_events(
        self, rows: Sequence[EventRow], deliveries: Sequence[DeliveryRow]
    ) -> None:
        """Events and the webhook deliveries they cause, in one transaction: an event
        is in the log if and only if its deliveries are in the outbox."""
        async with self.writing() as s:
            s.add_all(rows)
            s.add_all(deliveries)

    async def events_after(
        self, after: int, call_id: str | None, limit: int, types: Sequence[str] | None = None
    ) -> Sequence[EventRow]:
        q = select(EventRow).where(EventRow.id > after)
        if call_id is not None:
            q = q.where(EventRow.call_id == call_id)
        if types:
            q = q.where(EventRow.type.in_(types))
        async with self.session() as s:
            return (await s.scalars(q.order_by(EventRow.id).limit(limit))).all()

    async def stored_event_ids(self, ids: Sequence[int]) -> set[int]:
        """Which of ``ids`` are in the events table."""
        async with self.session() as s:
            return set((await s.scalars(select(EventRow.id).where(EventRow.id.in_(ids)))).all())

    async def prune_events(self, before: datetime) -> int:
        async with self.writing() as s:
            result = await s.execute(delete(EventRow).where(EventRow.time < before))
            return int(getattr(result, "rowcount", 0) or 0)

    # Webhooks and their outbox

    async def webhooks(self) -> Sequence[WebhookRow]:
        async with self.session() as s:
            q = select(WebhookRow).where(WebhookRow.deleted_at.is_(None))
            return (await s.scalars(q.order_by(WebhookRow.created_at))).all()

    async def webhook(self, webhook_id: str) -> WebhookRow | None:
        async with self.session() as s:
            row = await s.get(WebhookRow, webhook_id)
            return row if row is not None and row.deleted_at is None else None

    async def delete_webhook(self, webhook_id: str, when: datetime) -> bool:
        """Stop a webhook; deliveries still pending are dropped (marked failed)."""
        async with self.writing() as s:
            row = await s.get(WebhookRow, webhook_id)
            if row is None or row.deleted_at is not None:
                return False
            row.deleted_at = when
            await s.execute(
                update(DeliveryRow)
                .where(DeliveryRow.webhook_id == webhook_id, DeliveryRow.status == "pending")
                .values(status="failed", last_error="webhook deleted")
            )
            return True

    async def claim_deliveries(
        self,
        engine_id: str,
        now: datetime,
        limit: int,
        lease: float,
        *,
        webhooks: int = 32,
        exclude: Collection[str] = (),
    ) -> Sequence[DeliveryRow]:
        """Claim deliveries that are due for ``engine_id`` until ``now + lease``: at most
        ``limit`` of each webhook (one slow receiver's backlog does not crowd out the
        others), of at most ``webhooks`` webhooks, none of those in ``exclude`` (the
        ones this engine is still sending to). A delivery someone else holds a live
        claim on is left alone; a claim past its lease (its engine died mid-send) is
        taken over. Rows are locked as read and marked in the same transaction: on
        PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets engines claiming at once pass each
        other's rows by; on SQLite the marking UPDATE asks again that each row is free
        and returns only those it took, so two engines never both take one."""
        free = or_(DeliveryRow.claimed_until.is_(None), DeliveryRow.claimed_until <= now)
        due = [DeliveryRow.status == "pending", DeliveryRow.next_attempt_at <= now, free]
        if exclude:
            due.append(DeliveryRow.webhook_id.not_in(list(exclude)))
        until = now + timedelta(seconds=lease)
        claimed: list[DeliveryRow] = []
        async with self.writing() as s:
            # the receivers waiting longest first: in index order the same few would win
            # every round once more than ``webhooks`` have deliveries due
            hooks = (
                await s.scalars(
                    select(DeliveryRow.webhook_id)
                    .where(*due)
                    .group_by(DeliveryRow.webhook_id)
                    .order_by(func.min(DeliveryRow.next_attempt_at))
                    .limit(webhooks)
                )
            ).all()
            for hook in sorted(hooks):
                ids = (
                    await s.scalars(
                        select(DeliveryRow.id)
                        .where(DeliveryRow.webhook_id == hook, *due)
                        .order_by(DeliveryRow.next_attempt_at, DeliveryRow.event_id)
                        .limit(limit)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                if not ids:
                    continue
                # still free, asked again as they are marked: pysqlite runs a SELECT
                # outside the write transaction, so on SQLite another engine may have
                # claimed some since (on PostgreSQL the row locks already say so)
                rows = await s.scalars(
                    update(DeliveryRow)
                    .where(DeliveryRow.id.in_(ids), *due)
                    .values(claimed_by=engine_id, claimed_until=until)
                    .returning(DeliveryRow),
                    execution_options={"synchronize_session": False},
                )
                claimed.extend(rows.all())
        return claimed

    async def release_deliveries(self, engine_id: str) -> int:
        """Free what ``engine_id`` claimed and did not send (it is stopping, or dead);
        how many."""
        async with self.writing() as s:
            result = await s.execute(
                update(DeliveryRow)
                .where(DeliveryRow.claimed_by == engine_id, DeliveryRow.status == "pending")
                .values(claimed_by=None, claimed_until=None)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    async def next_delivery_at(self, exclude: Collection[str] = ()) -> datetime | None:
        """When a pending delivery is next due, not counting webhooks in ``exclude``: a
        delivery another engine holds is due again when its claim runs out."""
        held = and_(
            DeliveryRow.claimed_until.is_not(None),
            DeliveryRow.claimed_until > DeliveryRow.next_attempt_at,
        )
        when = case((held, DeliveryRow.claimed_until), else_=DeliveryRow.next_attempt_at)
        q = select(func.min(when)).where(DeliveryRow.status == "pending")
        if exclude:
            q = q.where(DeliveryRow.webhook_id.not_in(list(exclude)))
        async with self.session() as s:
            return await s.scalar(q)

    async def webhook_url(self, webhook_id: str) -> tuple[str, str] | None:
        """(url, secret) of a live webhook."""
        row = await self.webhook(webhook_id)
        return (row.url, row.secret) if row else None

    async def record_attempt(self, delivery_id: str, engine_id: str, **values: Any) -> bool:
        """The outcome of ``engine_id``'s try, and the end of its claim; False if the
        claim was no longer its own (it ran out and another engine took the delivery
        over): that engine's outcome stands, not this late one, which could otherwise
        turn "delivered" back into "pending" or free a claim another engine holds."""
        async with self.writing() as s:
            result = await s.execute(
                update(DeliveryRow)
                .where(DeliveryRow.id == delivery_id, DeliveryRow.claimed_by == engine_id)
                .values(claimed_by=None, claimed_until=None, **values)
            )
            return bool(getattr(result, "rowcount", 0))

    async def deliveries(
        self, webhook_id: str, status: str | None, limit: int
    ) -> Sequence[DeliveryRow]:
        q = select(DeliveryRow).where(DeliveryRow.webhook_id == webhook_id)
        if status:
            q = q.where(DeliveryRow.status == status)
        async with self.session() as s:
            q = q.order_by(DeliveryRow.event_id.desc()).limit(limit)
            return (await s.scalars(q)).all()
