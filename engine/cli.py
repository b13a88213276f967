"""``ccengine serve | models [prepare] | users add | phone``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from engine.config import Settings

# sysexits.h EX_DATAERR: the input data (here, the database file) was incorrect
EXIT_DAMAGED_DATABASE = 65
EXIT_UNAVAILABLE = 69  # sysexits.h EX_UNAVAILABLE: a service we need is not there


def _damaged(settings: Settings) -> str | None:
    """Why the configured database cannot be used, in one line; None: it can."""
    from engine.store.db import DamagedDatabase, check_integrity

    if settings.database_check == "off":
        return None
    try:
        check_integrity(settings.database_url, full=settings.database_check == "full")
    except DamagedDatabase as exc:
        return (
            f"the database is damaged, not starting: {exc}. Restore it from a backup, or "
            "move it away to start empty ('sqlite3 FILE .recover' may save what is left)"
        )
    return None


def _redis_unusable(settings: Settings) -> str | None:
    """Why the configured Redis cannot be used, in one line; None: it can (or none is
    configured)."""
    if not settings.redis_url:
        return None
    import redis
    from redis.exceptions import RedisError

    from engine.redisstream import TIMEOUT, safe_url

    try:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
        )
        with client:
            client.ping()
    except (RedisError, OSError, ValueError) as exc:
        return (
            f"cannot use Redis at {safe_url(settings.redis_url)} (CCENGINE_REDIS_URL), "
            f"not starting: {exc}"
        )
    return None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from media import malloc

    # before any thread starts: free memory is not stranded in one arena per thread,
    # nor big freed buffers in the heap (media/malloc.py)
    malloc.limit_arenas()
    malloc.map_large()

    from engine.app import create_app
    from engine.httpserver import guarded_http
    from engine.server import GRACEFUL_SHUTDOWN, serve
    from media.netlimits import raise_fd_limit

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if args.db:
        overrides["database_url"] = args.db
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if (why := _damaged(settings)) is not None:
        logging.getLogger("engine").error("%s", why)
        return EXIT_DAMAGED_DATABASE
    if (why := _redis_unusable(settings)) is not None:
        logging.getLogger("engine").error("%s", why)
        return EXIT_UNAVAILABLE
    # httpx logs every request's full URL at INFO: a webhook URL's query may hold the
    # receiver's own token. Our webhook log lines name scheme, host and port only.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    before, after = raise_fd_limit()
    logging.getLogger("engine").info(
        "open files: up to %d%s", after, f" (raised from {before})" if after > before else ""
    )
    app = create_app(settings, freeze_gc=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # slowloris: connections counted and capped, a deadline on every request
        http=guarded_http(app.state.http_connections, settings.http_request_timeout),
        ws_max_size=64 * 1024,
        # an agent's desk whose host vanished without closing its stream is found by
        # the pings (engine/liveness.py): within about 1.5 x CCENGINE_AGENT_DISCONNECT_AFTER
        ws_ping_interval=settings.agent_disconnect_after / 2,
        ws_ping_timeout=settings.agent_disconnect_after,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default: anyone on this
        # host could then pick the address they are rate-limited as. The app applies
        # CCENGINE_TRUSTED_PROXIES itself (create_app).
        proxy_headers=False,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
    )
    # SIGTERM drains the node (engine/drain.py) and the server stops once it is drained
    return serve(config, app.state.drain)


def _models(args: argparse.Namespace) -> int:
    from media.asr import choose_model
    from media.asr.moonshine_convert import ModelPrepareError, ensure, is_prepared

    settings = Settings()
    prepare = bool(args.language) and args.language[0] == "prepare"
    given = args.language[1:] if prepare else args.language
    languages = given or sorted({settings.default_language, *settings.preload_languages})
    rows = [
        choose_model(lang, settings.model_dirs, settings.asr_backends.get(lang))
        for lang in languages
    ]
    if prepare:
        for r in rows:
            if r.backend == "moonshine" and r.path:
                try:
                    print(f"{r.language}: {ensure(r.path, print)}")
                except ModelPrepareError as exc:
                    print(f"error: {r.language}: {exc}", file=sys.stderr)
                    return 1
            else:
                print(f"{r.language}: {r.backend or 'none'}: nothing to prepare")
        return _prepare_voice(settings)
    ready = {r.language: r.backend != "moonshine" or is_prepared(Path(r.path or "")) for r in rows}
    if args.json:
        out = [{**r.__dict__, "note": r.note, "prepared": ready[r.language]} for r in rows]
        print(json.dumps(out, indent=2))
        return 0
    for r in rows:
        print(f"{r.language}: {r.backend or 'none'}{' (fallback)' if r.fallback else ''}")
        print(f"    model: {r.path or '-'}")
        if not ready[r.language]:
            print("    prepared: not yet (at the first start, or: ccengine models prepare)")
        print(f"    note: {r.note}")
        print(f"    looked in: {'; '.join(r.looked_in)}")
    return 0


def _prepare_voice(settings: Settings) -> int:
    from media import piper_convert

    if not settings.prompt_voice_int8:
        print("prompt voice: the float one (CCENGINE_PROMPT_VOICE_INT8=false), nothing to prepare")
        return 0
    if piper_convert.source() is None:
        print("prompt voice: no piper voice installed, nothing to prepare")
        return 0
    try:
        folder = piper_convert.ensure((settings.model_dirs or ["models"])[0], print)
    except piper_convert.ModelPrepareError as exc:
        print(f"error: prompt voice: {exc} (the engine will use the float voice)", file=sys.stderr)
        return 1
    print(f"prompt voice: {folder / piper_convert.MODEL}")
    return 0


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    import getpass

    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("passwords differ")
    return first


def _phone(args: argparse.Namespace) -> int:
    from engine.phone import PhoneOptions, run_phone

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass(f"password for {args.agent}: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    return run_phone(
        PhoneOptions(
            url=args.url,
            username=args.agent,
            password=password,
            input_wav=args.input_wav,
            output_wav=args.output_wav,
            auto_answer=args.auto_answer,
            calls=args.calls,
            disposition=args.disposition,
            notes=args.notes,
        )
    )


def _users_add(args: argparse.Namespace) -> int:
    import asyncio
    import uuid

    from engine.events import utcnow
    from engine.store.db import Store
    from engine.store.models import UserRow
    from engine.users import hash_password

    settings = Settings(**({"database_url": args.db} if args.db else {}))
    if (why := _damaged(settings)) is not None:
        print(f"error: {why}", file=sys.stderr)
        return EXIT_DAMAGED_DATABASE
    try:
        password_hash = hash_password(_read_password())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    skills = sorted({s.strip() for s in (args.skills or "").split(",") if s.strip()})

    async def add() -> int:
        store = Store(settings.database_url)
        try:
            await store.open()
            if await store.user_by_name(args.username) is not None:
                print(f"error: user {args.username} exists", file=sys.stderr)
                return 1
            await store.add_user(
                UserRow(
                    id=str(uuid.uuid4()),
                    username=args.username,
                    display_name=args.name or args.username,
                    role=args.role,
                    skills=skills,
                    password_hash=password_hash,
                    created_at=utcnow(),
                )
            )
        finally:
            await store.close()
        print(f"added {args.role} {args.username}" + (f" ({', '.join(skills)})" if skills else ""))
        return 0

    return asyncio.run(add())


def _store_settings(args: argparse.Namespace) -> Settings:
    return Settings(**({"database_url": args.db} if args.db else {}))


def _keys(args: argparse.Namespace) -> int:
    import asyncio

    from engine.events import utcnow
    from engine.keys import new_key
    from engine.store.db import Store
    from engine.store.models import ApiKeyRow

    settings = _store_settings(args)
    if (why := _damaged(settings)) is not None:
        print(f"error: {why}", file=sys.stderr)
        return EXIT_DAMAGED_DATABASE

    async def run() -> int:
        store = Store(settings.database_url)
        try:
            await store.open()
            if args.keys_command == "create":
                key = new_key()
                scopes = sorted(set(args.scope or ["read"]))
                rate = args.rate or settings.rate_per_minute
                await store.add(
                    ApiKeyRow(
                        id=key.id, name=args.name, scopes=scopes, secret_hash=key.secret_hash,
                        rate_per_minute=rate, created_at=utcnow(),
                    )
                )  # fmt: skip
                if args.quiet:
                    print(key.token)
                else:
                    print(f"created key {key.id} ({args.name}): {', '.join(scopes)}, "
                          f"{rate} requests a minute")  # fmt: skip
                    print(f"  {key.token}")
                    print("  shown once: store it now; send it as 'Authorization: Bearer <key>'")
                return 0
            if args.keys_command == "revoke":
                if not await store.revoke_api_key(args.id, utcnow()):
                    print(f"error: no live key {args.id}", file=sys.stderr)
                    return 1
                print(f"revoked key {args.id}")
                return 0
            rows = await store.api_keys()
            if args.json:
                print(json.dumps([
                    {"id": r.id, "name": r.name, "scopes": r.scopes,
                     "rate_per_minute": r.rate_per_minute,
                     "created_at": r.created_at.isoformat(),
                     "last_used_at": r.last_used_at.isoformat() if r.last_used_at else None,
                     "revoked": r.revoked_at is not None}
                    for r in rows
                ], indent=2))  # fmt: skip
                return 0
            for r in rows:
                state = "revoked" if r.revoked_at else "live"
                used = r.last_used_at.strftime("%Y-%m-%d %H:%M") if r.last_used_at else "never"
                print(f"{r.id}  {state:7}  {','.join(r.scopes):19}  used {used:16}  {r.name}")
            if not rows:
                print("no API keys; create one with: ccengine keys create NAME --scope read")
            return 0
        finally:
            await store.close()

    return asyncio.run(run())


def _api(args: argparse.Namespace) -> int:
    """The commands that talk to a running engine, through the typed client."""
    import asyncio
    import os

    from engine.client import ApiError, Client, dump

    key = os.environ.get("CCENGINE_API_KEY")
    if not key:
        print("error: set CCENGINE_API_KEY (create one with: ccengine keys create NAME)",
              file=sys.stderr)  # fmt: skip
        return 2

    async def run() -> int:
        async with Client(args.url, api_key=key) as cc:
            if args.command == "calls":
                listed = await cc.calls(state=args.state, limit=args.limit)
                for c in listed.calls:
                    print(f"{c.id}  {c.created_at:%Y-%m-%d %H:%M}  {c.channel:6}  {c.state:9}  "
                          f"{c.emotion or '-':8}  {c.caller or ''}")  # fmt: skip
            elif args.command == "call":
                print(dump(await cc.call(args.id)))
            elif args.command == "events":
                async for event in cc.events(args.call, after=args.after):
                    print(json.dumps(event), flush=True)
            elif args.webhooks_command == "add":
                print(dump(await cc.create_webhook(args.target, args.events)))
            elif args.webhooks_command == "list":
                print(dump(await cc.webhooks()))
            elif args.webhooks_command == "remove":
                await cc.delete_webhook(args.id)
                print(f"removed webhook {args.id}")
            else:
                print(dump(await cc.deliveries(args.id, args.status)))
        return 0

    try:
        return asyncio.run(run())
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ccengine", description="contact-center engine")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the engine and its web pages")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default 8080)")
    serve.add_argument(
        "--db",
        help="SQLAlchemy URL (default sqlite+aiosqlite:///./ccengine.db; PostgreSQL: "
        "postgresql+asyncpg://user:password@host/database)",
    )
    serve.set_defaults(func=_serve)
    models = sub.add_parser(
        "models",
        help="which recognizer each language uses; 'models prepare [LANG...]' converts "
        "the Moonshine English model now rather than at the first start",
    )
    models.add_argument("language", nargs="*", help="languages to check (default: configured)")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=_models)
    users = sub.add_parser("users", help="manage agents, supervisors and admins")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    add = users_sub.add_parser("add", help="add a user (password from the terminal or stdin)")
    add.add_argument("username")
    add.add_argument("--role", choices=["agent", "supervisor", "admin"], default="agent")
    add.add_argument("--skills", help="comma-separated, e.g. billing,retention")
    add.add_argument("--name", help="display name")
    add.add_argument("--db", help="SQLAlchemy URL (default: the configured database)")
    add.set_defaults(func=_users_add)
    keys = sub.add_parser("keys", help="API keys for developers (read, control, admin)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; it is printed once")
    create.add_argument("name", help="what the key is for, e.g. crm-sync")
    create.add_argument(
        "--scope", action="append", choices=["read", "control", "admin"],
        help="repeat for several (default: read); admin includes control, control read",
    )  # fmt: skip
    create.add_argument("--rate", type=int, help="requests a minute (default 600)")
    create.add_argument("--quiet", action="store_true", help="print only the key")
    listing = keys_sub.add_parser("list", help="keys, their scopes and last use")
    listing.add_argument("--json", action="store_true")
    revoke = keys_sub.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("id", help="the key's id (the part after cck_)")
    for p in (create, listing, revoke):
        p.add_argument("--db", help="SQLAlchemy URL (default: the configured database)")
        p.set_defaults(func=_keys)
    url = "the engine (default http://127.0.0.1:8080); the key comes from CCENGINE_API_KEY"
    calls = sub.add_parser("calls", help="list calls of a running engine")
    calls.add_argument("--state", help="only calls in this state (queued, bridged, ...)")
    calls.add_argument("--limit", type=int, default=20)
    call = sub.add_parser("call", help="one call, with transcript, emotions and notes (JSON)")
    call.add_argument("id")
    events = sub.add_parser("events", help="follow events as JSON lines (resumes by itself)")
    events.add_argument("--call", help="one call's events (default: all)")
    events.add_argument("--after", type=int, default=0, help="resume after this event id")
    hooks = sub.add_parser("webhooks", help="webhook subscriptions (admin key)")
    hooks_sub = hooks.add_subparsers(dest="webhooks_command", required=True)
    hook_add = hooks_sub.add_parser("add", help="subscribe a URL; prints its signing secret")
    hook_add.add_argument("target", help="https://… receiver")
    hook_add.add_argument("events", nargs="+", help="event types, or '*'")
    hooks_sub.add_parser("list", help="subscriptions")
    hook_rm = hooks_sub.add_parser("remove", help="stop a subscription")
    hook_rm.add_argument("id")
    hook_log = hooks_sub.add_parser("deliveries", help="a subscription's delivery log")
    hook_log.add_argument("id")
    hook_log.add_argument("--status", choices=["pending", "delivered", "failed"])
    for p in (calls, call, events, *hooks_sub.choices.values()):
        p.add_argument("--url", default="http://127.0.0.1:8080", help=url)
        p.set_defaults(func=_api)
    phone = sub.add_parser("phone", help="the desktop softphone for an agent")
    phone.add_argument("--agent", required=True, help="username (password from the terminal)")
    phone.add_argument("--url", default="http://127.0.0.1:8080", help="the engine")
    phone.add_argument("--input-wav", help="play this WAV file as the microphone")
    phone.add_argument("--output-wav", help="record what you hear to this WAV file")
    phone.add_argument("--auto-answer", action="store_true", help="answer every offer")
    phone.add_argument("--calls", type=int, default=0, help="stop after N calls (0: never)")
    phone.add_argument("--disposition", help="wrap-up disposition (default: ask)")
    phone.add_argument("--notes", default="", help="wrap-up notes")
    phone.set_defaults(func=_phone)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
