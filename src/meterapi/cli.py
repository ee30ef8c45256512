"""``meterapi …``: the command line. Each command wraps a service; none holds logic of its own."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from pydantic import ValidationError

from meterapi import migrations
from meterapi.config import ConfigError, Settings
from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.errors import DomainError
from meterapi.keys import service as key_service
from meterapi.keys.format import is_live_stripe_key

log = logging.getLogger("meterapi")

Command = Callable[[argparse.Namespace, Settings], int]


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn  # the server is only needed by this command

    migrations.upgrade(settings.database_url)
    uvicorn.run(
        "meterapi.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=True,
        log_level="info",
    )
    return 0


def _db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    migrations.upgrade(settings.database_url, args.revision)
    log.info("database is at %s", args.revision)
    return 0


def _keys_issue(args: argparse.Namespace, settings: Settings) -> int:
    secret = settings.stripe_secret_key
    live = is_live_stripe_key(secret.get_secret_value() if secret else None)

    async def issue() -> str:
        engine = make_engine(settings.database_url)
        try:
            async with session_scope(make_sessionmaker(engine)) as session:
                key, plaintext = await key_service.issue_for_stripe_customer(
                    session,
                    stripe_customer_id=args.customer,
                    name=args.name,
                    pepper=settings.pepper_bytes(),
                    live=live,
                )
            log.info("issued key %s for %s", key.id, args.customer)
            return plaintext
        finally:
            await engine.dispose()

    return _run_printing(issue)


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def revoke() -> str:
        engine = make_engine(settings.database_url)
        try:
            async with session_scope(make_sessionmaker(engine)) as session:
                key = await key_service.revoke(
                    session, key_id=args.key_id, customer_id=None, allow_last=args.force
                )
            log.info("revoked key %s", key.id)
            return f"revoked {key.id}"
        finally:
            await engine.dispose()

    return _run_printing(revoke)


def _run_printing(work: Callable[[], Coroutine[Any, Any, str]]) -> int:
    """Run ``work``; print its result to stdout, or a domain error's message to stderr (exit 1)."""
    try:
        result = asyncio.run(work())
    except DomainError as exc:
        print(f"meterapi: {exc.message}", file=sys.stderr)
        return 1
    print(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meterapi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="migrate the database, then run the service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(handler=_serve)

    db = commands.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True
    )
    upgrade = db.add_parser("upgrade", help="apply the Alembic migrations")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(handler=_db_upgrade)

    keys = commands.add_parser("keys", help="operator key management").add_subparsers(
        dest="keys_command", required=True
    )
    issue = keys.add_parser("issue", help="issue a key; prints it once, to stdout")
    issue.add_argument("--customer", required=True, help="the customer's Stripe id, cus_…")
    issue.add_argument("--name", default="default")
    issue.set_defaults(handler=_keys_issue)
    revoke = keys.add_parser("revoke", help="revoke a key now, everywhere")
    revoke.add_argument("key_id")
    revoke.add_argument(
        "--force", action="store_true", help="revoke even the customer's only active key"
    )
    revoke.set_defaults(handler=_keys_revoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except (ConfigError, ValidationError) as exc:
        print(f"meterapi: configuration error: {_config_message(exc)}", file=sys.stderr)
        return 2
    handler: Command = args.handler
    return handler(args, settings)


def _config_message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        # Name the fields only: pydantic's text would echo the (secret) input values.
        return "; ".join(
            (f"METERAPI_{'.'.join(map(str, e['loc'])).upper()}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
    return str(exc)


if __name__ == "__main__":
    raise SystemExit(main())
