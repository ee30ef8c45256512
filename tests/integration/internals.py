"""The few places a test reaches inside a running app, each named for why.

Tests drive the service through its public surface: HTTP, the ``meterapi`` command, and the
package's documented functions, with the database and the Stripe emulator as witnesses. What
follows cannot be reached from there; every reach into ``app.state`` goes through this module
(``tests/unit/test_test_layout.py`` keeps it so), so a change to the inside breaks one file.
"""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from meterapi.db import Sessionmaker
from meterapi.keys.cache import KeyCache
from meterapi.keys.invalidation import Invalidator
from meterapi.metering.limits_cache import LimitsCache
from meterapi.metrics import Counter
from meterapi.runtime import Runtime


def _runtime(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


async def break_ledger(app: FastAPI) -> None:
    """Fault injection: the usage ledger stops, as if its database had gone away mid-run."""
    await _runtime(app).recorder.stop()


async def flush_reports(app: FastAPI, *, timeout_s: float = 10) -> int:
    """This app's own reporter, now rather than at its next interval; what is left unsent.

    (``meterapi usage flush`` is another reporter in another process: a test of this app's
    reporter, or one that must not wait for the interval, flushes this one.)"""
    return await _runtime(app).reporter.flush(timeout_s=timeout_s)


async def flush_last_used(app: FastAPI) -> int:
    """Write the keys' debounced "last used" times now (they are kept in memory a while)."""
    return await _runtime(app).keys.last_used.flush()


def key_cache(app: FastAPI) -> KeyCache:
    """The process's API-key cache, for the tests of the cache and its invalidation."""
    return _runtime(app).keys.cache


def invalidator(app: FastAPI) -> Invalidator:
    """The process's listener for key and customer changes made elsewhere."""
    return _runtime(app).keys.invalidator


def sessionmaker(app: FastAPI) -> Sessionmaker:
    """The app's own sessions: a change committed through them reaches this process's key cache
    at the commit itself (session hooks), with no notification; what a test of that needs."""
    return _runtime(app).sessionmaker


def key_machinery(app: FastAPI) -> object:
    """Everything the app holds for API keys, to check that its ``repr`` shows no secret."""
    return _runtime(app).keys


def engine(app: FastAPI) -> AsyncEngine:
    """The app's own engine: to count the statements it sends (an event listener on it)."""
    return _runtime(app).engine


def limits_cache(app: FastAPI) -> LimitsCache:
    """The process's cache of each customer's limits, for the tests of its invalidation."""
    return _runtime(app).limits


def rate_limit_unchecked(app: FastAPI) -> Counter:
    """Paid calls let through without a rate-limit count (Redis away), by reason."""
    return _runtime(app).metrics.rate_limit_unchecked


def pepper(app: FastAPI) -> bytes:
    """The key pepper of an app a test built itself (the ``seed`` fixture has the shared app's)."""
    return _runtime(app).key_policy.pepper
