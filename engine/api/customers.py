"""Customers (engine/customers.py): who callers are, found by phone, email or app user
id, and the secrets the virtual agent verifies them with. Reading needs the read scope;
changes a supervisor, an admin or an admin key. Secrets go in and never come out: a
customer shows which ones are set (``factors``), not their values nor their hashes."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Query, Request
from starlette.exceptions import HTTPException

from engine.api.auth import Editor, Reader
from engine.api.schemas import CustomerOut, CustomerPut, HistoryItem, PathId
from engine.calls import CallManager
from engine.customers import Customer, CustomerIn, Customers, KeyTaken

router = APIRouter(prefix="/api/v1", tags=["customers"])


def _customers(request: Request) -> Customers:
    m: CallManager = request.app.state.calls
    return m.customers


def _out(customer: Customer) -> CustomerOut:
    return CustomerOut.model_validate(dataclasses.asdict(customer))


async def _found(request: Request, customer_id: str) -> Customer:
    customer = await _customers(request).get(customer_id)
    if customer is None:
        raise HTTPException(404, f"no customer {customer_id}")
    return customer


@router.get("/customers", response_model=list[CustomerOut])
async def find_customer(
    request: Request,
    _p: Reader,
    phone: str | None = Query(None, max_length=512),
    email: str | None = Query(None, max_length=512),
    app_user: str | None = Query(None, max_length=512),
) -> list[CustomerOut]:
    """The customer one key finds (give exactly one): a list of one, or empty. A phone
    number is matched as given once normalised (+1 (555) 010-2030 and tel:+15550102030
    are one number; 5550102030 is another)."""
    given = [k for k in (phone, email, app_user) if k is not None]
    if len(given) != 1:
        raise HTTPException(422, "give one of phone, email or app_user")
    customers = _customers(request)
    if phone is not None:
        found = await customers.by_phone(phone)
    elif email is not None:
        found = await customers.by_email(email)
    else:
        found = await customers.by_app_user(given[0])
    return [_out(found)] if found is not None else []


@router.get("/customers/{customer_id}", response_model=CustomerOut)
async def get_customer(customer_id: PathId, request: Request, _p: Reader) -> CustomerOut:
    return _out(await _found(request, customer_id))


@router.put("/customers/{customer_id}", response_model=CustomerOut)
async def put_customer(
    customer_id: PathId, body: CustomerPut, request: Request, by: Editor
) -> CustomerOut:
    """Create or replace a customer under your own id: name and keys as given (409 if
    a phone, email or app user id is another customer's); secrets as given, a secret
    left out keeps its value, one given as null is removed."""
    given = CustomerIn(
        name=body.name, phones=body.phones, emails=body.emails,
        app_user_ids=body.app_user_ids,
        secrets=body.secrets.given() if body.secrets is not None else {},
    )  # fmt: skip
    try:
        customer = await _customers(request).put(customer_id, given, by)
    except KeyTaken as exc:
        raise HTTPException(409, str(exc)) from None
    except ValueError as exc:  # the body's checks run first; this is the store's own
        raise HTTPException(422, str(exc)) from None
    return _out(customer)


@router.delete("/customers/{customer_id}", status_code=204)
async def delete_customer(customer_id: PathId, request: Request, _by: Editor) -> None:
    """Remove a customer and their keys; their calls are kept, still naming them."""
    if not await _customers(request).remove(customer_id):
        raise HTTPException(404, f"no customer {customer_id}")


@router.post("/customers/{customer_id}/unlock", status_code=204)
async def unlock_customer(customer_id: PathId, request: Request, _by: Editor) -> None:
    """End a lockout after too many wrong answers, and forget those answers."""
    if not await _customers(request).unlock(customer_id):
        raise HTTPException(404, f"no customer {customer_id}")


@router.get("/customers/{customer_id}/calls", response_model=list[HistoryItem])
async def customer_calls(
    customer_id: PathId,
    request: Request,
    _p: Reader,
    limit: int = Query(10, ge=1, le=100),
    before: str | None = Query(None, pattern=r"^[A-Za-z0-9_\-]{1,64}$", description="a call id"),
) -> list[HistoryItem]:
    """The customer's calls, newest first; ``before``: only those that began before
    that call (the next page)."""
    await _found(request, customer_id)
    rows = await _customers(request).calls(customer_id, limit=limit, before=before)
    return [HistoryItem.model_validate(r, from_attributes=True) for r in rows]
