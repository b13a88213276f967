"""Customers through the REST API, in-process (tests/controlplane.py): an admin puts a
customer with secrets, readers find them by each key and see which secrets are set but
never a secret nor its hash, in any answer or log line; a taken key is 409, a malformed
secret 422 without its value; unlock, delete, and the customer's calls."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import httpx
import pytest

from engine.customers import VerifyOutcome
from engine.events import utcnow
from engine.store.models import CallRow
from tests.controlplane import ControlPlane

PIN, DOB, LAST4 = "80417", "1961-12-25", "5309"
BODY = {
    "name": "Ann Lee",
    "phones": ["+1 (555) 010-2030"],
    "emails": ["ann@example.com"],
    "app_user_ids": ["u-1001"],
    "secrets": {"pin": PIN, "dob": DOB, "last4": LAST4},
}


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    return body


def assert_no_secret(text: str) -> None:
    for secret in (PIN, DOB, "19611225", "25121961", LAST4, "$argon2"):
        assert secret not in text


@pytest.mark.parametrize("control_plane", ["sqlite", "postgresql"], indirect=True)
async def test_put_find_and_change_a_customer(
    control_plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="engine")
    cp = control_plane
    reader = await cp.new_key("crm", "read")
    answers: list[str] = []
    async with (
        cp.http() as admin,
        cp.anonymous(headers={"Authorization": f"Bearer {reader}"}) as crm,
    ):
        r = await admin.put("/api/v1/customers/C-1001", json=BODY)
        assert r.status_code == 200, r.text
        answers.append(r.text)
        made = r.json()
        assert made["phones"] == ["+15550102030"] and made["factors"] == ["pin", "dob", "last4"]
        assert made["locked_until"] is None and "secrets" not in made

        for query in ("phone=tel:%2B1-555-010-2030", "email=ANN@example.com", "app_user=u-1001"):
            r = await crm.get(f"/api/v1/customers?{query}")
            answers.append(r.text)
            assert [c["id"] for c in r.json()] == ["C-1001"], query
        assert (await crm.get("/api/v1/customers?phone=5550102030")).json() == []
        r = await crm.get("/api/v1/customers/C-1001")
        answers.append(r.text)
        assert r.json() == made
        assert "give one of" in problem(await crm.get("/api/v1/customers"), 422)["detail"]
        problem(await crm.get("/api/v1/customers?phone=1&email=a@b.c"), 422)
        problem(await crm.get("/api/v1/customers/C-9"), 404)
        problem(await crm.get("/api/v1/customers/bad%20id"), 422)

        # a read key does not change customers
        problem(await crm.put("/api/v1/customers/C-2", json={"name": "x"}), 403)
        problem(await crm.delete("/api/v1/customers/C-1001"), 403)
        problem(await crm.post("/api/v1/customers/C-1001/unlock"), 403)

        # another customer may not take Ann's number
        bob = {"name": "Bob", "phones": ["+15557770000", "sip:+15550102030@carrier"]}
        r = await admin.put("/api/v1/customers/C-2002", json=bob)
        assert "belongs to customer C-1001" in problem(r, 409)["detail"]
        problem(await admin.get("/api/v1/customers/C-2002"), 404)

        # malformed secrets and keys: 422 naming the field, never echoing the value
        for secrets, field in (({"pin": "12"}, "secrets.pin"), ({"dob": "1961-13-45"},
                               "secrets.dob"), ({"last4": PIN}, "secrets.last4"),
                               ({"password": "x"}, "secrets.password")):  # fmt: skip
            r = await admin.put("/api/v1/customers/C-1001", json={"name": "A", "secrets": secrets})
            body = problem(r, 422)
            assert [e["field"] for e in body["errors"]] == [field]
            answers.append(r.text)
        r = await admin.put("/api/v1/customers/C-1001", json={"name": "A", "phones": ["call me"]})
        assert problem(r, 422)["errors"][0]["field"] == "phones"

        # secrets left out stay, null removes one
        r = await admin.put(
            "/api/v1/customers/C-1001",
            json={"name": "Ann B. Lee", "phones": BODY["phones"], "secrets": {"last4": None}},
        )
        assert r.json()["factors"] == ["pin", "dob"] and r.json()["emails"] == []
        customers = cp.calls.customers
        assert (await customers.verify("C-1001", "pin", PIN)).outcome == VerifyOutcome.OK
        assert (await customers.verify("C-1001", "dob", "25121961")).outcome == VerifyOutcome.OK

        # locked by wrong answers, shown, and unlocked by an editor
        for _ in range(cp.settings.verify_max_failures):
            await customers.verify("C-1001", "pin", "00000")
        locked = (await crm.get("/api/v1/customers/C-1001")).json()["locked_until"]
        assert locked is not None
        assert (await admin.post("/api/v1/customers/C-1001/unlock")).status_code == 204
        assert (await crm.get("/api/v1/customers/C-1001")).json()["locked_until"] is None
        assert (await customers.verify("C-1001", "pin", PIN)).outcome == VerifyOutcome.OK
        problem(await admin.post("/api/v1/customers/C-9/unlock"), 404)

        # their calls, newest first, a page at a time
        start = utcnow()
        for n in range(3):
            await cp.store.add(
                CallRow(id=f"call-{n}", channel="sip", state="ended", language="en",
                        caller="+15550102030", created_at=start + timedelta(minutes=n),
                        customer_id="C-1001", verified_by="pin", summary=f"call {n}")
            )  # fmt: skip
        r = await crm.get("/api/v1/customers/C-1001/calls")
        assert [c["id"] for c in r.json()] == ["call-2", "call-1", "call-0"]
        r = await crm.get("/api/v1/customers/C-1001/calls?limit=1&before=call-2")
        assert [c["id"] for c in r.json()] == ["call-1"]
        problem(await crm.get("/api/v1/customers/C-9/calls"), 404)

        assert (await admin.delete("/api/v1/customers/C-1001")).status_code == 204
        problem(await admin.delete("/api/v1/customers/C-1001"), 404)
        assert (await crm.get("/api/v1/customers?phone=%2B15550102030")).json() == []
    for text in answers:
        assert_no_secret(text)
    assert "customer C-1001 saved by api:tests" in caplog.text
    assert_no_secret(caplog.text)
