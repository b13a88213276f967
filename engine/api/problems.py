"""Errors in one JSON shape: RFC 9457 problem details, plus a body-size guard."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.acd import AcdError, WrapUpOwed
from engine.bot.flows import FlowConflict, FlowError
from engine.callstate import (
    STORAGE_RETRY_AFTER,
    Forbidden,
    NotAllowed,
    Overloaded,
    Throttled,
    UnknownCall,
)
from engine.drain import Draining
from engine.routinglog import RoutingUnavailable
from media.sdp import SdpError

PROBLEM = "application/problem+json"
log = logging.getLogger(__name__)


def problem(
    status: int, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large"}
        return problem(
            exc.status_code,
            titles.get(exc.status_code, "Error"),
            str(exc.detail),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors)
        return problem(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(SdpError)
    async def _sdp(_req: Request, exc: SdpError) -> JSONResponse:
        return problem(400, "Unusable SDP offer", str(exc))

    @app.exception_handler(Overloaded)
    async def _overloaded(_req: Request, exc: Overloaded) -> JSONResponse:
        return problem(
            503,
            "Engine busy",
            str(exc),
            headers={"Retry-After": str(exc.retry_after)},
            retry_after=exc.retry_after,
        )

    @app.exception_handler(Draining)  # before Overloaded's: the more specific class
    async def _draining(_req: Request, exc: Draining) -> JSONResponse:
        return problem(
            503,
            "Node draining",
            str(exc),
            headers={"Retry-After": str(exc.retry_after)},
            retry_after=exc.retry_after,
            draining=True,
        )

    @app.exception_handler(Throttled)
    async def _throttled(_req: Request, exc: Throttled) -> JSONResponse:
        return problem(
            429,
            "Too Many Requests",
            str(exc),
            headers={"Retry-After": str(exc.retry_after)},
            retry_after=exc.retry_after,
        )

    @app.exception_handler(SQLAlchemyError)
    async def _storage(_req: Request, exc: SQLAlchemyError) -> JSONResponse:
        log.error("storage error: %s", exc)
        return problem(
            503,
            "Storage unavailable",
            "the call store did not answer; try again",
            headers={"Retry-After": str(STORAGE_RETRY_AFTER)},
        )

    @app.exception_handler(RoutingUnavailable)
    async def _routing(_req: Request, exc: RoutingUnavailable) -> JSONResponse:
        log.error("routing: %s", exc)
        return problem(503, "Routing unavailable", str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(Forbidden)
    async def _forbidden(_req: Request, exc: Forbidden) -> JSONResponse:
        return problem(403, "Forbidden", str(exc))

    @app.exception_handler(NotAllowed)
    async def _not_allowed(_req: Request, exc: NotAllowed) -> JSONResponse:
        return problem(409, "Conflict", str(exc))

    @app.exception_handler(AcdError)
    async def _acd(_req: Request, exc: AcdError) -> JSONResponse:
        if isinstance(exc, WrapUpOwed):  # the desk asks for that wrap-up, not any 409
            return problem(409, "Wrap-up owed", str(exc), wrap_up_call=exc.call_id)
        return problem(409, "Conflict", str(exc))

    @app.exception_handler(FlowError)
    async def _flow(_req: Request, exc: FlowError) -> JSONResponse:
        # a flow put through the API: its own mistake, or one with the rest of the set
        if isinstance(exc, FlowConflict):
            return problem(409, "Conflict", str(exc), line=exc.line, reason=exc.reason)
        return problem(422, "Invalid flow", str(exc), line=exc.line, reason=exc.reason)

    @app.exception_handler(UnknownCall)
    async def _unknown(_req: Request, exc: UnknownCall) -> JSONResponse:
        return problem(404, "Not Found", f"no live call {exc}")


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.limit:
                    await self._reject(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise StarletteHTTPException(413, f"request body over {self.limit} bytes")
            return msg

        await self.app(scope, limited, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, "Content Too Large", f"request body over {self.limit} bytes")
        await response(scope, receive, send)
