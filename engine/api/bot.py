"""The virtual agent's flows: read (read scope) and change (supervisors, admins, admin
keys) as YAML, like the files of ``CCENGINE_BOT_FLOWS``. Changes are kept and win over
the files (engine/bot/flowset.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from engine.api.auth import Admin, Principal, Reader
from engine.api.schemas import FlowIn, FlowOut, FlowsOut, FlowSummary, PathFlow
from engine.bot.flows import MAX_FILE_BYTES, FlowText
from engine.bot.flowset import FlowSet

router = APIRouter(prefix="/api/v1/bot", tags=["virtual agent"])
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
TOO_LARGE = f"a flow is at most {MAX_FILE_BYTES // 1024} KiB of YAML"
# the YAML text, or JSON {"yaml": "..."}: the text as one JSON string, escapes and all
PUT_BODY = {
    "required": True,
    "content": {
        "application/yaml": {"schema": {"type": "string"}},
        "text/plain": {"schema": {"type": "string"}},
        "application/json": {"schema": FlowIn.model_json_schema()},
    },
}


def _flows(request: Request) -> FlowSet:
    flows: FlowSet = request.app.state.flows
    return flows


def _summary(f: FlowText) -> FlowSummary:
    flow = f.flow
    return FlowSummary(
        id=flow.id, numbers=flow.numbers, intents=[i.name for i in flow.intents], source=f.source
    )


def _out(f: FlowText) -> FlowOut:
    return FlowOut(**_summary(f).model_dump(), flow=f.flow, yaml=f.text)


@router.get("/flows", response_model=FlowsOut)
async def flows(request: Request, _p: Reader) -> FlowsOut:
    """The flows new calls are answered with, and whether the agent answers at all."""
    found = _flows(request)
    return FlowsOut(on=found.on, flows=[_summary(f) for f in found.items])


def _who(p: Principal) -> str:
    return p.identity.username if p.identity is not None else p.client


# Flows are admins' (people with the admin role, admin keys), like webhooks: their
# action URLs are sent callers' data, a verification's the PIN itself; a supervisor
# who could point one at their own server could collect every caller's PIN. Reading a
# flow whole (with its URLs, which may carry credentials) is theirs too; the list
# (ids, numbers, intents) is anyone's with read.


@router.get("/flows/{flow_id}", response_model=FlowOut)
async def flow(flow_id: PathFlow, request: Request, _p: Admin) -> FlowOut:
    found = _flows(request).get(flow_id)
    if found is None:
        raise HTTPException(404, f"no flow {flow_id}")
    return _out(found)


@router.put("/flows/{flow_id}", response_model=FlowOut, openapi_extra={"requestBody": PUT_BODY})
async def put_flow(flow_id: PathFlow, request: Request, p: Admin) -> FlowOut:
    """Add or replace a flow: its YAML as the body (``application/yaml`` or
    ``text/plain``), or JSON ``{"yaml": "..."}``. Its ``id``, if it gives one, must be
    the path's. A flow with a mistake is 422 with its ``line`` and ``reason``; one that
    cannot answer with the others (a number another answers, a second default) is 409.
    Calls that start from now on use it; live calls keep the flow they began with."""
    text = await _text(request)
    added = await _flows(request).put(text, flow_id, _who(p))
    await request.app.state.changes.changed("flows")
    return _out(added)


@router.delete("/flows/{flow_id}", status_code=204)
async def delete_flow(flow_id: PathFlow, request: Request, p: Admin) -> None:
    """Remove a flow, the file's too (kept as removed, across restarts)."""
    if not await _flows(request).remove(flow_id, _who(p)):
        raise HTTPException(404, f"no flow {flow_id}")
    await request.app.state.changes.changed("flows")


async def _text(request: Request) -> str:
    """The flow's YAML from the body, read no further than its bound."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    as_json = kind == "application/json"
    if kind and not as_json and kind not in YAML_TYPES:
        raise HTTPException(415, f"{kind}: send the flow as application/yaml, or JSON")
    # JSON spells a character in up to 6 bytes (\u0001): the text's own size is
    # checked once it is read
    limit = MAX_FILE_BYTES * (6 if as_json else 1)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, TOO_LARGE)
    if as_json:
        try:
            text = FlowIn.model_validate_json(body).yaml
        except ValidationError as exc:
            reason = "; ".join(str(e["msg"]) for e in exc.errors())
            raise HTTPException(422, f'a JSON body is {{"yaml": "..."}}: {reason}') from None
    else:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HTTPException(422, f"the flow is not UTF-8 text: {exc}") from None
    if len(text.encode()) > MAX_FILE_BYTES:  # no lone surrogate gets this far
        raise HTTPException(413, TOO_LARGE)
    return text
