"""``ccengine serve | models``."""

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
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
