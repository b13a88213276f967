"""This node: readiness for load balancers, its drain (engine/drain.py) for admins.

``/readyz`` is what Kubernetes' readinessProbe (and any load balancer) asks: 200 while
the node takes new calls, 503 while it drains. Unauthenticated, not rate-limited and
cheap (no storage): probes come every few seconds. Liveness stays ``/healthz``, 200
while draining: a draining node is healthy, and restarting it would drop its calls.
"""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from engine.api.auth import Admin, Reader
from engine.api.problems import problem
from engine.api.schemas import NodeOut
from engine.drain import RETRY_AFTER, NodeDrain

router = APIRouter(tags=["system"])


def node_drain(request: Request) -> NodeDrain:
    drain: NodeDrain = request.app.state.drain
    return drain


def _out(drain: NodeDrain) -> NodeOut:
    return NodeOut(**dataclasses.asdict(drain.status()))


@router.get("/readyz", responses={503: {"description": "draining: send no new calls"}})
async def readyz(request: Request) -> JSONResponse:
    """200 while this node takes new calls; 503 while it drains."""
    drain = node_drain(request)
    if drain.draining:
        return problem(
            503,
            "Node draining",
            f"no new calls; {drain.status().calls_left} calls left",
            headers={"Retry-After": str(RETRY_AFTER)},
            draining=True,
        )
    return JSONResponse({"status": "ready", "draining": False})


@router.get("/api/v1/node", response_model=NodeOut)
async def node(request: Request, _p: Reader) -> NodeOut:
    """Whether this node drains, since when and by whom, and how many calls it has left."""
    return _out(node_drain(request))


@router.post("/api/v1/node/drain", status_code=202, response_model=NodeOut)
async def drain(request: Request, p: Admin) -> NodeOut:
    """Drain this node (admins): new calls get 503 with Retry-After (HTTP and SIP), SIP
    OPTIONS and ``/readyz`` answer 503, calls in progress go on, and the process exits
    once they have ended, or after CCENGINE_DRAIN_TIMEOUT seconds, ending the calls left
    (reason ``node_drained``). Asking again changes nothing. There is no undrain: the
    node is on its way out (as on SIGTERM)."""
    d = node_drain(request)
    who = p.identity.username if p.identity is not None else f"api:{p.name}"
    d.begin(f"{who} (POST /api/v1/node/drain)")
    return _out(d)
