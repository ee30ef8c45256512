"""``meterapi …``: the command line. Each command wraps a service; none holds logic of its own."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from meterapi import migrations
from meterapi.config import ConfigError, Settings

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
