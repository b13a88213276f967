"""Customer records (engine/customers.py) on a real store: keys that find a customer,
secrets kept as hashes only, and verification with a lockout counted in the database,
also when answers arrive at once on two engines."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine import customers as customers_module
from engine.customers import (
    CustomerIn,
    Customers,
    KeyTaken,
    VerifyOutcome,
    app_customer_id,
    normalize_phone,
    normalize_secret,
)
from engine.store.db import Store
from engine.store.models import CallRow

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[Store]:
    s = Store(f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}", wall=clock)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


ANN = CustomerIn(
    name="Ann Lee",
    phones=["+1 (555) 010-2030", "tel:+1-555-010-2030", "5550102030"],
    emails=[" Ann.Lee@Example.com "],
    app_user_ids=["u-1001"],
    secrets={"pin": "4321", "dob": "07031984", "last4": "9876"},
)


@pytest.mark.parametrize(
    ("raw", "number"),
    [
        ("+1 (555) 010-2030", "+15550102030"),
        ("sip:+15550102030@host;user=phone", "+15550102030"),
        ("tel:+1-555-010-2030", "+15550102030"),
        ("<sip:5550102030@x>", "5550102030"),
        ('"Ann" <sips:+44.20.7946.0958@carrier.example>;tag=9f', "+442079460958"),
        ("tel:5550102030;phone-context=example.com", "5550102030"),
        ("SIP:1000@pbx", None),  # 4 digits: an extension, not a number
        ("+1234567890123456", None),  # 16 digits: longer than E.164 allows
        ("sip:alice@example.com", None),
        ("mailto:+15550102030", None),
        ("+1 555 CALL NOW", None),
        ("５５５０１０２０３０", None),  # fullwidth digits are not dialled digits
        ("", None),
        ("<sip:+15550102030@x", None),
        ("+" + "1" * 600, None),
    ],
)
def test_normalize_phone(raw: str, number: str | None) -> None:
    assert normalize_phone(raw) == number


@pytest.mark.parametrize(
    ("factor", "raw", "value"),
    [
        ("dob", "1984-03-07", "19840307"),
        ("dob", "07031984", "19840307"),
        ("dob", " 07 03 1984 ", "19840307"),
        ("dob", "19840307", None),  # not DDMMYYYY (day 19, month 84)
        ("dob", "31022000", None),  # no 31 February
        ("dob", "01011899", None),
        ("dob", "7 March 1984", None),
        ("pin", "0042", "0042"),
        ("pin", "123", None),
        ("pin", "1" * 13, None),
        ("pin", "12a4", None),
        ("last4", "9876", "9876"),
        ("last4", "98765", None),
        ("password", "whatever", None),
    ],
)
def test_normalize_secret(factor: str, raw: str, value: str | None) -> None:
    assert normalize_secret(factor, raw) == value


async def test_put_get_and_find_by_each_key(store: Store) -> None:
    customers = Customers(store)
    made = await customers.put("C-1001", ANN, by="sue")
    assert (made.id, made.name) == ("C-1001", "Ann Lee")
    assert made.phones == ("+15550102030", "5550102030")  # two forms: matched as given
    assert made.emails == ("ann.lee@example.com",)
    assert made.app_user_ids == ("u-1001",)
    assert made.factors == ("pin", "dob", "last4")
    assert made.locked_until is None and made.created_at == made.updated_at == T0
    assert await customers.get("C-1001") == made
    for found in (
        await customers.by_phone("sip:+15550102030@carrier;user=phone"),
        await customers.by_phone("<tel:555-010-2030>"),
        await customers.by_email("ANN.LEE@example.com"),
        await customers.by_app_user("u-1001"),
    ):
        assert found is not None and found.id == "C-1001"
    assert await customers.by_phone("+15550109999") is None
    assert await customers.by_phone("not a number") is None
    # a caller ID in E.164 without its + is the same number; a national form is not
    await customers.put("C-2", CustomerIn(name="Bo", phones=("+442071234567",)), by="sue")
    found = await customers.by_phone("sip:442071234567@carrier")
    assert found is not None and found.id == "C-2"
    assert await customers.by_phone("02071234567") is None
    assert await customers.by_email("bob@example.com") is None
    assert await customers.get("C-9") is None


async def test_secrets_are_kept_as_argon2_hashes_only(store: Store, tmp_path: Path) -> None:
    """The raw row holds no secret in clear, in any form it was given or normalised to."""
    customers = Customers(store)
    await customers.put("C-1001", ANN, by="sue")
    with sqlite3.connect(tmp_path / "engine.db") as db:
        (raw,) = db.execute("SELECT secrets FROM customers WHERE id = 'C-1001'").fetchone()
    for clear in ("4321", "07031984", "19840307", "1984-03-07", "9876"):
        assert clear not in raw
    assert raw.count("$argon2id$v=19$m=19456,t=2,p=1$") == 3


async def test_a_secret_left_out_stays_and_one_given_as_null_goes(store: Store) -> None:
    customers = Customers(store)
    await customers.put("C-1001", ANN, by="sue")
    changed = await customers.put(
        "C-1001", CustomerIn(name="Ann B. Lee", phones=["+15550102030"],
                             secrets={"pin": None, "last4": "1111"}), by="sue",
    )  # fmt: skip
    assert changed.factors == ("dob", "last4")
    assert changed.phones == ("+15550102030",) and changed.emails == ()
    assert (await customers.verify("C-1001", "dob", "1984-03-07")).outcome == VerifyOutcome.OK
    assert (await customers.verify("C-1001", "last4", "1111")).outcome == VerifyOutcome.OK
    assert (await customers.verify("C-1001", "pin", "4321")).outcome == VerifyOutcome.NO_FACTOR
    with pytest.raises(ValueError, match="secrets.pin must be 4 to 12 digits"):
        await customers.put("C-1001", CustomerIn(name="x", secrets={"pin": "12"}), by="sue")
    with pytest.raises(ValueError, match="unknown secret 'password'"):
        await customers.put("C-1001", CustomerIn(name="x", secrets={"password": "1"}), by="s")
    with pytest.raises(ValueError, match="not a usable phone"):
        await customers.put("C-1001", CustomerIn(name="x", phones=["call me"]), by="sue")


async def test_a_key_of_another_customer_is_refused(store: Store) -> None:
    customers = Customers(store)
    await customers.put("C-1001", ANN, by="sue")
    bob = CustomerIn(name="Bob", phones=["+1 555 777 0000", "+1 555 010 2030"])
    with pytest.raises(KeyTaken, match=r"phone \+15550102030 belongs to customer C-1001"):
        await customers.put("C-2002", bob, by="sue")
    assert await customers.get("C-2002") is None  # nothing of the refused put is kept
    assert (await customers.by_phone("+15550102030")).id == "C-1001"  # type: ignore[union-attr]
    with pytest.raises(KeyTaken, match="app user u-1001"):
        await customers.put("C-2002", CustomerIn(name="Bob", app_user_ids=["u-1001"]), by="s")
    # once Ann lets the number go, Bob may have it
    await customers.put("C-1001", CustomerIn(name="Ann Lee"), by="sue")
    assert (await customers.put("C-2002", bob, by="sue")).phones == (
        "+15550102030", "+15557770000",
    )  # fmt: skip


async def test_verify_ok_wrong_and_no_factor(store: Store, tmp_path: Path) -> None:
    customers = Customers(store, max_failures=3)
    await customers.put("C-1001", ANN, by="sue")
    await customers.put("C-2002", CustomerIn(name="Bob"), by="sue")  # no secrets
    ok = await customers.verify("C-1001", "pin", "4321")
    assert (ok.outcome, ok.attempts_left, ok.locked_until) == (VerifyOutcome.OK, 3, None)
    assert (await customers.verify("C-1001", "dob", "1984-03-07")).outcome == VerifyOutcome.OK
    assert (await customers.verify("C-1001", "last4", "9876")).outcome == VerifyOutcome.OK
    wrong = await customers.verify("C-1001", "pin", "1234")
    assert (wrong.outcome, wrong.attempts_left) == (VerifyOutcome.WRONG, 2)
    garbled = await customers.verify("C-1001", "pin", "12")  # not even a PIN: still counted
    assert (garbled.outcome, garbled.attempts_left) == (VerifyOutcome.WRONG, 1)
    # nobody, no such secret, no such factor: told apart from WRONG only here, not counted
    for who, factor in (("C-9", "pin"), (None, "pin"), ("C-2002", "pin"), ("C-1001", "iban")):
        result = await customers.verify(who, factor, "4321")
        assert (result.outcome, result.attempts_left) == (VerifyOutcome.NO_FACTOR, 2)
    assert _failed_attempts(tmp_path, "C-2002") == 0
    assert _failed_attempts(tmp_path, "C-1001") == 2
    # a right answer forgets the wrong ones
    assert (await customers.verify("C-1001", "pin", " 4321 ")).outcome == VerifyOutcome.OK
    assert _failed_attempts(tmp_path, "C-1001") == 0


def _failed_attempts(tmp_path: Path, customer_id: str) -> int:
    with sqlite3.connect(tmp_path / "engine.db") as db:
        row = db.execute(
            "SELECT failed_attempts FROM customers WHERE id = ?", (customer_id,)
        ).fetchone()
    return int(row[0])


async def test_lockout_after_n_wrong_answers_then_one_try_per_lockout(
    store: Store, clock: Clock, tmp_path: Path
) -> None:
    """At the limit the customer locks: a right answer is not even checked until the
    lockout is over. After it, one more wrong answer locks again (a guesser gets one
    try per lockout, not a new allowance); a right one, or an unlock, starts over."""
    customers = Customers(store, max_failures=3, lockout=timedelta(minutes=15))
    await customers.put("C-1001", ANN, by="sue")
    outcomes = [(await customers.verify("C-1001", "pin", "0000")).outcome for _ in range(3)]
    assert outcomes == [VerifyOutcome.WRONG, VerifyOutcome.WRONG, VerifyOutcome.LOCKED]
    until = T0 + timedelta(minutes=15)
    assert (await customers.get("C-1001")).locked_until == until  # type: ignore[union-attr]
    locked = await customers.verify("C-1001", "pin", "4321")
    assert (locked.outcome, locked.attempts_left, locked.locked_until) == (
        VerifyOutcome.LOCKED, 0, until,
    )  # fmt: skip
    clock.now += 15 * 60 + 1
    assert (await customers.get("C-1001")).locked_until is None  # type: ignore[union-attr]
    relocked = await customers.verify("C-1001", "pin", "0000")
    assert relocked.outcome == VerifyOutcome.LOCKED
    assert relocked.locked_until == until + timedelta(seconds=15 * 60 + 1)
    assert await customers.unlock("C-1001") and not await customers.unlock("C-9")
    assert _failed_attempts(tmp_path, "C-1001") == 0
    assert (await customers.verify("C-1001", "pin", "4321")).outcome == VerifyOutcome.OK
    # after a lockout has run out, a right answer resets the count
    for _ in range(3):
        await customers.verify("C-1001", "pin", "0000")
    clock.now += 16 * 60
    assert (await customers.verify("C-1001", "pin", "4321")).outcome == VerifyOutcome.OK
    assert (await customers.verify("C-1001", "pin", "0000")).attempts_left == 2


async def test_wrong_answers_at_once_on_two_engines_are_all_counted(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two engines (two stores on one database) take wrong answers at once: none is
    lost from the count (a read-then-write would lose some), and no more answers are
    checked than the limit allows however many arrive together."""
    first, second = Store(db_url), Store(db_url)
    await first.open()
    await second.open()
    checked = 0
    real = customers_module._check_argon2

    def counting(hashed: str, value: str) -> bool:
        nonlocal checked
        checked += 1
        return real(hashed, value)

    monkeypatch.setattr(customers_module, "_check_argon2", counting)
    try:
        a, b = Customers(first, max_failures=10), Customers(second, max_failures=10)
        await a.put("C-1001", ANN, by="sue")
        results = await asyncio.gather(
            *(c.verify("C-1001", "pin", "0000") for c in (a, b, a, b, a, b))
        )
        assert {r.outcome for r in results} == {VerifyOutcome.WRONG}
        assert sorted(r.attempts_left for r in results) == [4, 5, 6, 7, 8, 9]
        assert (await a.verify("C-1001", "pin", "0000")).attempts_left == 3
        # 12 more at once with 3 left: 3 are checked, all end locked
        checked = 0
        results = await asyncio.gather(*(c.verify("C-1001", "pin", "0000") for c in (a, b) * 6))
        assert checked == 3
        assert [r.outcome for r in results].count(VerifyOutcome.LOCKED) >= 10
        assert all(r.outcome in (VerifyOutcome.WRONG, VerifyOutcome.LOCKED) for r in results)
        assert (await b.verify("C-1001", "pin", "4321")).outcome == VerifyOutcome.LOCKED
    finally:
        await first.close()
        await second.close()


