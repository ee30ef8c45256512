"""Cross-process cache invalidation: a change to a key or to a customer's access is seen by the
very next request in this process, and within a bounded delay in every other process.

How it works
------------
1. Whatever changes a key (revoke, rotate) or a customer's subscription state calls
   ``await bump(session, key_id=…, customer_id=…)`` inside the transaction that makes the change.
   ``bump`` increments the single ``cache_revision`` row (``UPDATE … RETURNING``) and, on
   PostgreSQL, queues ``pg_notify('meterapi_cache', '<revision>|k:<key id>,c:<customer id>')``.
   Both are transactional: a rolled-back change bumps nothing and notifies no one.
2. In this process, the session's ``after_commit`` event drops the affected entries from the
   cache the session's sessionmaker was attached to (``attach``) — after the commit, so a
   concurrent request cannot re-read the old row and re-cache it (``KeyCache.generation``
   discards any fill whose read started before the invalidation).
3. Other processes, PostgreSQL: one dedicated asyncpg connection per process LISTENs on
   ``meterapi_cache``. PostgreSQL delivers the notification when the changing transaction
   commits; the listener drops the named entries. Staleness is the delivery latency (the commit
   returns, then the notification crosses one socket — typically well under 10 ms on one host).
   When the listener connection is lost, the cache is cleared on reconnect, since notifications
   sent meanwhile are gone.
4. Every process also polls ``cache_revision`` (one indexed row): every ``fast_poll_s`` (0.5 s)
   on SQLite or while the PostgreSQL listener is down, every ``slow_poll_s`` (5 s) as a backstop
   while it is up. If the revision moved by anything this process did not already apply, the
   whole cache is cleared. On SQLite (several workers on one file) the bound on staleness is
   therefore the poll interval, 0.5 s plus the poll's own duration.
5. Whatever happens, no entry outlives the cache TTL (``METERAPI_KEY_CACHE_TTL_S``), which
   bounds staleness if the database itself cannot be reached to poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.db import Sessionmaker
from meterapi.keys.cache import KeyCache

log = logging.getLogger(__name__)

CHANNEL = "meterapi_cache"
_CACHE_INFO = "meterapi.keys.cache"
_PENDING_INFO = "meterapi.keys.pending_invalidations"
_BUMP = text("UPDATE cache_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision")
_READ = text("SELECT revision FROM cache_revision WHERE id = 1")
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


@dataclass(frozen=True, slots=True)
class Change:
    revision: int
    key_ids: tuple[str, ...] = ()
    customer_ids: tuple[int, ...] = ()

    def payload(self) -> str:
        targets = [f"k:{k}" for k in self.key_ids] + [f"c:{c}" for c in self.customer_ids]
        return f"{self.revision}|{','.join(targets)}"

    @classmethod
    def from_payload(cls, payload: str) -> Change:
        revision, _, targets = payload.partition("|")
        names = [t for t in targets.split(",") if t]
        return cls(
            revision=int(revision),
            key_ids=tuple(t[2:] for t in names if t.startswith("k:")),
            customer_ids=tuple(int(t[2:]) for t in names if t.startswith("c:")),
        )

    def apply(self, cache: KeyCache) -> None:
        cache.invalidate(key_ids=self.key_ids, customer_ids=self.customer_ids)
        cache.advance_revision(self.revision)


async def bump(
    session: AsyncSession, *, key_id: str | None = None, customer_id: int | None = None
) -> int:
    """Announce that a key or a customer's access changed; call inside the changing transaction.

    Returns the new cache revision. Takes effect for every process when the transaction commits.
    """
    connection = await session.connection()  # the session's transaction, Core statements
    revision = (await connection.execute(_BUMP)).scalar_one()
    change = Change(
        revision=revision,
        key_ids=(key_id,) if key_id is not None else (),
        customer_ids=(customer_id,) if customer_id is not None else (),
    )
    if session.get_bind().dialect.name == "postgresql":
        await connection.execute(_NOTIFY, {"channel": CHANNEL, "payload": change.payload()})
    session.info.setdefault(_PENDING_INFO, []).append(change)
    return int(revision)


def attach(sessionmaker: Sessionmaker, cache: KeyCache) -> None:
    """Sessions from ``sessionmaker`` apply their own changes to ``cache`` when they commit."""
    sessionmaker.configure(info={_CACHE_INFO: cache})


@event.listens_for(Session, "after_commit")
def _apply_committed(session: Session) -> None:
    changes: list[Change] = session.info.pop(_PENDING_INFO, [])
    cache = session.info.get(_CACHE_INFO)
    if isinstance(cache, KeyCache):
        for change in changes:
            change.apply(cache)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_PENDING_INFO, None)


def asyncpg_dsn(database_url: str) -> str:
    """The plain libpq-style address asyncpg understands, from a SQLAlchemy URL."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class Invalidator:
    """Keeps one process's cache in step with the database: the LISTEN task and the poller."""

    def __init__(
        self,
        cache: KeyCache,
        *,
        engine: AsyncEngine,
        database_url: str,
        fast_poll_s: float = 0.5,
        slow_poll_s: float = 5.0,
    ) -> None:
        self.cache = cache
        self.engine = engine
        self.listen = database_url.startswith("postgresql")
        self._dsn = asyncpg_dsn(database_url) if self.listen else ""
        self.fast_poll_s = fast_poll_s
        self.slow_poll_s = slow_poll_s
        self.listening = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"Invalidator(listen={self.listen}, listening={self.listening.is_set()})"

    async def start(self, *, settle_s: float = 5.0) -> None:
        """Start listening and polling; wait (at most ``settle_s``) for the first revision read
        and the first LISTEN attempt, so that no entry is cached before the cache has a
        reference point. A database that is down delays nothing: both keep retrying."""
        first_attempt = asyncio.Event()
        if self.listen:
            self._tasks.append(
                asyncio.create_task(self._listen_forever(first_attempt), name="key-cache-listen")
            )
        else:
            first_attempt.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(settle_s):
                await first_attempt.wait()
                await self.poll_once()
        self._tasks.append(asyncio.create_task(self._poll_forever(), name="key-cache-poller"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def poll_once(self) -> bool:
        """Read ``cache_revision``; True if the cache was cleared because it moved."""
        async with self.engine.connect() as connection:
            revision = (await connection.execute(_READ)).scalar_one_or_none()
        return revision is not None and self.cache.observe_revision(int(revision))

    async def _poll_forever(self) -> None:
        failures = 0
        while True:
            try:
                async with asyncio.timeout(10):
                    await self.poll_once()
                failures = 0
            except Exception as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning(
                        "key cache poll failed (%d times): %s", failures, type(exc).__name__
                    )
            fast = not self.listening.is_set()
            await asyncio.sleep(self.fast_poll_s if fast else self.slow_poll_s)

    async def _listen_forever(self, first_attempt: asyncio.Event) -> None:
        delay = 0.5
        while True:
            try:
                connection = await asyncpg.connect(self._dsn, timeout=5)
            except Exception as exc:
                first_attempt.set()
                log.warning("key cache listener cannot connect: %s", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 0.5
            closed = asyncio.Event()
            try:
                connection.add_termination_listener(lambda _c, event=closed: event.set())
                await connection.add_listener(CHANNEL, self._on_notification)
                # Whatever changed before we listened was not heard: start from a clean cache.
                self.cache.clear()
                self.listening.set()
                first_attempt.set()
                await closed.wait()
                log.warning("key cache listener connection lost; reconnecting")
            except Exception as exc:
                first_attempt.set()
                log.warning("key cache listener failed: %s", type(exc).__name__)
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), timeout=2)
            await asyncio.sleep(delay)

    def _on_notification(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            change = Change.from_payload(payload)
        except ValueError:
            log.warning("key cache: unreadable notification; clearing the cache")
            self.cache.clear()
            return
        change.apply(self.cache)
