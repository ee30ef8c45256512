"""``meterapi …``: the command line. Each command wraps a service; none holds logic of its own."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from meterapi import emulator_mode, migrations
from meterapi.app import create_app
from meterapi.billing import webhooks
from meterapi.billing.gateway import StripeGateway
from meterapi.config import ConfigError, Settings
from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.errors import DomainError, ValidationFailed
from meterapi.keys import heartbeat
from meterapi.keys import service as key_service
from meterapi.keys.format import is_live_stripe_key
from meterapi.metering import limits, reconcile_report
from meterapi.metering.reconcile import Drift, Reconciler
from meterapi.metrics import MULTIPROCESS_DIR_ENV, multiprocess_dir
from meterapi.outbound import outbox
from meterapi.runtime import Runtime
from meterapi.stripe_emulator import command as emulator_command

log = logging.getLogger("meterapi")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

Command = Callable[[argparse.Namespace, Any], int]


WORKER_STARTUP_TIMEOUT_S = 60

# Libraries that log every request at INFO; their lines would bury what the service says.
QUIET_LOGGERS = ("stripe", "httpx", "httpcore", "hpack", "asyncio", "aiosqlite", "alembic")


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    # As uvicorn's own command does: the working directory's packages are importable (for
    # METERAPI_ROUTERS), here and in the worker processes, which inherit the import path.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        create_app(settings)  # the plug-in routers load and fit, or the start stops here
    except ConfigError as exc:
        print(f"meterapi: configuration error: {exc}", file=sys.stderr)
        return 2
    migrations.upgrade(settings.database_url)
    emulator = None
    if settings.emulator_mode:
        emulator = emulator_mode.start(
            settings,
            host=args.host,
            port=args.port,
            emulator_host=args.emulator_host,
            state_file=args.emulator_state,
        )
    else:
        emulator_mode.warn_without_public_url(settings)
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
        # Our own access log (meterapi.access) replaces uvicorn's, which writes URLs as
        # received, keys and Checkout Session ids in query strings included.
        access_log=False,
        log_config=_log_config(),
        timeout_graceful_shutdown=20,
        # A worker imports the whole service before it answers uvicorn's health check; on a
        # loaded machine that takes longer than uvicorn's 5 s, and the worker is killed and
        # restarted for ever.
        timeout_worker_healthcheck=WORKER_STARTUP_TIMEOUT_S,
    )


def _log_config() -> dict[str, Any]:
    """uvicorn's logging setup, plus our ``meterapi`` loggers (the access log among them) on
    stderr: applied in every worker process, which inherits no handlers from this one."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["meterapi"] = {"format": LOG_FORMAT}
    config["handlers"]["meterapi"] = {
        "formatter": "meterapi",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["meterapi"] = {"handlers": ["meterapi"], "level": "INFO", "propagate": False}
    for name in QUIET_LOGGERS:
        config["loggers"][name] = {"level": "WARNING"}
    return config


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


def _usage_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    if (args.start is None) != (args.end is None):
        print("meterapi: give both --start and --end, or neither", file=sys.stderr)
        return 2
    progress = reconcile_report.Progress(sys.stderr)

    async def run() -> list[Drift]:
        engine = make_engine(settings.database_url)
        gateway = StripeGateway(settings)
        try:
            reconciler = Reconciler(make_sessionmaker(engine), gateway, on_progress=progress.update)
            return await reconciler.run(start=args.start, end=args.end)
        finally:
            progress.close()
            await gateway.close()
            await engine.dispose()

    try:
        rows = asyncio.run(run())
    except DomainError as exc:
        print(f"meterapi: {exc.message}", file=sys.stderr)
        return 1
    print(reconcile_report.table(rows, drift_only=args.drift_only))
    drifting = sum(1 for r in rows if r.drift)
    print(f"{len(rows)} customer(s) reconciled; {drifting} drifting")
    return 1 if drifting else 0


def _limits_set(args: argparse.Namespace, settings: Settings) -> int:
    def rate(value: str | None) -> limits.RateChange:
        if value is None:
            return limits.KEEP
        if value.lower() == "none":
            return None
        return limits.DEFAULT if value.lower() == "default" else value

    def cap(value: str | None) -> limits.CapChange:
        if value is None:
            return limits.KEEP
        if value.lower() == "none":
            return None
        if not value.isdigit():
            raise ValidationFailed("--spend-cap is a whole amount in minor units, or none.")
        return int(value)

    async def apply() -> str:
        engine = make_engine(settings.database_url)
        try:
            async with session_scope(make_sessionmaker(engine)) as session:
                customer = await key_service.find_customer(
                    session, stripe_customer_id=args.customer
                )
                assert customer.id is not None
                row = await limits.set_limits(
                    session,
                    customer_id=customer.id,
                    rate_limit=rate(args.rate),
                    monthly_spend_cap=cap(args.spend_cap),
                )
        finally:
            await engine.dispose()
        shown_rate = (row.rate_limit or "none") if row.rate_limit_set else "default"
        shown_cap = "none" if row.monthly_spend_cap is None else str(row.monthly_spend_cap)
        return f"{args.customer}: rate limit {shown_rate}, monthly spend cap {shown_cap}"

    return _run_printing(apply)


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


def _outbound_list(args: argparse.Namespace, settings: Settings) -> int:
    async def listing() -> str:
        engine = make_engine(settings.database_url)
        try:
            async with session_scope(make_sessionmaker(engine)) as session:
                events, has_more = await outbox.list_events(
                    session,
                    status=args.status,
                    limit=args.limit,
                    starting_after=args.starting_after,
                )
        finally:
            await engine.dispose()
        header = f"{'ID':<36}  {'TYPE':<27}  {'CUSTOMER':<20}  {'STATUS':<9}  TRIES"
        lines = [header + f"  {'CREATED':<20}  ERROR"]
        lines += [
            f"{e.id:<36}  {e.type:<27}  {e.customer_id:<20}  {e.status:<9}  {e.attempts:>5}  "
            f"{e.created_at:%Y-%m-%dT%H:%M:%SZ}  {e.last_error or ''}"
            for e in events
        ]
        if has_more:
            lines.append(f"(more: --starting-after {events[-1].id})")
        return "\n".join(lines)

    return _run_printing(listing)


def _outbound_retry(args: argparse.Namespace, settings: Settings) -> int:
    async def retry() -> str:
        engine = make_engine(settings.database_url)
        try:
            async with session_scope(make_sessionmaker(engine)) as session:
                event = await outbox.retry(session, event_id=args.event_id)
        finally:
            await engine.dispose()
        return f"{event.id} will be sent again (a running service picks it up within a second)"

    return _run_printing(retry)


def _stripe_emulator(args: argparse.Namespace, _settings: Settings | None) -> int:
    return emulator_command.run(args)


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
            # Committed; return once no running process can serve the key any more.
            await heartbeat.await_acknowledged(engine)
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
    serve.add_argument(
        "--emulator-host",
        default="127.0.0.1",
        help="emulator mode only: the address the emulator listens on (0.0.0.0 in a container)",
    )
    serve.set_defaults(handler=_serve)

    emulator = commands.add_parser(
        "stripe-emulator",
        help="run the local Stripe emulator",
        description=emulator_command.DESCRIPTION,
    )
    emulator_command.add_arguments(emulator)
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

    reconcile = usage.add_parser(
        "reconcile",
        help="compare the ledger with Stripe's meter event summaries per customer; "
        "exit 1 on any drift",
    )
    reconcile.add_argument(
        "--start", type=_iso_time, help="window start (ISO 8601, UTC if no zone)"
    )
    reconcile.add_argument("--end", type=_iso_time, help="window end (default: current periods)")
    reconcile.add_argument(
        "--drift-only", action="store_true", help="list only the customers that drift"
    )
    reconcile.set_defaults(handler=_usage_reconcile)

    limits_commands = commands.add_parser("limits", help="customer limits").add_subparsers(
        dest="limits_command", required=True
    )
    limits_set = limits_commands.add_parser("set", help="override a customer's limits")
    limits_set.add_argument("--customer", required=True, help="the customer's Stripe id, cus_…")
    limits_set.add_argument(
        "--rate", help="e.g. 50/second or 6000/minute; none: no limit; default: METERAPI_RATE_LIMIT"
    )
    limits_set.add_argument("--spend-cap", help="monthly cap in minor units (cents), or none")
    limits_set.set_defaults(handler=_limits_set)

    hooks = commands.add_parser(
        "webhooks", help="the Stripe event inbox, and outbound webhooks"
    ).add_subparsers(dest="webhooks_command", required=True)
    replay = hooks.add_parser("replay", help="handle again the stored events whose handling failed")
    replay.set_defaults(handler=_webhooks_replay)
    outbound = hooks.add_parser(
        "outbound", help="events sent to METERAPI_WEBHOOK_URL"
    ).add_subparsers(dest="outbound_command", required=True)
    listing = outbound.add_parser("list", help="list outbound events, newest first")
    listing.add_argument(
        "--status", choices=sorted(outbox.STATUS_FILTERS), help="only events in this state"
    )
    listing.add_argument("--limit", type=int, default=20, help="1-100")
    listing.add_argument("--starting-after", help="an event id from the previous page")
    listing.set_defaults(handler=_outbound_list)
    again = outbound.add_parser(
        "retry", help="send an undelivered event again, under the same webhook-id"
    )
    again.add_argument("event_id", help="the event's id, msg_…")
    again.set_defaults(handler=_outbound_retry)

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


def _iso_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
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
