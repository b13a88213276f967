"""Webhook deliveries: signed POSTs from the outbox, retried with backoff and jitter.

Each delivery is one event for one subscription. Its row id is the idempotency id the
receiver sees in ``Ccengine-Delivery`` on every try, across restarts too. The body is
the event as the streams send it. The signature header is

    Ccengine-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares in
constant time, and refuses timestamps older than a few minutes (replays).

Deliveries connect only to public addresses unless allowed (``egress.py``); a refused
target fails the delivery at once, with the reason in its log and no retry.

Several engines may share one outbox (PostgreSQL). A delivery is sent by the engine that
claimed it (``Store.claim_deliveries``): the claim holds for a lease longer than a try
can take, and ends with the try's outcome; an engine that dies mid-send leaves a claim
that runs out, and the delivery is claimed again (so a receiver may, rarely, see one
delivery id twice; the id is there to tell). Each receiver is served on its own: the
sender claims at most ``PER_WEBHOOK`` deliveries of each webhook at a time and sends to
each webhook in a task of its own, so one slow or dead receiver keeps only its own
deliveries waiting, never the others'.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Sequence
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy.exc import SQLAlchemyError

from engine.egress import TargetPolicy, TargetRefused, guarded_transport
from engine.events import as_utc
from engine.store.db import Store
from engine.store.models import DeliveryRow

log = logging.getLogger(__name__)
PER_WEBHOOK = 10  # deliveries of one webhook in flight at once, from one engine
MAX_WEBHOOKS = 32  # webhooks sent to at once, from one engine
IDLE_POLL = 30.0  # seconds between outbox checks when nothing wakes the sender
USER_AGENT = "ccengine-webhooks/1"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance: float = 300) -> bool:
    """The receiver's side of ``sign``: what the README's recipe does."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), f"t={timestamp},v1={parts.get('v1')}")


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds before try ``attempt + 1``: exponential, capped, half of it jittered so
    receivers that came back up are not hit by every sender at once."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def safe_target(url: str) -> str:
    """What logs may say about a URL: scheme, host and port; never a query or userinfo."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


class WebhookSender:
    def __init__(
        self,
        store: Store,
        *,
        engine_id: str,
        max_attempts: int,
        retry_base: float,
        retry_cap: float,
        timeout: float,
        policy: TargetPolicy,
    ) -> None:
        self.store = store
        self.engine_id = engine_id  # whose claims (engine/recovery.py names the engine)
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        # a claim outlives the tries it covers (sent at once, each within the timeout)
        # and their recording, by a margin for a slow database
        self.lease = 2 * timeout + 30
        # httpx's timeout is per phase (connect, each read...): a receiver trickling its
        # answer could hold a try past the lease, and another engine would send it again
        self.try_limit = 1.5 * timeout
        self._http = httpx.AsyncClient(
            # a connection for every try that may be in flight: with httpx's default 100,
            # ten slow receivers took them all and the others' tries timed out waiting
            transport=guarded_transport(policy, MAX_WEBHOOKS * PER_WEBHOOK),
            timeout=timeout, follow_redirects=False, headers={"User-Agent": USER_AGENT},
        )  # fmt: skip
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy: dict[str, asyncio.Task[None]] = {}  # webhook id: its sending task
        self._rng = random.Random()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._busy.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(SQLAlchemyError):  # or they wait out the lease
            await self.store.release_deliveries(self.engine_id)
        await self._http.aclose()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                if len(self._busy) >= MAX_WEBHOOKS:
                    upcoming = None  # sending to as many as we may: the first done wakes us
                else:
                    claimed = await self.store.claim_deliveries(
                        self.engine_id, self.store.now(), PER_WEBHOOK, self.lease,
                        webhooks=MAX_WEBHOOKS - len(self._busy), exclude=set(self._busy),
                    )  # fmt: skip
                    if claimed:
                        self._dispatch(claimed)
                        continue
                    # the webhooks being sent to wake the loop when done: not counted here
                    upcoming = await self.store.next_delivery_at(exclude=set(self._busy))
            except SQLAlchemyError as exc:
                log.error("webhooks: outbox unavailable: %s", exc)
                upcoming = None
            wait = IDLE_POLL
            if upcoming is not None:
                wait = min(wait, max(0.0, (as_utc(upcoming) - self.store.now()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _dispatch(self, claimed: Sequence[DeliveryRow]) -> None:
        """One task per webhook sends what was claimed of it."""
        by_hook: dict[str, list[DeliveryRow]] = {}
        for d in claimed:
            by_hook.setdefault(d.webhook_id, []).append(d)
        for hook, deliveries in by_hook.items():
            task = asyncio.create_task(self._send_all(deliveries), name=f"webhook-{hook}")
            self._busy[hook] = task
            task.add_done_callback(functools.partial(self._done, hook))

    def _done(self, hook: str, _task: asyncio.Task[None]) -> None:
        self._busy.pop(hook, None)
        self._wake.set()  # its next deliveries may be due

    async def _send_all(self, deliveries: Sequence[DeliveryRow]) -> None:
        # each to its end: the webhook counts as busy until none is in flight
        outcomes = await asyncio.gather(
            *(self._send(d) for d in deliveries), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, SQLAlchemyError):  # its claim runs out; tried again then
                log.error("webhooks: could not record a delivery: %s", outcome)
            elif isinstance(outcome, BaseException):
                raise outcome

    async def _send(self, d: DeliveryRow) -> None:
        target = await self.store.webhook_url(d.webhook_id)
        if target is None:
            await self.store.record_attempt(
                d.id, self.engine_id, status="failed", last_error="webhook deleted"
            )
            return
        url, secret = target
        body = d.body.encode()
        headers = {
            "Content-Type": "application/json",
            "Ccengine-Delivery": d.id,
            "Ccengine-Event": d.event_type,
            "Ccengine-Signature": sign(secret, int(time.time()), body),
        }
        code: int | None = None
        attempts = d.attempts + 1
        try:
            async with asyncio.timeout(self.try_limit):
                response = await self._http.post(url, content=body, headers=headers)
            code = response.status_code
            error = None if 200 <= code < 300 else f"HTTP {code}"
        except TimeoutError:
            error = f"no answer within {self.try_limit:.0f} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except TargetRefused as exc:  # trying again would not change the answer
            log.warning("webhook %s: %s refused: %s", d.webhook_id, safe_target(url), exc)
            await self.store.record_attempt(
                d.id,
                self.engine_id,
                status="failed",
                attempts=attempts,
                last_error=f"refused: {exc}"[:500],
            )
            return
        now = self.store.now()  # claims and retries go by the database's clock
        if error is None:
            await self.store.record_attempt(
                d.id, self.engine_id, status="delivered", attempts=attempts, last_status_code=code,
                last_error=None, delivered_at=now,
            )  # fmt: skip
            return
        done = attempts >= self.max_attempts
        delay = backoff(attempts, self.retry_base, self.retry_cap, self._rng)
        log.info(
            "webhook %s: delivery %s to %s failed (%s), try %d of %d%s",
            d.webhook_id, d.id, safe_target(url), error, attempts, self.max_attempts,
            "; giving up" if done else f"; again in {delay:.1f} s",
        )  # fmt: skip
        await self.store.record_attempt(
            d.id, self.engine_id, status="failed" if done else "pending", attempts=attempts,
            last_status_code=code, last_error=error[:500],
            next_attempt_at=now + timedelta(seconds=delay),
        )  # fmt: skip
