"""``ccengine serve | models | users add | phone``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from engine.config import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from engine.app import create_app

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if args.db:
        overrides["database_url"] = args.db
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ws_max_size=64 * 1024,
        log_level=settings.log_level.lower(),
    )
    return 0


def _models(args: argparse.Namespace) -> int:
    from media.asr import choose_model

    settings = Settings()
    languages = args.language or sorted({settings.default_language, *settings.preload_languages})
    rows = [choose_model(lang, settings.model_dirs) for lang in languages]
    if args.json:
        print(json.dumps([{**r.__dict__, "note": r.note} for r in rows], indent=2))
        return 0
    for r in rows:
        print(f"{r.language}: {r.backend or 'none'}{' (fallback)' if r.fallback else ''}")
        print(f"    model: {r.path or '-'}")
        print(f"    note: {r.note}")
        print(f"    looked in: {'; '.join(r.looked_in)}")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ccengine", description="contact-center engine")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the engine and its web pages")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default 8080)")
    serve.add_argument("--db", help="SQLAlchemy URL (default sqlite+aiosqlite:///./ccengine.db)")
    serve.set_defaults(func=_serve)
    models = sub.add_parser("models", help="which recognizer each language uses")
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