async def test_ensure_app_user_makes_the_record_once(store: Store) -> None:
    customers = Customers(store)
    made = await customers.ensure_app_user("u-77", "Zed")
    assert (made.id, made.name, made.app_user_ids, made.factors) == ("app-u-77", "Zed",
                                                                      ("u-77",), ())  # fmt: skip
    again = await asyncio.gather(*(customers.ensure_app_user("u-77", None) for _ in range(3)))
    assert {c.id for c in again} == {"app-u-77"}
    # a user id that is no path id gets a hashed one; an existing customer is found
    odd = await customers.ensure_app_user("zed@example.com", None)
    assert odd.id == app_customer_id("zed@example.com") and len(odd.id) == 36
    assert odd.name == "zed@example.com"
    await customers.put("C-1001", ANN, by="sue")
    assert (await customers.ensure_app_user("u-1001", "Other")).id == "C-1001"
    # someone's record already holds the id "app-u-88" without that user: a hashed id
    await customers.put("app-u-88", CustomerIn(name="Taken"), by="sue")
    assert (await customers.ensure_app_user("u-88", None)).id == app_customer_id("u-88", True)


async def test_calls_newest_first_and_removal_keeps_them(store: Store) -> None:
    customers = Customers(store)
    await customers.put("C-1001", ANN, by="sue")
    for n in range(4):
        await store.add(
            CallRow(id=f"call-{n}", channel="sip", state="ended", language="en",
                    created_at=T0 + timedelta(minutes=n),
                    customer_id="C-1001" if n != 2 else "C-2002", verified_by="pin")
        )  # fmt: skip
    assert [c.id for c in await customers.calls("C-1001")] == ["call-3", "call-1", "call-0"]
    assert [c.id for c in await customers.calls("C-1001", limit=1)] == ["call-3"]
    assert [c.id for c in await customers.calls("C-1001", before="call-3")] == [
        "call-1", "call-0",
    ]  # fmt: skip
    assert [c.id for c in await customers.calls("C-1001", before="call-1")] == ["call-0"]
    assert await customers.remove("C-1001") and not await customers.remove("C-1001")
    assert await customers.by_phone("+15550102030") is None
    assert len(await customers.calls("C-1001")) == 3
