"""One order of events for several engines: a Redis stream they all append to and read.

Theory of operation. Every engine's event log (engine/eventlog.py) numbers a batch by
appending it to one Redis stream with a Lua script: INCRBY on a counter and XADD of each
event with the explicit stream id ``<event id>-0``, in one atomic step, so the stream's
order is the order of event ids, for every engine at once. The engine then writes the
batch to the database (with its webhook deliveries, as without Redis) and appends a
*stored* marker (``<counter>-<n>``, n > 0: markers take no event id). Each engine runs
one reader that follows the whole stream and hands events to its subscribers and its
replay ring (``EventBus.deliver``) in stream order, each event only once its marker has
come: as on one engine, nobody is shown an event that a crash could take back.

An engine that dies between its append and its marker would hold every reader up, so
each engine keeps a liveness key (refreshed every ``ALIVE_EVERY`` s, gone after
``ALIVE_FOR`` s or at a clean stop). A reader held up for ``SUSPECT_AFTER`` s by an
engine whose key is gone appends a *dropped* marker for it (only if the key is still gone,
checked inside the script; appending and marking refresh the key in the same step): that
engine's unmarked events up to the batch the reader waited on (the marker's ``u``) are
looked up in the database by every reader at that point of the stream; those stored
(the engine was killed between its write and its marker) are handed out, the rest are
skipped by every reader, as they come in the same order to all (see
``_drop_unstored`` for the one case where readers may differ). Those ids are never
handed out again. An engine
appends a new batch only once its last one is stored, so a reader waits on one batch an
engine at most; one alive but unable to store for ``STUCK_FOR`` s while others' stored
events wait behind it, or while more than ``MAX_HELD`` events pile up behind it, is
skipped the same way: a reader appends a
*given-up* marker (whatever its liveness), so every reader skips the same events, at
the same point of the stream. Skipped events stored after all are read from the
database by a replay (``EventBus.skipped``).

Event ids are contiguous in the stream (each number is one event), so a reader that
finds a number missing (it fell more than the stream's length behind, or Redis lost its
data) knows it: it cuts its subscribers off (they resume by id, from the database) and
starts its ring again. Appends carry a token, so an append retried after a lost reply
is not made twice. An entry that cannot be read is logged and skipped (its number still
counts); an event of a type this engine does not know (a newer engine's, in a rolling
upgrade) is handed on as it came (``UnknownEvent``); and a reader that fails anyhow is
started again: it never stops handing out events but at a stop.

If Redis loses the counter (restarted empty), the scripts refuse to number or mark
(``NO_COUNTER``) until an engine sets it again: to a high-water mark reserved in the
database (above its highest id, the reserved sequence, and this engine's own), plus
``LOSS_MARGIN`` for batches other engines had in flight in the lost stream; the event log
keeps that mark ahead of the ids it writes, so even an emptied events table and an empty
Redis never bring ids back. The reset names a new epoch: readers skip what they waited
for from before it, and the jump in ids cuts their subscribers off to resume by id.

At start the reader reads the stream's last ring-full of events into the ring, so a
client resuming on any engine finds recent events in memory, older ones in the
database; and the counter is raised to the database's highest id (and, on every
append, to the highest this engine has seen), so ids never go back. On a Redis with no
counter (the first start, or one that lost its data) the first ids are above the
margin: ids do not start at 1.

What it costs: an append, a database write and a marker before anyone sees an event
(a few ms more than one engine alone), and each engine parses every engine's events.
While Redis is away nothing is shown and events wait in each engine's memory (as for
the database); an engine cut off from Redis for ``ALIVE_FOR`` s after appending a batch
has that batch skipped by the others if it was stored after they looked: clients live
then miss it, clients resuming by id from before it get it from the database (replay
looks up the ids the ring skipped). An engine stopping while Redis is away loses the events it still
holds (no id can be had safely): it logs how many.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from pydantic import ConfigDict, ValidationError
from redis.exceptions import RedisError, ResponseError

from engine.events import EventBase, EventBus, event_adapter

log = logging.getLogger(__name__)

ALIVE_EVERY = 2.0  # seconds between refreshes of an engine's liveness key
ALIVE_FOR = 10.0  # seconds a liveness key lasts without a refresh
SUSPECT_AFTER = 3.0  # seconds a reader waits for a marker before asking if its engine lives
BLOCK_MS = 1000  # a reader's XREAD waits this long, then looks at what it waits for
PAGE = 500  # entries per read
# Entries the stream keeps (about: trimmed in whole nodes). A reader that falls this far
# behind loses events (its subscribers are cut off and resume from the database), so it
# is well over what one batch appends (the event log appends at most APPEND_MAX at once)
# and over the ring a starting engine fills from it (RING_SIZE). ~1 KB an event.
MAXLEN = 20_000
APPEND_MAX = 1_000
# Events a reader keeps waiting behind one engine's unstored batch: an engine that stays
# alive but cannot store for long would otherwise grow every reader without bound. Past
# it the reader skips that engine's unstored events, as if it had died (every reader at
# the same point of the stream), and the others' go on.
MAX_HELD = 20_000
# seconds a reader waits behind an engine alive but not storing its batch, while other
# engines' stored events wait behind it, before it has every reader skip that batch: one
# engine's trouble (its own database connection) must not stall every engine's streams
STUCK_FOR = 30.0
TIMEOUT = 5.0  # seconds for a Redis command (a read blocks BLOCK_MS on top)
LOOKUP_TIMEOUT = 5.0  # seconds to look up a dead engine's unmarked events in the database

# The scripts' answer when the counter is gone (Redis restarted empty, or lost its data):
# the ids it handed out are unknown, so nothing is numbered nor marked until an engine
# sets it again above every id that may have been handed out (``RedisEventStream._reset``).
# Marks read against a missing counter would also be numbered ``0-n``: seen by nobody.
NO_COUNTER = "CCENGINE_NO_COUNTER"
_CHECK = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('{NO_COUNTER}') end
"""
# Ids left unused above the database's after the counter was lost: more than every
# engine's unstored batch (one each, at most APPEND_MAX) appended to the lost stream.
LOSS_MARGIN = 100_000

