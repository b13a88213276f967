"""Customers: who a caller is, and what proves it.

A customer is kept under the business's own id, with the keys that find them (phone
numbers, email addresses, the business app's user ids: each key belongs to one
customer at most) and the secrets that verify them ("pin", "dob", "last4"), kept as
argon2 hashes only. Nothing here hands a hash, nor a secret, back out.

Verifying: every wrong answer is counted in the database (several engines share the
count), and at ``max_failures`` the customer is locked for ``lockout``: no answer is
checked meanwhile, a right one neither. Once the lockout is over one more wrong answer
locks them again, until a right answer or an unlock resets the count. An attempt is
counted *before* its answer is checked, so answers given at once (many calls, or two
engines) cannot run more than ``max_failures`` checks between them. An unknown customer,
or a factor they have none of, is ``NO_FACTOR``: the caller must be told the same as for
a wrong answer (never whether an account exists), and it takes about as long (one
argon2 run against a dummy hash), but nothing is counted.

Phone numbers are matched as given, after normalize_phone: no country is guessed, so a
customer known as "+15550102030" is not found by a caller id "5550102030". Store the
form your carrier sends (or both).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Select, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from engine.config import Settings
from engine.dialpolicy import phone_number
from engine.events import as_utc
from engine.store.db import Store
from engine.store.models import CallRow, CustomerKeyRow, CustomerRow

log = logging.getLogger(__name__)

Factor = Literal["pin", "dob", "last4"]
FACTORS: tuple[Factor, ...] = get_args(Factor)
KeyKind = Literal["phone", "email", "app_user"]

MAX_INPUT = 512  # characters of a phone number, key or secret looked at; longer: refused
MAX_KEY = 320  # the longest email address (RFC 3696 errata) and app user id
MAX_KEYS = 20  # of each kind per customer
APP_PREFIX = "app-"

# argon2id at OWASP's minimum (19 MiB, 2 passes, 1 lane), not argon2-cffi's default
# (64 MiB, 3 passes): a check runs on every answer a caller gives, several at once on a
# busy node, and a stronger hash buys little here. PINs, birth dates and last four
# digits have a few thousand to a few million values, which no hash cost keeps from an
# offline search of a stolen database; the lockout is what protects them, and the hash
# keeps them from being read in clear (a dump, a backup, a support query).
_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


@functools.cache
def _dummy_hash() -> str:
    """Checked against when there is nothing to check, so that costs one argon2 run too.
    Made on first use, not at import (engine start and every ``ccengine`` command)."""
    return _hasher.hash(secrets.token_hex(16))


_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_DDMMYYYY = re.compile(r"([0-9]{2})([0-9]{2})([0-9]{4})")
_APP_ID = re.compile(r"[A-Za-z0-9_\-]{1,60}")


def normalize_phone(raw: str) -> str | None:
    """A phone number as matched: its digits with a leading + kept, from a number as
    written ("+1 (555) 010-2030"), a tel: URI, or a SIP URI or name-addr (its user part,
    "<sip:+15550102030@host;user=phone>"); None when that is not 6 to 15 digits (E.164's
    most). Numbers are matched as given: no country code is guessed or added."""
    text = raw.strip()
    if not text or len(text) > MAX_INPUT:
        return None
    if "<" in text:  # a name-addr: "Bob" <sip:...>
        inner = re.search(r"<([^<>]*)>", text)
        if inner is None:
            return None
        text = inner.group(1).strip()
    scheme, colon, rest = text.partition(":")
    if colon and scheme.lower() in ("sip", "sips"):
        text = rest.split("@", 1)[0] if "@" in rest else ""
    elif colon and scheme.lower() == "tel":
        text = rest
    elif colon:
        return None
    return phone_number(text.split(";", 1)[0])  # parameters go


def normalize_email(raw: str) -> str | None:
    text = raw.strip().lower()
    local, at, domain = text.partition("@")
    if not (at and local and "." in domain and len(text) <= MAX_KEY):
        return None
    if any(c.isspace() or c in "@<>" for c in local + domain):
        return None
    return text


def normalize_app_user(raw: str) -> str | None:
    text = raw.strip()
    if not text or len(text) > MAX_KEY or not text.isprintable():
        return None
    return text


def normalize_secret(factor: str, raw: str) -> str | None:
    """A secret as hashed and as compared: a PIN of 4 to 12 digits, the last 4 digits
    (of a card, an account), a date of birth as YYYYMMDD (given as ISO "1984-03-07" or
    as DDMMYYYY "07031984"); None when it is not one. Spaces are ignored."""
    if len(raw) > MAX_INPUT:
        return None
    text = "".join(raw.split())
    if factor == "pin":
        return text if re.fullmatch(r"[0-9]{4,12}", text) else None
    if factor == "last4":
        return text if re.fullmatch(r"[0-9]{4}", text) else None
    if factor == "dob":
        if iso := _ISO_DATE.fullmatch(text):
            y, m, d = iso.groups()
        elif dmy := _DDMMYYYY.fullmatch(text):
            d, m, y = dmy.groups()
        else:
            return None
        try:
            born = date(int(y), int(m), int(d))
        except ValueError:
            return None
        return born.strftime("%Y%m%d") if born.year >= 1900 else None
    return None


SECRET_FORMS = {
    "pin": "4 to 12 digits",
    "last4": "4 digits",
    "dob": "a date as YYYY-MM-DD or DDMMYYYY",
}


class KeyTaken(Exception):
    """A phone, email or app user id given for one customer belongs to another."""


@dataclass(frozen=True)
class CustomerIn:
    """A customer as put: keys as written (normalised here), secrets in clear. A secret
    not named keeps its hash; one named with None is removed."""

    name: str
    phones: Sequence[str] = ()
    emails: Sequence[str] = ()
    app_user_ids: Sequence[str] = ()
    secrets: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Customer:
    id: str
    name: str
    phones: tuple[str, ...]
    emails: tuple[str, ...]
    app_user_ids: tuple[str, ...]
    factors: tuple[str, ...]  # which secrets are set (never their hashes)
    locked_until: datetime | None
    created_at: datetime
    updated_at: datetime


class VerifyOutcome(StrEnum):
    OK = "ok"
    WRONG = "wrong"
    LOCKED = "locked"
    NO_FACTOR = "no_factor"  # unknown customer, or none of that secret: tell it as WRONG


@dataclass(frozen=True)
class VerifyResult:
    outcome: VerifyOutcome
    # wrong answers left before the lockout (NO_FACTOR: as after a first wrong answer,
    # so that it reads like one; LOCKED: 0)
    attempts_left: int
    locked_until: datetime | None = None


def _keys(
    kind: KeyKind, given: Sequence[str], normalize: Callable[[str], str | None]
) -> list[tuple[KeyKind, str]]:
    if len(given) > MAX_KEYS:
        raise ValueError(f"at most {MAX_KEYS} {kind} keys per customer")
    out: list[tuple[KeyKind, str]] = []
    for raw in given:
        value = normalize(raw)
        if value is None:
            raise ValueError(f"not a usable {kind.replace('_', ' ')}: {raw[:80]!r}")
        if (kind, value) not in out:
            out.append((kind, value))
    return out


def _check_argon2(hashed: str, value: str) -> bool:
    try:
        return _hasher.verify(hashed, value)
    except (VerificationError, InvalidHashError):
        return False


def _owner(kind: KeyKind, value: str) -> Select[Any]:
    """Whose key it is."""
    key = CustomerKeyRow.__table__.c
    return select(CustomerKeyRow.customer_id).where(key.kind == kind, key.value == value)


def app_customer_id(uid: str, hashed: bool = False) -> str:
    """The id of a customer made for an app user: "app-<uid>" when the uid fits an id
    (letters, digits, _ and -, up to 60), else (or ``hashed``) "app-" and 32 hex digits
    of its SHA-256."""
    if _APP_ID.fullmatch(uid) and not hashed:
        return APP_PREFIX + uid
    return APP_PREFIX + hashlib.sha256(uid.encode()).hexdigest()[:32]


class Customers:
    """The customer records in the store; verification with a lockout counted there."""

    def __init__(
        self, store: Store, *, max_failures: int = 5, lockout: timedelta = timedelta(minutes=15)
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        self.store = store
        self.max_failures = max_failures
        self.lockout = lockout

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> Customers:
        """With CCENGINE_VERIFY_MAX_FAILURES and CCENGINE_VERIFY_LOCKOUT_MINUTES."""
        lockout = timedelta(minutes=settings.verify_lockout_minutes)
        return cls(store, max_failures=settings.verify_max_failures, lockout=lockout)

    # -- reading --------------------------------------------------------------------

    async def get(self, customer_id: str) -> Customer | None:
        async with self.store.session() as s:
            row = await s.get(CustomerRow, customer_id)
            if row is None:
                return None
            keys = await s.scalars(
                select(CustomerKeyRow).where(CustomerKeyRow.customer_id == customer_id)
            )
            return self._customer(row, keys.all())

    async def _by_key(self, kind: KeyKind, value: str | None) -> Customer | None:
        if value is None:
            return None
        async with self.store.session() as s:
            owner = await s.scalar(_owner(kind, value))
        return await self.get(owner) if owner is not None else None

    async def by_phone(self, raw: str) -> Customer | None:
        """The customer with this number, as given or with its leading + added or
        taken off: carriers send E.164 caller IDs with and without it, and the digits
        are the same number either way (a national form is not: no country is guessed)."""
        number = normalize_phone(raw)
        if number is None:
            return None
        found = await self._by_key("phone", number)
        if found is None:
            other = number[1:] if number.startswith("+") else f"+{number}"
            found = await self._by_key("phone", other)
        return found

    async def by_email(self, raw: str) -> Customer | None:
        return await self._by_key("email", normalize_email(raw))

    async def by_app_user(self, uid: str) -> Customer | None:
        return await self._by_key("app_user", normalize_app_user(uid))

    async def calls(
        self, customer_id: str, limit: int = 10, before: str | None = None
    ) -> Sequence[CallRow]:
        """The customer's calls, newest first; ``before``: a call id, only calls that
        began before it (it excluded: the call in progress, or the last of a page)."""
        q = select(CallRow).where(CallRow.customer_id == customer_id)
        async with self.store.session() as s:
            if before is not None:
                q = q.where(CallRow.id != before)
                start = await s.scalar(select(CallRow.created_at).where(CallRow.id == before))
                if start is not None:
                    q = q.where(CallRow.created_at <= start)
            q = q.order_by(CallRow.created_at.desc(), CallRow.id.desc()).limit(limit)
            return (await s.scalars(q)).all()

    # -- writing --------------------------------------------------------------------

    async def put(self, customer_id: str, given: CustomerIn, by: str) -> Customer:
        """Create or replace a customer: name and keys as given; secrets normalised and
        hashed (ValueError naming what is wrong). KeyTaken when a key is another
        customer's."""
        keys = [
            *_keys("phone", given.phones, normalize_phone),
            *_keys("email", given.emails, normalize_email),
            *_keys("app_user", given.app_user_ids, normalize_app_user),
        ]
        changes: dict[str, str | None] = {}
        for factor, raw in given.secrets.items():
            if factor not in FACTORS:
                raise ValueError(f"unknown secret {factor!r}: one of {', '.join(FACTORS)}")
            if raw is None:
                changes[factor] = None
                continue
            value = normalize_secret(factor, raw)
            if value is None:
                raise ValueError(f"secrets.{factor} must be {SECRET_FORMS[factor]}")
            changes[factor] = await asyncio.to_thread(_hasher.hash, value)
        now = self.store.now()
        try:
            async with self.store.writing() as s:
                await self._check_keys(s, customer_id, keys)
                row = await s.get(CustomerRow, customer_id)
                if row is None:
                    row = CustomerRow(id=customer_id, secrets={}, failed_attempts=0,
                                      created_at=now)  # fmt: skip
                    s.add(row)
                row.name, row.updated_at = given.name, now
                kept = {f: h for f, h in (row.secrets or {}).items() if f not in changes}
                row.secrets = {**kept, **{f: h for f, h in changes.items() if h is not None}}
                await s.execute(
                    delete(CustomerKeyRow).where(CustomerKeyRow.customer_id == customer_id)
                )
                await s.flush()
                s.add_all(CustomerKeyRow(kind=k, value=v, customer_id=customer_id) for k, v in keys)
        except IntegrityError:  # another writer took one of the keys meanwhile
            raise KeyTaken("a phone, email or app user id is another customer's") from None
        log.info("customer %s saved by %s (secrets changed: %s)", customer_id, by,
                 ", ".join(sorted(changes)) or "none")  # fmt: skip
        found = await self.get(customer_id)
        assert found is not None
        return found

    @staticmethod
    async def _check_keys(
        s: AsyncSession, customer_id: str, keys: list[tuple[KeyKind, str]]
    ) -> None:
        for kind, value in keys:
            owner = await s.scalar(_owner(kind, value))
            if owner is not None and owner != customer_id:
                raise KeyTaken(f"{kind.replace('_', ' ')} {value} belongs to customer {owner}")

    async def remove(self, customer_id: str) -> bool:
        """True if there was such a customer (their keys go with them; their calls stay,
        still naming them)."""
        async with self.store.writing() as s:
            await s.execute(delete(CustomerKeyRow).where(CustomerKeyRow.customer_id == customer_id))
            result = await s.execute(delete(CustomerRow).where(CustomerRow.id == customer_id))
            return bool(getattr(result, "rowcount", 0))

    async def unlock(self, customer_id: str) -> bool:
        """End a lockout and forget the wrong answers; True if there was such a customer."""
        async with self.store.writing() as s:
            result = await s.execute(
                update(CustomerRow)
                .where(CustomerRow.id == customer_id)
                .values(failed_attempts=0, locked_until=None)
            )
            return bool(getattr(result, "rowcount", 0))

    async def ensure_app_user(self, uid: str, name: str | None) -> Customer:
        """The customer an app token's user is (the token vouches for them): found by
        their app user id, else made, with the id app_customer_id(uid) ("app-<uid>"),
        ``name`` (else the uid), no secrets and that one key. A record made here can be
        put over later like any other (the business's own id is not known here)."""
        value = normalize_app_user(uid)
        if value is None:
            raise ValueError("not a usable app user id")
        found = await self.by_app_user(value)
        if found is not None:
            return found
        customer_id, now = app_customer_id(value), self.store.now()
        try:
            async with self.store.writing() as s:
                if await s.get(CustomerRow, customer_id) is not None:
                    # a record with that id that is not this user's: the hashed id
                    customer_id = app_customer_id(value, hashed=True)
                s.add(CustomerRow(id=customer_id, name=(name or value)[:200], secrets={},
                                  failed_attempts=0, created_at=now, updated_at=now))  # fmt: skip
                await s.flush()
                s.add(CustomerKeyRow(kind="app_user", value=value, customer_id=customer_id))
        except IntegrityError:  # made meanwhile (another call, another engine)
            pass
        made = await self.by_app_user(value)
        if made is None:
            raise KeyTaken(f"no customer could be made for app user {value}")
        return made

    # -- verifying ------------------------------------------------------------------

    async def verify(self, customer_id: str | None, factor: str, value: str) -> VerifyResult:
        """Check one answer; see the module's docstring for the counting and lockout.
        ``value`` as the caller gave it (digits; a date as ISO or DDMMYYYY)."""
        row = None
        if customer_id is not None:
            async with self.store.session() as s:
                row = await s.get(CustomerRow, customer_id)
        hashed = (row.secrets or {}).get(factor) if row is not None else None
        normal = normalize_secret(factor, value)
        if row is None or hashed is None:
            await asyncio.to_thread(_check_argon2, _dummy_hash(), normal or value[:MAX_INPUT])
            return VerifyResult(VerifyOutcome.NO_FACTOR, self.max_failures - 1)
        assert customer_id is not None
        now = self.store.now()
        if row.locked_until is not None and as_utc(row.locked_until) > now:
            return VerifyResult(VerifyOutcome.LOCKED, 0, as_utc(row.locked_until))
        attempt = await self._count_attempt(customer_id, now)
        if attempt is None:  # locked meanwhile
            return await self._locked(customer_id)
        if attempt > self.max_failures:  # more answers at once than are allowed: unchecked
            return await self._lock(customer_id)
        right = normal is not None and await asyncio.to_thread(_check_argon2, hashed, normal)
        if right:
            await self.unlock(customer_id)
            return VerifyResult(VerifyOutcome.OK, self.max_failures)
        if attempt >= self.max_failures:
            return await self._lock(customer_id)
        return VerifyResult(VerifyOutcome.WRONG, self.max_failures - attempt)

    async def _count_attempt(self, customer_id: str, now: datetime) -> int | None:
        """Count an attempt as a failure before it is checked (a right answer resets the
        count): one UPDATE, which the database runs atomically, so attempts made at once
        on two engines are both counted. None: locked (or gone)."""
        c = CustomerRow.__table__.c
        unlocked = (c.locked_until.is_(None)) | (c.locked_until <= now)
        async with self.store.writing() as s:
            count = await s.scalar(
                update(CustomerRow)
                .where(c.id == customer_id, unlocked)
                .values(failed_attempts=c.failed_attempts + 1)
                .returning(c.failed_attempts)
            )
        return None if count is None else int(count)

    async def _lock(self, customer_id: str) -> VerifyResult:
        """Lock for ``lockout``; the count stays one short of the limit, so the first
        answer after the lockout that is wrong locks again."""
        until = self.store.now() + self.lockout
        async with self.store.writing() as s:
            await s.execute(
                update(CustomerRow)
                .where(CustomerRow.id == customer_id)
                .values(locked_until=until, failed_attempts=self.max_failures - 1)
            )
        log.warning("customer %s locked until %s: %d wrong answers", customer_id,
                    until.isoformat(timespec="seconds"), self.max_failures)  # fmt: skip
        return VerifyResult(VerifyOutcome.LOCKED, 0, until)

    async def _locked(self, customer_id: str) -> VerifyResult:
        async with self.store.session() as s:
            until = await s.scalar(
                select(CustomerRow.locked_until).where(CustomerRow.id == customer_id)
            )
        return VerifyResult(VerifyOutcome.LOCKED, 0, as_utc(until) if until else None)

    # -- shaping --------------------------------------------------------------------

    def _customer(self, row: CustomerRow, keys: Sequence[CustomerKeyRow]) -> Customer:
        def of(kind: str) -> tuple[str, ...]:
            return tuple(sorted(k.value for k in keys if k.kind == kind))

        locked = as_utc(row.locked_until) if row.locked_until is not None else None
        if locked is not None and locked <= self.store.now():
            locked = None  # over
        return Customer(
            id=row.id, name=row.name, phones=of("phone"), emails=of("email"),
            app_user_ids=of("app_user"),
            factors=tuple(f for f in FACTORS if f in (row.secrets or {})),
            locked_until=locked, created_at=as_utc(row.created_at),
            updated_at=as_utc(row.updated_at),
        )  # fmt: skip
