"""``last_used_at``, kept current off the request path: debounced per key, written in batches.

A request only notes the time in memory (at most once per key per ``debounce_s``); a background
task writes the noted times every ``interval_s`` in one statement batch. A crash loses at most
the last interval's notes, which is fine for a best-effort "last used" display.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime

from sqlalchemy import bindparam, or_, update

from meterapi.db import Sessionmaker, session_scope
from meterapi.models import ApiKey, UTCDateTime

log = logging.getLogger(__name__)

_table = ApiKey.__table__  # type: ignore[attr-defined]
_WRITE = (
    update(_table)
    .where(_table.c.id == bindparam("b_id"))
    .where(
        or_(
            _table.c.last_used_at.is_(None),
            _table.c.last_used_at < bindparam("b_at", type_=UTCDateTime()),
        )
    )
    .values(last_used_at=bindparam("b_at", type_=UTCDateTime()))
)


@dataclass(eq=False, repr=False)
class LastUsedTracker:
    sessionmaker: Sessionmaker
    _: KW_ONLY
    debounce_s: float = 60.0
    interval_s: float = 3.0
    max_tracked: int = 100_000
    clock: Callable[[], float] = time.monotonic
    _noted: dict[str, float] = field(default_factory=dict, init=False)
    _pending: dict[str, datetime] = field(default_factory=dict, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def __repr__(self) -> str:
        return f"LastUsedTracker(pending={len(self._pending)})"

    def note(self, key_id: str, at: datetime) -> None:
        """Remember that ``key_id`` was used at ``at``; cheap, no I/O."""
        now = self.clock()
        last = self._noted.get(key_id)
        if last is not None and now - last < self.debounce_s:
            return
        if len(self._noted) >= self.max_tracked:
            horizon = now - self.debounce_s
            self._noted = {k: t for k, t in self._noted.items() if t > horizon}
        self._noted[key_id] = now
        self._pending[key_id] = at

    async def flush(self) -> int:
        """Write the noted times now; returns how many keys were written."""
        pending, self._pending = self._pending, {}
        if not pending:
            return 0
        try:
            async with session_scope(self.sessionmaker) as session:
                connection = await session.connection()
                await connection.execute(
                    _WRITE, [{"b_id": key_id, "b_at": at} for key_id, at in pending.items()]
                )
        except BaseException:
            # Keep the notes for the next attempt, unless newer ones arrived meanwhile.
            for key_id, at in pending.items():
                self._pending.setdefault(key_id, at)
            raise
        return len(pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="key-last-used")

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping.set()  # a flush in flight finishes; the loop then ends
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, timeout=10)
            self._task = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.flush()

    async def _flush_forever(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("last_used_at flush failed: %s", type(exc).__name__)