# KEYS: counter, stream, the engine's last append, its liveness key. ARGV: floor, maxlen,
# engine, token, liveness ms, bodies... The counter first rises to ``floor`` (an id this
# engine has seen), then the batch takes the next numbers. Returns the first of them; an
# engine appends one batch at a time, so its last token tells a retry from a new one. The
# liveness key is refreshed in the same step: a reader cannot find it gone (and have every
# reader drop the batch) between an append and the engine's next refresh.
APPEND = (
    _CHECK
    + """
redis.call('SET', KEYS[4], '1', 'PX', ARGV[5])
local last = redis.call('HMGET', KEYS[3], 'token', 'first')
if last[1] == ARGV[4] then return tonumber(last[2]) end
local cur = tonumber(redis.call('GET', KEYS[1]))
local floor = tonumber(ARGV[1])
if cur < floor then cur = floor end
local n = #ARGV - 5
for i = 1, n do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], string.format('%d-0', cur + i),
             'e', ARGV[3], 'b', ARGV[5 + i])
end
redis.call('SET', KEYS[1], string.format('%d', cur + n))
redis.call('HSET', KEYS[3], 'token', ARGV[4], 'first', string.format('%d', cur + 1))
redis.call('EXPIRE', KEYS[3], 86400)
return cur + 1
"""
)
# KEYS: counter, stream, the engine's liveness key. ARGV: maxlen, engine, the highest id
# it has stored, liveness ms.
STORED = (
    _CHECK
    + """
redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
local cur = redis.call('GET', KEYS[1])
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], cur .. '-*',
                  'e', ARGV[2], 's', ARGV[3])
"""
)
# KEYS: counter, stream, the engine's liveness key. ARGV: maxlen, engine, the newest id
# of its batch the reader waited on (``u``: readers skip its unstored events up to there
# only, never a batch it appended since, were it back), '1' to skip it though alive.
DROPPED = (
    _CHECK
    + """
if ARGV[4] ~= '1' and redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local cur = redis.call('GET', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], cur .. '-*', 'e', ARGV[2], 'x', '1',
           'u', ARGV[3], 'g', ARGV[4])
return 1
"""
)
# KEYS: counter. ARGV: floor. -1: the counter is gone (a reset is due).
RAISE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local cur = tonumber(redis.call('GET', KEYS[1]))
if cur < tonumber(ARGV[1]) then
  cur = tonumber(ARGV[1])
  redis.call('SET', KEYS[1], ARGV[1])
