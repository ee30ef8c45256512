"""``meterapi serve``: migrate, start the emulator when no Stripe key is set, run uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import FastAPI

from meterapi import emulator_mode, migrations
from meterapi.app import create_app
from meterapi.cli.workers import serve_workers
from meterapi.config import ConfigError, Settings
from meterapi.metrics import MULTIPROCESS_DIR_ENV, multiprocess_dir
from meterapi.stripe_emulator.command import tcp_port

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_STARTUP_TIMEOUT_S = 60

# Libraries that log every request at INFO; their lines would bury what the service says.
QUIET_LOGGERS = ("stripe", "httpx", "httpcore", "hpack", "asyncio", "aiosqlite", "alembic")

# How many more container objects may be allocated than freed before the youngest generation is
# collected (Python's default is 700). A paid request holds its objects while it waits for the
# ledger's commit, and with 700 the requests in flight alone set off 10-13 young collections a
# second at 1,700 req/s, with an older one every second and a full one now and then; at 10,000,
# none in 15 s (docs/performance.md). A young collection's cost follows the objects alive, not
# this number; the few reference cycles the service makes are still collected, only later.
YOUNG_GC_THRESHOLD = 10_000
SERVED_APP = "meterapi.cli.serve:create_served_app"


def register(commands: Any) -> None:
    serve = commands.add_parser("serve", help="migrate the database, then run the service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=tcp_port, default=8000)
    serve.add_argument("--workers", type=_worker_count, default=1)
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
    serve.set_defaults(handler=serve_handler)


def _worker_count(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if workers < 1:
        raise argparse.ArgumentTypeError(f"at least 1 worker, not {workers}")
    return workers


def serve_handler(args: argparse.Namespace, settings: Settings) -> int:
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


def create_served_app() -> FastAPI:
    """The app as ``meterapi serve`` runs it in each worker process: ``create_app`` with the
    settings of the environment, and the process tuned once the service has started: its
    garbage collector (``METERAPI_GC_TUNING``) and its thread switch interval
    (``METERAPI_SWITCH_INTERVAL_S``)."""
    settings = Settings()
    app = create_app(settings)
    tune_process_once_started(app, settings)
    return app


def tune_process_once_started(app: FastAPI, settings: Settings) -> None:
    """Once ``app`` has started, tune this process for serving, for the process's life.

    Process-wide, so the serving process's entrypoint does it, never ``create_app``: two apps
    in one process (tests, an embedding program) would otherwise change each other's process.
    """
    started = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[Any]:
        async with started(app_) as state:
            if settings.gc_tuning:
                _tune_gc()
            # How long a thread that wants the interpreter waits for the event loop's thread to
            # hand it over. On SQLite each ledger commit runs on the driver's thread, which
            # needs the interpreter twice per commit (to start the statement and to hand back
            # its result); with Python's 5 ms the commit waited for the event loop to run out
            # of work, so it never overlapped with serving (docs/performance.md).
            sys.setswitchinterval(settings.switch_interval_s)
            yield state

    app.router.lifespan_context = lifespan


def _tune_gc() -> None:
    # Everything alive now (modules, the app, pools, caches) lives as long as the process: keep
    # it out of the collector's full passes. Without this, under load each full collection
    # walked ~130,000 objects for tens of milliseconds, about once a second on the metered path,
    # and showed up as p99 latency and lost throughput (docs/performance.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])


def _run_uvicorn(args: argparse.Namespace) -> None:
    import uvicorn  # the server is only needed by this command

    options: dict[str, Any] = {
        "factory": True,
        # X-Forwarded-* are believed by the app, from METERAPI_TRUSTED_PROXIES only; uvicorn's
        # own handling would trust 127.0.0.1 (or $FORWARDED_ALLOW_IPS) whatever the setting.
        "proxy_headers": False,
        "log_level": "info",
        # Our own access log (meterapi.access) replaces uvicorn's, which writes URLs as
        # received, keys and Checkout Session ids in query strings included.
        "access_log": False,
        "log_config": _log_config(),
        "timeout_graceful_shutdown": 20,
        # A worker imports the whole service before it answers uvicorn's health check; on a
        # loaded machine that takes longer than uvicorn's 5 s, and the worker is killed and
        # restarted for ever.
        "timeout_worker_healthcheck": WORKER_STARTUP_TIMEOUT_S,
    }
    if args.workers > 1:
        # Each worker accepts on its own socket, so connections are spread across them.
        serve_workers(
            SERVED_APP, host=args.host, port=args.port, workers=args.workers, **options
        )  # imported in each worker process
    else:
        uvicorn.run(SERVED_APP, host=args.host, port=args.port, **options)


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
