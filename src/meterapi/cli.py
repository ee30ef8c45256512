"""``meterapi …``: the command line. Each command wraps a service; none holds logic of its own."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from meterapi import migrations
from meterapi.billing.gateway import StripeGateway
from meterapi.config import ConfigError, Settings
from meterapi.runtime import Runtime

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


def _usage_flush(args: argparse.Namespace, settings: Settings) -> int:
    async def flush() -> int:
        runtime = Runtime.build(settings)
        try:
            return await runtime.reporter.flush(timeout_s=args.timeout)
        finally:
            await runtime.gateway.close()
            await runtime.engine.dispose()

    left = asyncio.run(flush())
    if left:
        print(f"{left} usage report(s) still pending; Stripe did not accept them in time")
        return 1
    print("all usage reported")
    return 0


def _stripe_setup(args: argparse.Namespace, settings: Settings) -> int:
    async def setup() -> tuple[str, str]:
        gateway = StripeGateway(settings)
        try:
            return await gateway.ensure_metered_price(
                unit_amount_decimal=args.unit_amount_decimal, currency=args.currency
            )
        finally:
            await gateway.close()

    meter_id, price_id = asyncio.run(setup())
    print(f"# meter {meter_id}; add these lines to .env")
    print(f"METERAPI_STRIPE_PRICE_ID={price_id}")
    print(f"METERAPI_STRIPE_METER_EVENT_NAME={settings.stripe_meter_event_name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meterapi", description="Sell your HTTP API by usage, billed through Stripe."
    )
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

    usage = commands.add_parser("usage", help="the usage ledger").add_subparsers(
        dest="usage_command", required=True
    )
    flush = usage.add_parser("flush", help="report everything pending to Stripe now, then exit")
    flush.add_argument("--timeout", type=float, default=60.0, help="seconds to keep trying")
    flush.set_defaults(handler=_usage_flush)

    stripe = commands.add_parser("stripe", help="the Stripe account").add_subparsers(
        dest="stripe_command", required=True
    )
    setup = stripe.add_parser(
        "setup", help="create (or reuse) the meter, product and metered price; print .env lines"
    )
    setup.add_argument("--unit-amount-decimal", default="1", help="cents per unit, e.g. 0.5")
    setup.add_argument("--currency", default="usd")
    setup.set_defaults(handler=_stripe_setup)
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
