"""``meterapi …``: the command line. Each command wraps a service; none holds logic of its own."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from meterapi import migrations
from meterapi.billing import webhooks
from meterapi.billing.gateway import EMULATOR_WEBHOOK_SECRET, StripeGateway
from meterapi.config import ConfigError, Settings
from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.errors import DomainError
from meterapi.keys import service as key_service
from meterapi.keys.format import is_live_stripe_key
from meterapi.metrics import MULTIPROCESS_DIR_ENV, multiprocess_dir
from meterapi.runtime import Runtime
from meterapi.stripe_emulator import EmulatorServer
from meterapi.stripe_emulator import main as emulator_main

log = logging.getLogger("meterapi")

Command = Callable[[argparse.Namespace, Any], int]


EMULATOR_PORT = 12111
WORKER_HEALTHCHECK_S = 30
EMULATOR_BANNER = """
  ======================================================================
   EMULATOR MODE: no METERAPI_STRIPE_SECRET_KEY is set.
   Stripe is the built-in emulator at {url}; no real money moves.
   Subscribe at {public}/dashboard, or POST {public}/v1/checkout.
  ======================================================================
"""


def _start_emulator(args: argparse.Namespace, settings: Settings) -> EmulatorServer:
    """Run the Stripe emulator beside the service and point this process's settings at it."""
    local_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host  # noqa: S104
    webhook_url = f"http://{local_host}:{args.port}/webhooks/stripe"
    state_file = str(Path(args.emulator_state).resolve())
    server = None
    for port in (EMULATOR_PORT, 0):  # the usual port, else any free one
        candidate = EmulatorServer(
            port=port,
            webhook_url=webhook_url,
            webhook_secret=EMULATOR_WEBHOOK_SECRET,
            state_file=state_file,
        )
        try:
            server = candidate.start()
            break
        except OSError:
            continue
    assert server is not None, "no port for the Stripe emulator"
    wired = settings.model_copy(update={"stripe_api_base": server.url})

    async def bootstrap() -> str:
        gateway = StripeGateway(wired)
        try:
            return (await gateway.ensure_metered_price())[1]
        finally:
            await gateway.close()

    price_id = settings.stripe_price_id or asyncio.run(bootstrap())
    # Workers build their own Settings from the environment.
    os.environ["METERAPI_STRIPE_API_BASE"] = server.url
    os.environ["METERAPI_STRIPE_PRICE_ID"] = price_id
    public = f"http://{local_host}:{args.port}"
    print(EMULATOR_BANNER.format(url=server.url, public=public), flush=True)
    return server


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    migrations.upgrade(settings.database_url)
    emulator = _start_emulator(args, settings) if settings.emulator_mode else None
    try:
        with _shared_metrics(args.workers):
            _run_uvicorn(args)
    finally:
        if emulator is not None:
            emulator.stop()
    return 0


@contextlib.contextmanager
def _shared_metrics(workers: int) -> Iterator[None]:
    """With several workers, a fresh directory where they add up their metrics (removed after).

    Set before the workers start, so each imports ``prometheus-client`` in its multiprocess
    mode; one worker counts in memory. An operator's own PROMETHEUS_MULTIPROC_DIR is kept.
    """
    if workers <= 1 or multiprocess_dir() is not None:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="meterapi-metrics-") as shared:
        os.environ[MULTIPROCESS_DIR_ENV] = shared
        try:
            yield
        finally:
            os.environ.pop(MULTIPROCESS_DIR_ENV, None)


def _run_uvicorn(args: argparse.Namespace) -> None:
    import uvicorn  # the server is only needed by this command

    uvicorn.run(
        "meterapi.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        # X-Forwarded-* are believed by the app, from METERAPI_TRUSTED_PROXIES only; uvicorn's
        # own handling would trust 127.0.0.1 (or $FORWARDED_ALLOW_IPS) whatever the setting.
        proxy_headers=False,
        log_level="info",
        timeout_graceful_shutdown=20,
        # A worker answers uvicorn's health check once its lifespan has started; on a busy
        # host that takes longer than uvicorn's 5 s, and the workers were killed in a loop.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
    )


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


def _webhooks_replay(args: argparse.Namespace, settings: Settings) -> int:
    async def replay() -> str:
        engine = make_engine(settings.database_url)
        gateway = StripeGateway(settings)
        try:
            async with session_scope(make_sessionmaker(engine)) as session:
                receipts = await webhooks.replay_unprocessed(
                    session, gateway=gateway, price_id=settings.stripe_price_id
                )
        finally:
            await gateway.close()
            await engine.dispose()
        failing = (webhooks.Outcome.FAILED, webhooks.Outcome.FAILED_PERMANENTLY)
        failed = sum(r.outcome in failing for r in receipts)
        return f"replayed {len(receipts)} stored event(s); {failed} still failing"

    return _run_printing(replay)


def _stripe_emulator(args: argparse.Namespace, _settings: Settings | None) -> int:
    return emulator_main(list(args.emulator_args))


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
    parser = argparse.ArgumentParser(
        prog="meterapi", description="Sell your HTTP API by usage, billed through Stripe."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="migrate the database, then run the service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--emulator-state",
        default="meterapi-emulator.json",
        help="emulator mode only: where the emulator keeps its state between runs",
    )
    serve.set_defaults(handler=_serve)

    emulator = commands.add_parser(
        "stripe-emulator", help="run the local Stripe emulator", add_help=False
    )
    emulator.add_argument("emulator_args", nargs=argparse.REMAINDER)
    emulator.set_defaults(handler=_stripe_emulator, needs_settings=False)

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

    hooks = commands.add_parser("webhooks", help="the Stripe event inbox").add_subparsers(
        dest="webhooks_command", required=True
    )
    replay = hooks.add_parser("replay", help="handle again the stored events whose handling failed")
    replay.set_defaults(handler=_webhooks_replay)

    stripe = commands.add_parser("stripe", help="the Stripe account").add_subparsers(
        dest="stripe_command", required=True
    )
    setup = stripe.add_parser(
        "setup", help="create (or reuse) the meter, product and metered price; print .env lines"
    )
    setup.add_argument("--unit-amount-decimal", default="1", help="cents per unit, e.g. 0.5")
    setup.add_argument("--currency", default="usd")
    setup.set_defaults(handler=_stripe_setup)
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
    if not getattr(args, "needs_settings", True):
        handler: Command = args.handler
        return handler(args, None)
    try:
        settings = Settings()
    except (ConfigError, ValidationError) as exc:
        print(f"meterapi: configuration error: {_config_message(exc)}", file=sys.stderr)
        return 2
    handler = args.handler
    return int(handler(args, settings))


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
