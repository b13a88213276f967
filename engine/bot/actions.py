"""Actions: the virtual agent asks the business's own system (order status, balance,
rebooking) and speaks its answer.

Each action is one signed POST. The body is JSON::

    {"call_id": "...", "intent": "order_status", "slots": {"order": "83016"},
     "caller": "+442071234567", "customer_id": "c-1042", "verified_by": "pin"}

(``customer_id`` and ``verified_by`` are null while the caller is not known or not
verified.) A flow's own verification check is POSTed the same way, with
``{"call_id", "customer_id", "account", "factor", "value"}``, and answers
``{"verified": true|false, "customer_id": "...", "locked": false}``.

signed like a webhook (``Ccengine-Signature: t=<unix seconds>,v1=<HMAC-SHA256>``, see
``engine/webhooks.py``) with ``CCENGINE_BOT_ACTION_SECRET`` when it is set. The answer
must be a 2xx with a JSON body of at most ``MAX_ANSWER_BYTES``; anything else (no answer
within the action's ``timeout``, a refused connection, a 500, HTML, a redirect, an
answer too large) is an ``ActionFailed`` whose reason the hand-off carries, and the
caller hears an apology and goes to a person: never dead air.

Targets are the URLs of the flow files, which are the operator's configuration like the
engine's settings, so they may be private addresses (the business's systems usually
are); they are not the webhook egress policy's business.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping

import httpx

from engine.bot.dialog import CallAction
from engine.webhooks import safe_target, sign

log = logging.getLogger(__name__)
MAX_ANSWER_BYTES = 64 * 1024  # a status for the caller, not a data dump
USER_AGENT = "ccengine-bot/1"


class ActionFailed(Exception):
    """Why an action gave nothing to say; safe to log and to show an agent (never the
    answer's body, which may hold the business's data)."""


class Actions:
    """One HTTP client for every call's actions."""

    def __init__(self, secret: str | None = None, max_connections: int = 50) -> None:
        self.secret = secret
        self._http = httpx.AsyncClient(
            follow_redirects=False,  # a redirect is the system's mistake, not ours to chase
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=max_connections),
            timeout=None,  # each action's own timeout covers the whole exchange
        )

    async def run(
        self,
        call_id: str,
        caller: str | None,
        action: CallAction,
        customer: tuple[str | None, str | None] = (None, None),
    ) -> object:
        """The JSON the system answered; ``ActionFailed`` otherwise. ``customer``: the
        caller's record and how they proved it is theirs (None, None: not known), so the
        system can tell whether order 83016 is this caller's to ask about."""
        customer_id, verified_by = customer
        payload = {
            "call_id": call_id,
            "intent": action.intent,
            "slots": action.slots,
            "caller": caller,
            "customer_id": customer_id,
            "verified_by": verified_by,
        }
        return await self.post(action.url, action.timeout, payload, what=action.intent)

    async def post(
        self,
        url: str,
        within: float,
        payload: Mapping[str, object],
        *,
        what: str,
        headers: Mapping[str, str] | None = None,
        signed: bool = True,
    ) -> object:
        """POST ``payload`` signed; the JSON answered, or ``ActionFailed``. Only ``what``
        and where it went are logged, never the payload (a verification's holds the
        caller's PIN)."""
        call_id = payload.get("call_id")
        body = json.dumps(payload).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        if self.secret and signed:
            sent["Ccengine-Signature"] = sign(self.secret, int(time.time()), body)
        started = time.monotonic()
        try:
            async with asyncio.timeout(within):
                data = await self._post(url, body, sent)
        except TimeoutError:
            raise ActionFailed(f"no answer within {within:g} s") from None
        except httpx.HTTPError as e:
            raise ActionFailed(f"could not be reached ({type(e).__name__})") from None
        finally:
            log.info(
                "call %s: action %s to %s took %.0f ms",
                call_id, what, safe_target(url), 1000 * (time.monotonic() - started),
            )  # fmt: skip
        try:
            return json.loads(data)
        except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
            raise ActionFailed("its answer is not JSON") from None

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> bytes:
        async with self._http.stream("POST", url, content=body, headers=headers) as r:
            if not 200 <= r.status_code < 300:
                raise ActionFailed(f"it answered {r.status_code}")
            data = bytearray()
            async for chunk in r.aiter_bytes():
                data += chunk
                if len(data) > MAX_ANSWER_BYTES:
                    raise ActionFailed(f"its answer is over {MAX_ANSWER_BYTES // 1024} KiB")
            return bytes(data)

    async def close(self) -> None:
        await self._http.aclose()