end
return cur
"""

# KEYS: counter, epoch. ARGV: floor, a new epoch. Sets the lost counter to ``floor`` and
# names a new epoch (``<uuid>:<floor>``: readers drop what they waited for from before
# it); if another engine did so first, only raises the counter. Returns the counter.
RESET = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local cur = tonumber(redis.call('GET', KEYS[1]))
  if cur < tonumber(ARGV[1]) then
    cur = tonumber(ARGV[1])
    redis.call('SET', KEYS[1], ARGV[1])
  end
  return cur
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2] .. ':' .. ARGV[1])
return tonumber(ARGV[1])
"""


def lost_counter(exc: BaseException) -> bool:
    """Whether a script failed because the counter is gone (see NO_COUNTER)."""
    return isinstance(exc, ResponseError) and NO_COUNTER in str(exc)


# stream entries as redis-py hands them back: (id, {field: value})
Entries = list[tuple[bytes, dict[bytes, bytes]]]


def cancelled() -> bool:
    """Whether the running task is being cancelled. redis-py may turn the CancelledError
    of a command cut short into a connection error: a loop that retries those must look,
    or it never ends and whoever stops it waits forever."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class RedisUnavailable(Exception):
    """The configured Redis cannot be used (wrong URL, not running, refused)."""


def with_id(event_id: int, rest: str) -> str:
    """An event's JSON from its JSON without the id (``{"time": ...}``): the id comes
    first, as ``model_dump_json`` puts it (EventBase declares it first)."""
    return f'{{"id":{event_id},{rest[1:]}' if rest != "{}" else f'{{"id":{event_id}}}'


class UnknownEvent(EventBase):
    """An event of a type this engine does not know (a newer engine published it, in a
    rolling upgrade): handed on as it came, every field kept."""

    model_config = ConfigDict(extra="allow")
    type: str = "unknown"


def parse_event(body: str) -> EventBase:
    """An event from its JSON; one of a type unknown here as an UnknownEvent. Raises
    ValueError (a ValidationError) if it is not an event at all."""
    try:
        return event_adapter.validate_json(body)
    except ValidationError:
        return UnknownEvent.model_validate_json(body)


@dataclass(slots=True)
class _Held:
    """An event read from the stream, waiting for its engine's stored marker."""

    id: int
    engine: str
    body: str
    stored: bool = False
    gap_before: bool = False  # numbers before it were never read: the ring restarts


