"""``meterapi …``: the command line. Each command wraps a service; none holds logic of its own.

``serve`` runs the service (``cli.serve``); ``accounts`` holds the everyday commands (schema,
Stripe setup, keys, flushing usage); ``operations`` the operator's (reconcile, limits, webhooks).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from meterapi import emulator_mode
from meterapi.billing.gateway import StripeCallError
from meterapi.cli import accounts, operations, serve
from meterapi.config import ConfigError, Settings
from meterapi.stripe_emulator import command as emulator_command

Command = Callable[[argparse.Namespace, Any], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meterapi", description="Sell your HTTP API by usage, billed through Stripe."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve.register(commands)
    emulator = commands.add_parser(
        "stripe-emulator",
        help="run the local Stripe emulator",
        description=emulator_command.DESCRIPTION,
    )
    emulator_command.add_arguments(emulator)
    emulator.set_defaults(handler=_stripe_emulator, needs_settings=False)
    usage = accounts.register(commands)
    operations.register(commands, usage)
    return parser


def _stripe_emulator(args: argparse.Namespace, _settings: Settings | None) -> int:
    return emulator_command.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=serve.LOG_FORMAT)
    for name in serve.QUIET_LOGGERS:
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
    if handler is not serve.serve_handler and settings.emulator_mode:
        settings = _at_the_emulator(settings)
    try:
        return int(handler(args, settings))
    # Said in one line, never with a traceback (nor the database URL: it may hold a password).
    except SQLAlchemyError as exc:
        print(f"meterapi: the database could not be used: {_first_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the database's server does not answer
        print(f"meterapi: {_first_line(exc)}", file=sys.stderr)
        return 1
    except StripeCallError as exc:
        print(f"meterapi: the Stripe call failed: {_first_line(exc)}", file=sys.stderr)
        return 1


def _at_the_emulator(settings: Settings) -> Settings:
    """Without a Stripe key, the commands that call Stripe (``stripe setup``, ``usage flush``,
    ``usage reconcile``…) talk to the emulator ``meterapi serve`` runs, not to Stripe itself
    (which would refuse the emulator's key); an explicit METERAPI_STRIPE_API_BASE still wins."""
    if "stripe_api_base" in settings.model_fields_set:
        return settings
    base = emulator_mode.url_of("127.0.0.1", emulator_mode.EMULATOR_PORT)
    return settings.model_copy(update={"stripe_api_base": base})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _config_message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        # Name the fields only: pydantic's text would echo the (secret) input values.
        return "; ".join(
            (f"METERAPI_{'.'.join(map(str, e['loc'])).upper()}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
    return str(exc)
