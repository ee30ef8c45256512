"""The operator's commands: reconcile usage with Stripe, customer limits, the webhook inboxes."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

from meterapi.api.admin_ops import EARLIEST, LATEST
from meterapi.billing import webhooks
from meterapi.billing.gateway import StripeGateway
from meterapi.cli.common import command_engine, command_session, run_printing
from meterapi.config import Settings
from meterapi.db import make_sessionmaker
from meterapi.errors import DomainError, ValidationFailed
from meterapi.keys import service as key_service
from meterapi.metering import alerts, limits, reconcile_report
from meterapi.metering.reconcile import Drift, Reconciler
from meterapi.outbound import outbox


def register(commands: Any, usage: Any) -> None:
    """``usage reconcile`` (in the ``usage`` group the caller made), ``limits``, ``webhooks``."""
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


def _usage_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    if (args.start is None) != (args.end is None):
        print("meterapi: give both --start and --end, or neither", file=sys.stderr)
        return 2
    if args.start is not None and args.end is not None and args.end <= args.start:
        print("meterapi: --end must be after --start", file=sys.stderr)
        return 2
    progress = reconcile_report.Progress(sys.stderr)

    async def run() -> list[Drift]:
        gateway = StripeGateway(settings)
        try:
            async with command_engine(settings) as engine:
                sessions = make_sessionmaker(engine)
                reconciler = Reconciler(sessions, gateway, on_progress=progress.update)
                return await reconciler.run(start=args.start, end=args.end)
        finally:
            progress.close()
            await gateway.close()

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
        new_cap = cap(args.spend_cap)
        gateway = StripeGateway(settings)
        try:
            async with command_session(settings) as session:
                customer = await key_service.find_customer(
                    session, stripe_customer_id=args.customer
                )
                assert customer.id is not None
                row = await alerts.change_limits(
                    session,
                    customer_id=customer.id,
                    rate_limit=rate(args.rate),
                    monthly_spend_cap=new_cap,
                    pricing=limits.Pricing(gateway, settings.stripe_price_id),
                )
        finally:
            await gateway.close()
        shown_rate = (row.rate_limit or "none") if row.rate_limit_set else "default"
        shown_cap = "none" if row.monthly_spend_cap is None else str(row.monthly_spend_cap)
        return f"{args.customer}: rate limit {shown_rate}, monthly spend cap {shown_cap}"

    return run_printing(apply)


def _webhooks_replay(args: argparse.Namespace, settings: Settings) -> int:
    async def replay() -> str:
        gateway = StripeGateway(settings)
        try:
            async with command_session(settings) as session:
                receipts = await webhooks.replay_unprocessed(
                    session, gateway=gateway, price_id=settings.stripe_price_id
                )
        finally:
            await gateway.close()
        failing = (webhooks.Outcome.FAILED, webhooks.Outcome.FAILED_PERMANENTLY)
        failed = sum(r.outcome in failing for r in receipts)
        return f"replayed {len(receipts)} stored event(s); {failed} still failing"

    return run_printing(replay)


def _outbound_list(args: argparse.Namespace, settings: Settings) -> int:
    async def listing() -> str:
        async with command_session(settings) as session:
            events, has_more = await outbox.list_events(
                session, status=args.status, limit=args.limit, starting_after=args.starting_after
            )
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

    return run_printing(listing)


def _outbound_retry(args: argparse.Namespace, settings: Settings) -> int:
    async def retry() -> str:
        async with command_session(settings) as session:
            event = await outbox.retry(session, event_id=args.event_id)
        return f"{event.id} will be sent again (a running service picks it up within a second)"

    return run_printing(retry)


def _iso_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    # As the operator API's reconciliation: a window Stripe's summaries (and a datetime) can hold.
    if not EARLIEST <= value <= LATEST:
        raise argparse.ArgumentTypeError(f"must be between {EARLIEST:%Y} and {LATEST:%Y}: {text!r}")
    return value
