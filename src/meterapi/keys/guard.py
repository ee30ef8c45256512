"""``KeyGuard``: one process's long-lived key machinery — the cache, its invalidation, and the
``last_used_at`` writer — and the authentication call the API's dependency makes."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from meterapi.config import Settings
from meterapi.db import Sessionmaker
from meterapi.errors import InvalidApiKey
from meterapi.keys import hashing, heartbeat, invalidation, service
from meterapi.keys.cache import KeyCache
from meterapi.keys.format import is_live_stripe_key
from meterapi.keys.heartbeat import Acknowledgement
from meterapi.keys.invalidation import Invalidator
from meterapi.keys.last_used import LastUsedTracker
from meterapi.keys.service import Principal
from meterapi.models import utcnow


class KeyGuard:
    def __init__(
        self,
        *,
        pepper: bytes,
        live: bool,
        past_due_grace_s: int,
        cache: KeyCache,
        invalidator: Invalidator,
        last_used: LastUsedTracker,
        sessionmaker: Sessionmaker,
        engine: AsyncEngine,
    ) -> None:
        self._pepper = pepper
        self.sessionmaker = sessionmaker
        self.engine = engine
        self.live = live
        self.past_due_grace_s = past_due_grace_s
        self.cache = cache
        self.invalidator = invalidator
        self.last_used = last_used
        # Cache fills in progress, by digest: concurrent misses on one key share one read.
        self._fills: dict[str, asyncio.Task[None]] = {}
        self._check_in_task: asyncio.Task[bool] | None = None

    def __repr__(self) -> str:  # never the pepper
        return f"KeyGuard(live={self.live}, cache={self.cache!r})"

    @classmethod
    def build(
        cls, settings: Settings, *, engine: AsyncEngine, sessionmaker: Sessionmaker
    ) -> KeyGuard:
        """Build without I/O and attach the cache to ``sessionmaker``'s commits."""
        cache = KeyCache(max_entries=settings.key_cache_size, ttl_s=settings.key_cache_ttl_s)
        invalidation.attach(sessionmaker, cache)
        secret = settings.stripe_secret_key
        return cls(
            pepper=settings.pepper_bytes(),
            live=is_live_stripe_key(secret.get_secret_value() if secret else None),
            past_due_grace_s=settings.past_due_grace_s,
            cache=cache,
            invalidator=Invalidator(cache, database_url=settings.database_url),
            last_used=LastUsedTracker(sessionmaker),
            sessionmaker=sessionmaker,
            engine=engine,
        )

    @property
    def pepper(self) -> bytes:
        return self._pepper

    async def propagate(self) -> Acknowledgement:
        """After committing a revocation: return once no other process can serve the key
        (every live one applied the change, or stopped trusting its cache; keys.heartbeat)."""
        return await heartbeat.await_acknowledged(
            self.engine, exclude=self.invalidator.heartbeat.id
        )

    async def start(self) -> None:
        await self.invalidator.start()
        self.last_used.start()

    async def stop(self) -> None:
        await self.invalidator.stop()
        await self.last_used.stop()

    async def authenticate(
        self, plaintext: str, *, require_access: bool = True, now: datetime | None = None
    ) -> Principal:
        """The caller behind ``plaintext``. A warm key is answered from the cache without
        opening a session; otherwise a short session of our own reads the key.

        ``require_access=False`` admits any valid key whatever the subscription's state: for
        the customer's own keys, usage and billing portal, which a lapsed customer needs most.
        """
        now = now or utcnow()
        principal = None
        if not self.cache.trusted():
            await self._check_in()
        # Still untrusted (the invalidation feed cannot be heard): the database answers.
        if self.cache.trusted():
            principal = self._from_cache(plaintext, require_access=require_access, now=now)
            if principal is None:
                await self._fill(plaintext, now)
                principal = self._from_cache(plaintext, require_access=require_access, now=now)
        if principal is None:  # untrusted, or invalidated since the fill: read for this request
            principal = await self._read(plaintext, require_access=require_access, now=now)
        self.last_used.note(principal.key_id, now)
        return principal

    async def _check_in(self) -> None:
        """The cache's trust ran out (the poller is late: a starved event loop, a slow
        database): check in now, once for all concurrent callers. Failing, callers read the
        database themselves."""
        if self._check_in_task is None:

            def done(task: asyncio.Task[bool]) -> None:
                self._check_in_task = None
                if not task.cancelled():
                    task.exception()  # retrieved: a failure only means reading the database

            self._check_in_task = asyncio.create_task(self.invalidator.check_in())
            self._check_in_task.add_done_callback(done)
        with contextlib.suppress(Exception):
            await asyncio.shield(self._check_in_task)

    def _from_cache(
        self, plaintext: str, *, require_access: bool, now: datetime
    ) -> Principal | None:
        return service.authenticate_cached(
            plaintext,
            pepper=self._pepper,
            cache=self.cache,
            past_due_grace_s=self.past_due_grace_s,
            require_access=require_access,
            now=now,
        )

    async def _fill(self, plaintext: str, now: datetime) -> None:
        """Bring the key into the cache (or into its misses), once for all concurrent callers.

        Without this, a hot key whose entry expires, or a cold start under load, would send
        every request in flight to the database at once. An unknown key fills the miss cache,
        and its callers are then refused from there.
        """
        digest = hashing.digest(plaintext, pepper=self._pepper)
        fill = self._fills.get(digest)
        if fill is None:

            async def read() -> None:
                # An unknown key is now a known miss (unless invalidated meanwhile).
                with contextlib.suppress(InvalidApiKey):
                    await self._read(plaintext, require_access=False, now=now)

            def done(task: asyncio.Task[None]) -> None:
                self._fills.pop(digest, None)
                if not task.cancelled():
                    task.exception()  # retrieved here too, in case every caller gave up

            fill = asyncio.create_task(read())
            self._fills[digest] = fill
            fill.add_done_callback(done)
        # Shielded: one caller giving up must not cancel the read the others wait for.
        await asyncio.shield(fill)

    async def _read(self, plaintext: str, *, require_access: bool, now: datetime) -> Principal:
        async with self.sessionmaker() as session:
            return await service.authenticate(
                session,
                plaintext,
                pepper=self._pepper,
                cache=self.cache,
                past_due_grace_s=self.past_due_grace_s,
                require_access=require_access,
                now=now,
            )
