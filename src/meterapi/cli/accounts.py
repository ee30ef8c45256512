"""Everyday commands: the database schema, the Stripe account, keys, flushing usage."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from meterapi import migrations
from meterapi.billing.gateway import StripeGateway
from meterapi.cli.common import command_engine, run_printing
from meterapi.config import Settings
from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.keys import heartbeat
from meterapi.keys import service as key_service
from meterapi.keys.policy import KeyPolicy
from meterapi.runtime import Runtime

# The longest name a key may have, as POST /v1/keys and the api_key.name column allow.
MAX_KEY_NAME = 100

log = logging.getLogger("meterapi")


def register(commands: Any) -> Any:
    """``db``, ``stripe setup``, ``keys``, and ``usage flush``; returns the ``usage`` group."""
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
    keys = commands.add_parser("keys", help="operator key management").add_subparsers(
        dest="keys_command", required=True
    )
    issue = keys.add_parser("issue", help="issue a key; prints it once, to stdout")
    issue.add_argument("--customer", required=True, help="the customer's Stripe id, cus_…")
    issue.add_argument("--name", type=_key_name, default="default", help="1-100 characters")
    issue.set_defaults(handler=_keys_issue)
    revoke = keys.add_parser("revoke", help="revoke a key now, everywhere")
    revoke.add_argument("key_id")
    revoke.add_argument(
        "--force", action="store_true", help="revoke even the customer's only active key"
    )
    revoke.set_defaults(handler=_keys_revoke)
    return usage


def _key_name(text: str) -> str:
    """The API's rule for a key's name (``POST /v1/keys``): 1-100 characters, none a control
    character; longer would not fit PostgreSQL's column."""
    if not 1 <= len(text) <= MAX_KEY_NAME or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise argparse.ArgumentTypeError(
            f"a key name is 1-{MAX_KEY_NAME} characters, without control characters"
        )
    return text


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


def _keys_issue(args: argparse.Namespace, settings: Settings) -> int:
    policy = KeyPolicy.from_settings(settings)

    async def issue() -> str:
        engine = make_engine(settings.database_url)
        try:
            async with session_scope(make_sessionmaker(engine)) as session:
                key, plaintext = await key_service.issue_for_stripe_customer(
                    session,
                    stripe_customer_id=args.customer,
                    name=args.name,
                    policy=policy,
                )
            log.info("issued key %s for %s", key.id, args.customer)
            return plaintext
        finally:
            await engine.dispose()

    return run_printing(issue)


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def revoke() -> str:
        async with command_engine(settings) as engine:
            async with session_scope(make_sessionmaker(engine)) as session:
                key = await key_service.revoke(
                    session, key_id=args.key_id, customer_id=None, allow_last=args.force
                )
            # Committed; return once no running process can serve the key any more.
            await heartbeat.await_acknowledged(engine)
        log.info("revoked key %s", key.id)
        return f"revoked {key.id}"

    return run_printing(revoke)
