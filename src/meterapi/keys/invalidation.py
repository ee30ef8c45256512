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
   commits; the listener drops the named entries and checks in at once (4). When the listener
   connection is lost, the cache is cleared on reconnect, since notifications sent meanwhile
   are gone.
4. Every process checks in (``Invalidator.check_in``): it reads ``cache_revision`` (one row)
   and, if the revision moved by anything this process did not already apply, clears the whole
   cache; then it records the revision it has applied in its ``process_heartbeat`` row. Every
   ``fast_poll_s`` (0.05 s) on SQLite or while the PostgreSQL listener is down, every
   ``slow_poll_s`` (0.5 s) while it is up, and at once after a notification.
5. Revocation waits for the acknowledgements: ``keys.heartbeat.await_acknowledged`` returns when
   every live process has recorded the new revision, and at the latest when any process that
   has not has stopped trusting its cache (it does so ``heartbeat.TRUST_S`` after its last
   successful check-in, and then reads the database on every request). So when a revocation
   returns, no process serves the key (CONTRACT §3); other changes (rotation with a grace,
   subscription state) reach every process within one check-in and are not waited for.
6. Whatever happens, no entry outlives the cache TTL (``METERAPI_KEY_CACHE_TTL_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.db import Sessionmaker, is_postgres, make_engine
from meterapi.keys import heartbeat
from meterapi.keys.cache import KeyCache

log = logging.getLogger(__name__)

CHANNEL = "meterapi_cache"
_CACHE_INFO = "meterapi.keys.cache"
_PENDING_INFO = "meterapi.keys.pending_invalidations"
_BUMP = text("UPDATE cache_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision")
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")
_READ_REVISION_SQL = str(heartbeat.READ_REVISION)


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
    if is_postgres(session):
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
    """Keeps one process's cache in step with the database: the LISTEN task, and the check-ins
    that poll the revision, acknowledge it in this process's heartbeat row and keep the cache
    trusted (``keys.heartbeat``). Both use connections of their own, so that a request load
    holding the service's pool cannot starve them into distrusting the cache."""

    def __init__(
        self,
        cache: KeyCache,
        *,
        database_url: str,
        fast_poll_s: float = 0.05,
        slow_poll_s: float = 0.5,
        beat_s: float = 0.5,
        trust_s: float = heartbeat.TRUST_S,
    ) -> None:
        self.cache = cache
        self.listen = is_postgres(database_url)
        self._dsn = asyncpg_dsn(database_url) if self.listen else ""
        self.engine = (
            make_engine(database_url, pool_size=1, max_overflow=1)
            if self.listen
            else make_engine(database_url)
        )
        self.fast_poll_s = fast_poll_s
        self.slow_poll_s = slow_poll_s
        self.beat_s = beat_s
        self.trust_s = trust_s
        self.heartbeat = heartbeat.Heartbeat()
        self.listening = asyncio.Event()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._acknowledged: int | None = None  # the revision the heartbeat row holds
        self._beat_started = -math.inf  # monotonic start of the last check-in that wrote it
        self._tasks: list[asyncio.Task[None]] = []
        self._reader: tuple[AsyncConnection, Any] | None = None  # SQLite (_read_revision)
        cache.trusted_until = -math.inf  # nothing is trusted before the first check-in

    def __repr__(self) -> str:
        return (
            f"Invalidator(listen={self.listen}, listening={self.listening.is_set()}, "
            f"{self.heartbeat!r})"
        )

    async def start(self, *, settle_s: float = 5.0) -> None:
        """Start listening and polling; wait (at most ``settle_s``) for the first check-in and
        the first LISTEN attempt, so that no entry is cached before the cache has a reference
        point. A database that is down delays nothing: both keep retrying, and until a check-in
        succeeds every request reads the database."""
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
                await self.check_in()
        self._tasks.append(asyncio.create_task(self._poll_forever(), name="key-cache-poller"))

    async def stop(self) -> None:
        # Deaf from now on, so trust nothing (requests still in flight read the database).
        self.cache.trusted_until = -math.inf
        # Let a check-in in flight finish rather than cancel it inside the driver's thread hop.
        self._stopping.set()
        self._wake.set()
        for task in self._tasks:
            if task.get_name() != "key-cache-poller":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=12)
        self._tasks.clear()
        try:
            async with asyncio.timeout(5):
                await self.heartbeat.leave(self.engine)  # revocations stop waiting for us
        except Exception as exc:
            log.warning("could not remove this process's heartbeat: %s", type(exc).__name__)
        finally:
            if self._reader is not None:
                with contextlib.suppress(Exception):
                    await self._reader[0].close()
                self._reader = None
            await self.engine.dispose()

    async def check_in(self) -> bool:
        """Read ``cache_revision`` (clearing the cache if it moved), record the revision now
        applied in the heartbeat row when it changed or ``beat_s`` passed, and extend the
        cache's trust from this check-in's start. True if the cache was cleared."""
        started = self.cache.clock()
        revision = await self._read_revision()
        cleared = revision is not None and self.cache.observe_revision(revision)
        applied = self.cache.revision
        if applied is not None and (
            applied != self._acknowledged or started - self._beat_started >= self.beat_s
        ):
            async with self.engine.connect() as connection:
                await self.heartbeat.beat(connection, revision=applied)
                await connection.commit()
            self._acknowledged = applied
            self._beat_started = started
        # Trusted while both this read and the row's time are recent (keys.heartbeat).
        if not self._stopping.is_set():
            self.cache.trusted_until = min(started, self._beat_started) + self.trust_s
        return cleared

    async def _read_revision(self) -> int | None:
        if self.listen:  # PostgreSQL
            async with self.engine.connect() as connection:
                revision = (await connection.execute(heartbeat.READ_REVISION)).scalar_one_or_none()
            return None if revision is None else int(revision)
        # SQLite, every fast_poll_s in every process: one statement on a driver connection kept
        # for it, in autocommit (db.py). Through the pool, each read was a checkout, a
        # transaction (begun IMMEDIATE, db.py: the file's write lock, taken from the ledger's
        # writers 20 times a second by every process), the SELECT and the pool's reset: about
        # 1 ms of CPU per read, 2% of a core per idle process.
        if self._reader is None:
            connection = await self.engine.connect()
            driver = (await connection.get_raw_connection()).driver_connection
            self._reader = (connection, driver)
        connection, driver = self._reader
        try:
            rows = await driver.execute_fetchall(_READ_REVISION_SQL)
        except BaseException:
            # Whatever went wrong, this connection is not trusted again.
            self._reader = None
            with contextlib.suppress(Exception):
                await connection.invalidate()
                await connection.close()
            raise
        return int(rows[0][0]) if rows else None

    async def _poll_forever(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(10):
                    await self.check_in()
                failures = 0
            except Exception as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning(
                        "key cache check-in failed (%d times): %s", failures, type(exc).__name__
                    )
            fast = not self.listening.is_set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), self.fast_poll_s if fast else self.slow_poll_s
                )
            self._wake.clear()

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
            self._wake.set()
            return
        change.apply(self.cache)
        self._wake.set()  # acknowledge now: a revocation may be waiting for this process
