"""``meterapi serve``: migrate, start the emulator when no Stripe key is set, run uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from meterapi import emulator_mode, migrations
from meterapi.app import create_app
from meterapi.config import ConfigError, Settings
from meterapi.metrics import MULTIPROCESS_DIR_ENV, multiprocess_dir

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_STARTUP_TIMEOUT_S = 60

# Libraries that log every request at INFO; their lines would bury what the service says.
QUIET_LOGGERS = ("stripe", "httpx", "httpcore", "hpack", "asyncio", "aiosqlite", "alembic")


def register(commands: Any) -> None:
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