class RedisEventStream:
    def __init__(self, url: str, prefix: str = "ccengine", maxlen: int = MAXLEN) -> None:
        self.url = url
        self.engine = uuid.uuid4().hex[:12]
        self.maxlen = maxlen
        self._counter = f"{prefix}:events:counter"
        self._epoch_key = f"{prefix}:events:epoch"
        self._stream = f"{prefix}:events"
        self._alive_prefix = f"{prefix}:engine:"
        self._last_append = f"{prefix}:append:{self.engine}"
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
        )
        self._append = self._redis.register_script(APPEND)
        self._stored = self._redis.register_script(STORED)
        self._dropped = self._redis.register_script(DROPPED)
        self._raise = self._redis.register_script(RAISE)
        self._reset_script = self._redis.register_script(RESET)
        # The id the counter is set to once it was lost: above every id any engine may
        # have handed out, persisted as a high-water mark (the event log's, from the
        # database). None: above what this engine knows, plus LOSS_MARGIN.
        self.floor_after_loss: Callable[[], Awaitable[int]] | None = None
        self._epoch: bytes | None = None  # the epoch this reader follows
        self.resets = 0  # times this engine found the counter gone and set it again
        self._held: collections.deque[_Held] = collections.deque()
        self._read_from = "0-0"  # the stream id after which the reader reads
        self._last_number = 0  # the newest event id read from the stream
        self._head_since = 0.0  # monotonic time the first held event began to wait
        self._head_id = 0  # which event that is
        # monotonic time a stored event began to wait behind that one (None: none does)
        self._blocked_since: float | None = None
        self._asked_at = 0.0  # when this reader last asked whether that engine lives
        self.highest = 0  # the newest event id this engine knows of (a floor for appends)
        self.dropped = 0  # events skipped: their engine died before storing them
        # stored by an engine that died before marking them: handed out all the same
        self.recovered = 0
        # which of these event ids the database has (set by the event log): a dead
        # engine's stored but unmarked events are handed out, not skipped
        self.stored_ids: Callable[[list[int]], Awaitable[set[int]]] | None = None
        self.gaps = 0  # times the reader found numbers missing
        self.bad = 0  # entries that could not be read (malformed): skipped
        self.unknown = 0  # events of a type this engine does not know, handed on as they came
        self.restarts = 0  # times the reader failed unexpectedly and was started again
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._bus: EventBus | None = None

    @property
    def held(self) -> int:
        """Events read and waiting for their engine's stored marker."""
        return len(self._held)

    def _alive_key(self, engine: str) -> str:
        return self._alive_prefix + engine

    async def start(self, bus: EventBus, floor: int) -> None:
        """Check Redis, raise the counter to ``floor`` (the database's highest id), read
        the stream into ``bus``'s ring, then follow it. Raises RedisUnavailable."""
        self.highest = floor
        self._bus = bus
        try:
            await self._redis.ping()
            counter = int(await self._raise(keys=[self._counter], args=[floor]))
            if counter < 0:  # first start on this Redis, or it lost its data
                counter = await self._reset(starting=True)
            self._epoch = cast(bytes | None, await self._redis.get(self._epoch_key))
            await self._keep_alive_once()
            # from as far back as the ring holds: older events are the database's
            self._read_from = f"{max(0, counter - bus.ring_size)}-0"
            await self._catch_up(bus, floor)
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"cannot use Redis at {safe_url(self.url)}: {exc}") from exc
        self._tasks = [
            self._start_reader(bus),
            asyncio.create_task(self._alive_loop(), name="redis-alive"),
        ]

    def _start_reader(self, bus: EventBus) -> asyncio.Task[None]:
        task = asyncio.create_task(self._read_loop(bus), name="redis-events")
        task.add_done_callback(lambda done: self._reader_ended(done, bus))
        return task

    def _reader_ended(self, task: asyncio.Task[None], bus: EventBus) -> None:
        """The reader must never end but at a stop: without it no subscriber of this
        engine gets another event. Whatever ended it is logged, and it starts again."""
        if self._stopping or task.cancelled() or task not in self._tasks:
            return
        exc = task.exception()
        log.error("redis: the event reader ended (%r); starting it again", exc, exc_info=exc)
        self.restarts += 1
        self._tasks[self._tasks.index(task)] = self._start_reader(bus)

    async def _catch_up(self, bus: EventBus, floor: int) -> None:
        while entries := cast(
            Entries, await self._redis.xrange(self._stream, min=f"({self._read_from}", count=PAGE)
        ):
            await self._take(bus, entries)
        if not bus.replay():
            # nothing in the ring: the database serves every id up to here, short of
            # an event still waiting for its marker (it will come live)
            waiting = self._held[0].id - 1 if self._held else floor
            bus.delivered_to = min(floor, waiting)

    async def _reset(self, *, starting: bool = False) -> int:
        """Set the lost counter above every id that may have been handed out; the
        counter. ``starting``: found missing as this engine starts, which is what a new
        Redis looks like too; not a loss worth a warning (nor the resets metric) then."""
        if self.floor_after_loss is not None:
            floor = await self.floor_after_loss()
        else:
            floor = self.highest + LOSS_MARGIN
        new_epoch = uuid.uuid4().hex
        counter = int(
            await self._reset_script(keys=[self._counter, self._epoch_key], args=[floor, new_epoch])
        )
        if starting:
            log.info("redis: no event counter yet (a new Redis, or one that lost its "
                     "data); event ids go on from %d", counter + 1)  # fmt: skip
        else:
            self.resets += 1
            log.warning("redis: the event counter was gone (Redis lost its data?); ids go "
                        "on from %d", counter + 1)  # fmt: skip
        return counter

    async def _again_if_lost(self, script: Callable[[], Awaitable[object]]) -> object:
        """Run a script; if the counter was lost, set it again and run it once more."""
        try:
            return await script()
        except ResponseError as exc:
            if not lost_counter(exc):
                raise
        await self._reset()
        return await script()

    async def append(self, rests: Sequence[str], token: str, floor: int) -> int:
        """Number events (their JSON without ids) in the global order and put them in the
        stream; the first of their ids. ``token``: the same for a retry of one batch."""
        first = await self._again_if_lost(
            lambda: self._append(
                keys=[
                    self._counter,
                    self._stream,
                    self._last_append,
                    self._alive_key(self.engine),
                ],
                args=[
                    max(floor, self.highest),
                    self.maxlen,
                    self.engine,
                    token,
                    int(ALIVE_FOR * 1000),
                    *rests,
                ],
            )
        )
        assert isinstance(first, int)
        self.highest = max(self.highest, int(first) + len(rests) - 1)
        return int(first)

    async def stored(self, upto: int) -> None:
        """Tell every reader that this engine's events up to ``upto`` are in the database."""
        await self._again_if_lost(
            lambda: self._stored(
                keys=[self._counter, self._stream, self._alive_key(self.engine)],
                args=[self.maxlen, self.engine, upto, int(ALIVE_FOR * 1000)],
            )
        )

    async def stop(self) -> None:
        self._stopping = True  # a loop whose cancellation a command swallowed ends too
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _done, late = await asyncio.wait(self._tasks, timeout=BLOCK_MS / 1000 + 2 * TIMEOUT)
            for task in late:  # nothing waits forever
                log.error("redis: %s did not stop", task.get_name())
        self._tasks = []
        # readers skip at once what this engine appended and never stored
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self._alive_key(self.engine), self._last_append)
        await self._redis.aclose()

    async def _keep_alive_once(self) -> None:
        await self._redis.set(self._alive_key(self.engine), "1", px=int(ALIVE_FOR * 1000))

    async def _alive_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(ALIVE_EVERY)
            try:
                await self._keep_alive_once()
            except (RedisError, OSError) as exc:
                if cancelled():
                    raise asyncio.CancelledError from exc
                log.warning("redis: cannot refresh this engine's liveness: %s", exc)

    async def _read_loop(self, bus: EventBus) -> None:
        while not self._stopping:
            try:
                await self._check_epoch()
                got = cast(
                    list[tuple[bytes, Entries]],
                    await self._redis.xread(
                        {self._stream: self._read_from}, count=PAGE, block=BLOCK_MS
                    ),
                )
                for _stream, entries in got:
                    await self._take(bus, entries)
                await self._suspect()
            except (RedisError, OSError) as exc:  # Redis away: read again from where we were
                if cancelled():
                    raise asyncio.CancelledError from exc
                log.error("redis: reading events failed, will retry: %s", exc)
                await asyncio.sleep(1.0)
            except Exception:  # a bug: never a reason to stop handing out events
                log.exception("redis: reading events failed unexpectedly, will retry")
                await asyncio.sleep(1.0)

    async def _check_epoch(self) -> None:
        """The counter was set again after a loss (by any engine): what this reader waits
        for from before then will never be marked (the stream it was in is gone); its
        events are skipped (a replay finds any stored in the database), and the reader
        goes on with the new ids (a jump: its subscribers are cut off, to resume by id)."""
        epoch = cast(bytes | None, await self._redis.get(self._epoch_key))
        if epoch is None or epoch == self._epoch:
            return
        if self._epoch is not None or self._held:
            floor = int(epoch.rsplit(b":", 1)[1])
            log.warning("redis: the event stream started again above %d", floor)
            for engine in {held.engine for held in self._held if held.id <= floor}:
                self._drop(engine, upto=floor)
            if self._bus is not None:
                self._release(self._bus)
        self._epoch = epoch

    async def _take(self, bus: EventBus, entries: Entries) -> None:
        """Entries in stream order: queue events, apply markers, deliver what may go."""
        for raw_id, fields in entries:
            try:
                dropped = self._take_one(raw_id, fields)
            except (ValueError, KeyError, UnicodeDecodeError) as exc:
                # malformed (not written by this code): skipped alone, the rest go on
                self.bad += 1
                log.error("redis: skipping unreadable stream entry %r: %r", raw_id, exc)
                continue
            if dropped is not None:
                await self._drop_unstored(*dropped)
        self._release(bus)

    def _take_one(self, raw_id: bytes, fields: dict[bytes, bytes]) -> tuple[str, int | None] | None:
        """One entry; a *dropped* marker is returned (engine, up to), for ``_take`` to
        apply once it has looked in the database."""
        stream_id = raw_id.decode()
        self._read_from = stream_id  # past it, whether or not it can be read
        number, seq = (int(part) for part in stream_id.split("-"))
        if seq == 0:  # an event: its number is taken even if the rest cannot be read
            gap = self._last_number != 0 and number != self._last_number + 1
            self._last_number = number
            self.highest = max(self.highest, number)
            held = _Held(number, fields[b"e"].decode(), fields[b"b"].decode(), gap_before=gap)
            self._held.append(held)
            self._note_head()
            if len(self._held) > 2 * MAX_HELD and self._stuck():
                # the given-up marker could not be appended (see _suspect): bounded
                # anyway, though then by this reader alone
                self._give_up()
            return None
        engine = fields[b"e"].decode()
        if b"s" in fields:  # its engine has stored its events up to s
            upto = int(fields[b"s"])
            for held in self._held:
                if held.engine == engine and held.id <= upto:
                    held.stored = True
        elif b"x" in fields:  # its engine died: skip what it never stored (up to u)
            until = int(fields[b"u"]) if b"u" in fields else None
            if fields.get(b"g") == b"1":  # given up on alive: it may store them yet
                self._drop(engine, until)
                return None
            return engine, until
        return None

    async def _drop_unstored(self, engine: str, upto: int | None) -> None:
        """A *dropped* marker: ``engine`` died before marking its batch stored. It may
        have stored it all the same (killed between its database write and its marker):
        the events the database has are handed out in their place, not skipped, so live
        clients miss none of them. The rest are skipped (a replay finds any stored
        later). Not for an engine given up on while alive (stuck), which may store its
        batch between two readers' lookups: those events are skipped by all, as before.
        Readers may still differ for an engine whose liveness key ran out while it could
        reach the database but not Redis, and whose write lands between their lookups;
        each hands out each event at most once, in order, and a client of a reader that
        skipped one gets it on resume."""
        lookup = self.stored_ids
        unmarked = [
            h.id
            for h in self._held
            if h.engine == engine and not h.stored and (upto is None or h.id <= upto)
        ]
        if lookup is not None and unmarked:
            try:
                async with asyncio.timeout(LOOKUP_TIMEOUT):
                    found = await lookup(unmarked)
            except Exception as exc:  # the database away: skipped, as before
                log.warning("redis: cannot look up engine %s's unmarked events: %s", engine, exc)
                found = set()
            for held in self._held:
                if held.engine == engine and held.id in found:
                    held.stored = True
            if found:
                self.recovered += len(found)
                log.info("redis: %d events of engine %s were stored but not marked: handed "
                         "out", len(found), engine)  # fmt: skip
        self._drop(engine, upto)

    def _stuck(self) -> bool:
        """The first held event has waited long: not a batch whose marker is on its way
        (a reader holds every engine's newest batch until its marker comes)."""
        head = self._held[0]
        return not head.stored and time.monotonic() - self._head_since >= SUSPECT_AFTER

    def _give_up(self) -> None:
        head = self._held[0]
        log.error("redis: %d events wait behind engine %s's event %d; skipping its events",
                  len(self._held), head.engine, head.id)  # fmt: skip
        self._drop(head.engine)

    def _drop(self, engine: str, upto: int | None = None) -> None:
        kept: collections.deque[_Held] = collections.deque()
        gap = False  # a skipped event's gap passes to the next one kept
        skipped = []
        for held in self._held:
            if held.engine == engine and not held.stored and (upto is None or held.id <= upto):
                gap = gap or held.gap_before
                skipped.append(held.id)
                continue
            held.gap_before = held.gap_before or gap
            gap = False
            kept.append(held)
        if self._bus is not None:  # its engine may store them yet: replay looks
            self._bus.skip(skipped)
        if lost := len(self._held) - len(kept):
            self.dropped += lost
            log.warning("redis: skipping %d events engine %s has not stored (gone, stuck "
                        "or from before a reset)", lost, engine)  # fmt: skip
        self._held = kept
        self._note_head()

    def _note_head(self) -> None:
        """Time the first held event's wait from when it became first."""
        if self._held and self._held[0].id != self._head_id:
            self._head_id = self._held[0].id
            self._head_since = time.monotonic()
            self._blocked_since = None
        if not self._held:
            self._blocked_since = None

    def _note_blocked(self) -> None:
        """Once a round of entries: whether stored events now wait behind the first."""
        if self._blocked_since is None and any(held.stored for held in self._held):
            self._blocked_since = time.monotonic()

    def _release(self, bus: EventBus) -> None:
        while self._held and self._held[0].stored:
            held = self._held.popleft()
            if held.gap_before:
                self.gaps += 1
                log.warning("redis: events before %d were never read; restarting streams",
                            held.id)  # fmt: skip
                bus.restart_at(held.id)
            body = with_id(held.id, held.body)
            try:
                event = parse_event(body)
            except ValueError as exc:  # not an event: nobody could use it
                self.bad += 1
                log.error("redis: skipping unreadable event %d: %s", held.id, exc)
                continue
            if isinstance(event, UnknownEvent):
                self.unknown += 1
                if self.unknown == 1 or self.unknown % 1000 == 0:
                    log.warning("redis: event %d is of a type this engine does not know "
                                "(%r; %d so far): handed on as it came",
                                held.id, event.type, self.unknown)  # fmt: skip
            bus.deliver(event, body)
        self._note_head()
        self._note_blocked()

    async def _suspect(self) -> None:
        """Held up too long by one engine's events: if that engine is gone, say so in the
        stream (the marker then reaches every reader, this one included)."""
        now = time.monotonic()
        if not self._held or min(now - self._head_since, now - self._asked_at) < SUSPECT_AFTER:
            return  # not held up long, or asked a moment ago
        head = self._held[0]
        engine = head.engine
        upto = head.id  # the batch waited on: its ids follow on (one append)
        for held in itertools.islice(self._held, 1, None):
            if held.engine != engine or held.id != upto + 1:
                break
            upto = held.id
        self._asked_at = now
        # alive but not storing, for long while other engines' stored events wait behind
        # it, or with too much behind it: skipped anyway, by a marker every reader
        # applies at the same point (not by each reader's clock). Not when nothing
        # stored waits: every engine is held up alike (the database is away) and its
        # events go out live once it is back
        blocked = self._blocked_since
        stuck = len(self._held) > MAX_HELD or (blocked is not None and now - blocked >= STUCK_FOR)
        if stuck:
            log.error("redis: %d events wait behind engine %s's event %d for %.0f s; "
                      "having its batch skipped", len(self._held), engine, head.id,
                      now - self._head_since)  # fmt: skip
        await self._again_if_lost(
            lambda: self._dropped(
                keys=[self._counter, self._stream, self._alive_key(engine)],
                args=[self.maxlen, engine, upto, "1" if stuck else "0"],
            )
        )


def safe_url(url: str) -> str:
    """The URL without its password (in the user info or a ``password=`` query
    parameter, both of which redis-py reads), for logs."""
    from urllib.parse import parse_qsl, urlencode, urlsplit

    parts = urlsplit(url)
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        parts = parts._replace(netloc=user + netloc)
    if parts.query:
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(key.lower() == "password" for key, _ in query):
            hidden = [(k, "***" if k.lower() == "password" else v) for k, v in query]
            parts = parts._replace(query=urlencode(hidden, safe="*"))
    # unchanged as given if there was nothing to hide (geturl drops an empty "//")
    return parts.geturl() if parts != urlsplit(url) else url
