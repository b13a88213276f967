"""FastAPI app factory: API, pages, metrics, and the media engine's lifetime."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from engine import vendor
from engine.alerts import Supervision
from engine.analyst import Analyst, rules_from
from engine.api import (
    agents,
    audio,
    auth,
    bot,
    consult,
    content,
    customers,
    desk,
    docs,
    forward,
    monitor,
    node,
    problems,
    reports,
    rest,
    streams,
    supervisor,
    webhooks,
    websec,
)
from engine.api.schemas import Health, LoadOut
from engine.apptoken import AppTokens
from engine.calls import CallManager
from engine.capacity import Capacity
from engine.changes import Changes
from engine.config import Settings, node_url
from engine.content import QUEUE
from engine.drain import NodeDrain
from engine.egress import TargetPolicy
from engine.eventlog import EventLog
from engine.events import EventBus
from engine.gcpauses import GcPauses, freeze_startup
from engine.metrics import Metrics
from engine.recovery import Recovery
from engine.redisstream import RedisEventStream
from engine.routingcopy import queue_rows
from engine.routinglog import RoutingLog
from engine.sharedcalls import SharedCalls
from engine.sip import SipFront
from engine.store.db import Store
from engine.users import load_or_create_key
from engine.webhooks import WebhookSender
from media import malloc
from media.netlimits import ConnectionCaps, in_networks

log = logging.getLogger(__name__)
WEB = Path(__file__).parent / "web"


def create_app(settings: Settings | None = None, *, freeze_gc: bool = False) -> FastAPI:
    """The engine as an ASGI app. ``freeze_gc``: once started, exempt every object
    start-up made from the garbage collector (engine.gcpauses); for a process that
    serves this one app (``ccengine serve``), not for a test process making many."""
    settings = settings or Settings()
    store = Store(settings.database_url, settings.database_max_connections)
    bus = EventBus()
    metrics = Metrics()
    calls = CallManager(settings, store, bus, metrics)
    capacity = calls.capacity = Capacity(
        settings,
        metrics,
        calls_count=calls.calls_in_progress,
        backlog=calls.recognition_backlog,
        worker_pids=lambda: calls.recognizers.pool.pids(),
    )
    drain = calls.drain = NodeDrain(
        settings.drain_timeout,
        calls_left=calls.calls_in_progress,
        end_calls=calls.end_all,
        on_change=lambda draining: metrics.draining.set(int(draining)),
    )
    shared = (
        RedisEventStream(settings.redis_url, settings.redis_prefix) if settings.redis_url else None
    )
    event_log = EventLog(store, bus, settings.event_retention_days, shared)
    changes = Changes(
        {
            "webhooks": event_log.reload_webhooks,
            "content": calls.content.load,
            "flows": calls.flows.load,
            "queues": calls.load_queue_changes,
            # someone signed out, changed or removed (on another engine, or a message
            # about it missed: also at every backstop): their supervisor legs here end
            "people": calls.monitors.recheck,
        },
        settings.redis_url,
        settings.redis_prefix,
        # only when told: open streams check their credentials now rather than at
        # their own next RECHECK. Not at every backstop too: that would wake every
        # open stream of every engine at the same instant each minute, for nothing
        # (``app``: built below, before any announcement can come)
        announced={"people": lambda: auth.tokens_revoked(app)},
    )
    webhook_targets = TargetPolicy(settings.webhook_allowed_networks)
    # the wallboard's view of the floor and the alerts kept (engine/alerts.py)
    supervision = Supervision(
        store, bus, event_log, settings.service_level_seconds, lease=settings.engine_lease
    )
    recovery = Recovery(store, bus, settings.engine_lease, node_url(settings))
    calls.engine_id = recovery.id
    analyst = Analyst(store, bus, rules_from(settings.analytics_categories), recovery.id, event_log)
    recovery.on_ended = analyst.ended_here
    sender = WebhookSender(
        store,
        engine_id=recovery.id,
        max_attempts=settings.webhook_max_attempts,
        retry_base=settings.webhook_retry_base,
        retry_cap=settings.webhook_retry_cap,
        timeout=settings.webhook_timeout,
        policy=webhook_targets,
    )
    event_log.on_deliveries = sender.wake
    recovery.on_released = sender.wake
    routing_log = None
    if calls.routing_copy is not None:  # several engines: one routing, a copy on each

        async def queue_overrides() -> list[tuple[str, dict[str, object] | None]]:
            return queue_rows(await store.overrides(QUEUE))

        routing_log = RoutingLog(
            settings.redis_url, settings.redis_prefix, recovery.id, calls.routing_copy,
            reset_queues=queue_overrides, peers=recovery.live_peers,
        )  # fmt: skip
        shared_calls = SharedCalls(
            routing_log, calls.routing_copy, recovery.id, calls.calls, calls.apply_routing
        )
        routing_log.on_effects = shared_calls.effects
        routing_log.on_reset = shared_calls.reset
        shared_calls.retell_streams = calls.desks.retell
        calls.routing_log, calls.shared = routing_log, shared_calls
        recovery.on_calls_ended = shared_calls.calls_lost
    event_log.earlier_writes = calls.spool.drained
    metrics.storage_waiting.labels("call").set_function(lambda: calls.spool.pending)
    metrics.storage_waiting.labels("event").set_function(lambda: event_log.pending)
    metrics.bounded_bytes.labels("prompt").set_function(lambda: calls.prompts.cached_bytes)
    metrics.bounded_bytes.labels("event_ring").set_function(lambda: bus.ring_bytes)
    if shared is not None:
        metrics.shared_events.labels("held").set_function(lambda: shared.held)
        metrics.shared_events.labels("dropped").set_function(lambda: shared.dropped)
        metrics.shared_events.labels("recovered").set_function(lambda: shared.recovered)
        metrics.shared_events.labels("restarts").set_function(lambda: shared.gaps)
        metrics.shared_events.labels("unreadable").set_function(lambda: shared.bad)
        metrics.shared_events.labels("unknown_type").set_function(lambda: shared.unknown)
        metrics.shared_events.labels("reader_failures").set_function(lambda: shared.restarts)
        metrics.shared_events.labels("counter_resets").set_function(lambda: shared.resets)
    gc_pauses = GcPauses(metrics.gc_pause)
    # mallinfo2 walks malloc's free lists: ~0.3 ms on a fragmented heap, once a scrape
    metrics.malloc_in_use.set_function(lambda: float(malloc.in_use() or math.nan))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await store.open()
        await event_log.start()  # before anything publishes: ids continue the log's
        sender.start()
        analyst.start()  # calls are analysed as they end (engine/analyst.py)
        await supervision.start()  # after the log: it follows the log's events
        await recovery.start()  # after the log: the ends it publishes are kept and sent
        if routing_log is not None:  # in step with the other engines' routing
            await routing_log.start()
        await calls.load_queue_changes()
        await calls.content.load()
        await calls.flows.load()  # before preload: the API's flows' prompts are warmed too
        changes.start()  # other engines' changes to all of these, from here on
        await calls.preload(settings.preload_languages)
        timers = asyncio.create_task(calls.run_acd_timers(), name="acd-timers")
        sip = (
            SipFront(settings, calls, store, metrics, recovery.id) if settings.sip_enabled else None
        )
        if sip is not None:
            try:
                await sip.start()
            except OSError as exc:
                # the web side is still useful: say why phones cannot call, and go on
                log.error("SIP disabled: cannot listen on %s:%s (%s); set CCENGINE_SIP_PORT",
                          settings.sip_host, settings.sip_port, exc)  # fmt: skip
                sip = None
        app.state.sip = sip
        calls.desk_phones = sip
        if freeze_gc:  # before the pauses are timed: this collection is start-up's
            log.info("garbage collector: %d start-up objects frozen", freeze_startup())
        gc_pauses.start()
        capacity.start()  # after start-up's own work, which is not load
        drain.start()  # from here SIGTERM drains (ccengine serve); before, it just stops
        urls = [u for server in settings.ice_servers for u in server.urls]
        log.info("WebRTC ICE servers: %s", ", ".join(urls) or "none (host candidates only)")
        log.info("ccengine ready on http://%s:%s", settings.host, settings.port)
        try:
            yield
        finally:
            gc_pauses.stop()
            await drain.stop()
            await capacity.stop()
            timers.cancel()
            await calls.shutdown()  # BYE to every phone caller while SIP still runs
            if routing_log is not None:  # after the calls' last routing (they left the line)
                await routing_log.stop()
            if sip is not None:
                await sip.stop()
            await recovery.stop()
            await supervision.stop()  # before the log: the calls' last alerts are closed
            await event_log.stop()  # the last events (call.ended) reach the log
            await analyst.stop()  # calls not analysed yet are when first read
            await sender.stop()
            await changes.stop()
            await app.state.forward_http.aclose()
            await store.close()
            await app.state.credentials.limiter.close()

    # /docs and /redoc with Swagger UI and ReDoc from the fastapi-offline package, served
    # by the engine: FastAPI's own pages load them from a CDN (no docs offline, and an
    # outside request from every reader's browser)
    app = FastAPIOffline(
        docs_url=None,  # engine/api/docs.py serves /docs and /redoc, accessible
        redoc_url=None,
        title="ccengine",
        version="0.1.0",
        summary="Real-time contact-center engine: calls, live transcripts, emotion",
        lifespan=lifespan,
    )
    docs.install(app)
    app.state.settings = settings
    app.state.secret_key = (
        settings.secret_key.get_secret_value()
        if settings.secret_key
        else load_or_create_key(settings.secret_key_file)
    )
    app.state.calls = calls
    # the services the API reads besides the call manager: it asks them directly
    # rather than through the manager's attributes (each will have a shared backend)
    app.state.store = store
    app.state.bus = bus
    app.state.content = calls.content
    key = settings.customer_token_key
    app.state.app_tokens = AppTokens(key.get_secret_value() if key is not None else None)
    app.state.flows = calls.flows
    app.state.changes = changes
    app.state.metrics = metrics
    app.state.capacity = capacity
    app.state.drain = drain
    app.state.event_log = event_log
    app.state.analyst = analyst
    app.state.supervision = supervision
    app.state.webhook_targets = webhook_targets
    app.state.engine_id = recovery.id
    app.state.forward_http = forward.client(ring_for=settings.callback_ring_timeout)
    # the HTTP server's connections (engine/httpserver.py; the CLI hands it to uvicorn)
    refused = metrics.connections_refused
    app.state.http_connections = ConnectionCaps(
        settings.http_max_connections_per_address,
        settings.http_max_connections,
        fd_reserve=settings.fd_reserve,
        exempt=in_networks(settings.trusted_proxies),  # every client comes through them
        on_refused=lambda why: refused.labels("http", why).inc(),
    )
    auth.install(app)
    problems.install(app)
    app.add_middleware(forward.ForwardCallActions)  # inside the body limit
    app.add_middleware(problems.BodyLimit, limit=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", websec.CSRF_HEADER],
            expose_headers=["Retry-After"],
        )
    app.add_middleware(websec.SecurityHeaders)
    if settings.trusted_proxies:
        # outermost: the client address and scheme are settled before anything reads
        # them; from anyone but these proxies, X-Forwarded-* headers change nothing
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    app.include_router(rest.router)
    app.include_router(reports.router)
    app.include_router(auth.router)
    app.include_router(agents.router)
    app.include_router(desk.router)
    app.include_router(consult.router)
    app.include_router(streams.router)
    app.include_router(webhooks.router)
    app.include_router(audio.router)
    app.include_router(content.router)
    app.include_router(supervisor.router)
    app.include_router(customers.router)
    app.include_router(bot.router)
    app.include_router(node.router)
    app.include_router(vendor.router)  # /static/vendor/...: before the folder's mount
    app.include_router(monitor.router)
    app.mount("/static", StaticFiles(directory=WEB / "static"), name="static")

    @app.get("/healthz", response_model=Health, tags=["system"])
    async def healthz() -> Health:
        load = capacity.snapshot()
        return Health(
            active_calls=len(calls.calls),
            load=LoadOut(**dataclasses.asdict(load)),
            waiting_writes=calls.spool.pending + event_log.pending,
            draining=drain.draining,
        )

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(_p: auth.Reader) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB / "index.html")

    @app.get("/call", include_in_schema=False)
    async def caller_page() -> FileResponse:
        return FileResponse(WEB / "call.html")

    @app.get("/agent", include_in_schema=False)
    async def agent_page() -> FileResponse:
        return FileResponse(WEB / "agent.html")

    @app.get("/reports", include_in_schema=False)
    async def reports_page() -> FileResponse:
        return FileResponse(WEB / "reports.html")

    @app.get("/admin", include_in_schema=False)
    async def admin_page() -> FileResponse:
        return FileResponse(WEB / "admin.html")

    @app.get("/calls", include_in_schema=False)
    async def calls_page() -> RedirectResponse:
        return RedirectResponse("/")

    @app.get("/calls/{call_id}", include_in_schema=False)
    async def live_view(call_id: str) -> FileResponse:
        return FileResponse(WEB / "live.html")

    @app.get("/supervisor", include_in_schema=False)
    async def supervisor_page() -> FileResponse:
        return FileResponse(WEB / "supervisor.html")

    return app
