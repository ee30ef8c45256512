"""Which processes are alive, and which cache revision each has applied: what makes a
revocation immediate everywhere (CONTRACT §3: when ``DELETE /v1/keys/{id}`` returns, no worker
or replica serves the key).

The rule, in three numbers
--------------------------
- Every process checks in (``Invalidator.check_in``): it reads ``cache_revision`` (clearing its
  cache if the revision moved) and records in its ``process_heartbeat`` row the revision its
  cache now reflects. On PostgreSQL a NOTIFY makes it check in at once; otherwise it polls
  (every 0.05 s on SQLite).
- A process trusts its cache for ``TRUST_S`` after the start of its last check-in that both read
  the revision and wrote its row. Past that (the database or its feed unreachable, the event loop
  starved), every request reads the database, so nothing stale can be served.
- A revocation commits, then ``await_acknowledged`` waits until every live process (a row seen
  within ``LIVE_S``) has recorded a revision at least the committed one, for at most
  ``WAIT_S``. At that bound, a process that has not acknowledged has not completed a check-in
  since the commit, so its trust has run out (``WAIT_S`` > ``TRUST_S``); one whose row is older
  than ``LIVE_S`` (> ``TRUST_S``) stopped trusting its cache before anyone looked. Either way,
  when the revocation returns no process serves the key.

Row times come from the database's clock on PostgreSQL (replicas on several hosts compare one
clock), from the process's on SQLite (one host). Trust is measured on each process's monotonic
clock, never compared across processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, insert, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meterapi.db import is_postgres
from meterapi.models import CacheRevision, ProcessHeartbeat, utcnow

log = logging.getLogger(__name__)

TRUST_S = 2.0
LIVE_S = TRUST_S + 1.0
WAIT_S = TRUST_S + 0.5
FORGET_AFTER = timedelta(hours=1)  # rows of processes that died without saying so

READ_REVISION = text("SELECT revision FROM cache_revision WHERE id = 1")
_ROW = ProcessHeartbeat.__table__  # type: ignore[attr-defined]
_REVISION = CacheRevision.__table__  # type: ignore[attr-defined]


def _now(connection: AsyncConnection) -> Any:
    """The time rows are stamped and judged with: PostgreSQL's clock, or ours on SQLite."""
    return func.now() if is_postgres(connection) else utcnow()


class Heartbeat:
    """This process's ``process_heartbeat`` row."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(12)
        self.hostname = socket.gethostname()[:255]
        self.pid = os.getpid()

    def __repr__(self) -> str:
        return f"Heartbeat({self.hostname}:{self.pid} {self.id})"

    async def beat(self, connection: AsyncConnection, *, revision: int) -> None:
        """Record ``revision`` as applied, now (in the caller's transaction)."""
        now = _now(connection)
        updated = await connection.execute(
            update(_ROW).where(_ROW.c.id == self.id).values(revision=revision, seen_at=now)
        )
        if updated.rowcount == 0:  # first beat, or pruned while this process was stuck
            await connection.execute(
                insert(_ROW).values(
                    id=self.id,
                    hostname=self.hostname,
                    pid=self.pid,
                    revision=revision,
                    started_at=now,
                    seen_at=now,
                )
            )

    async def leave(self, engine: AsyncEngine) -> None:
        """Delete this row (a clean stop), and rows not seen for a long time."""
        async with engine.begin() as connection:
            forget_before = _now(connection) - FORGET_AFTER
            await connection.execute(
                delete(_ROW).where((_ROW.c.id == self.id) | (_ROW.c.seen_at < forget_before))
            )


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    revision: int
    waited_s: float
    pending: tuple[str, ...]  # "host:pid" of live processes that did not acknowledge in time

    @property
    def complete(self) -> bool:
        return not self.pending


async def await_acknowledged(
    engine: AsyncEngine,
    *,
    exclude: str | None = None,
    timeout_s: float = WAIT_S,
    live_s: float = LIVE_S,
    poll_s: float = 0.005,
) -> Acknowledgement:
    """Wait until every live process has applied the current cache revision; call after the
    changing transaction committed. ``exclude``: the caller's own heartbeat id (its cache
    applied the change on commit). Returns at ``timeout_s`` at the latest, when any process
    that did not acknowledge no longer trusts its cache (see the module's docstring)."""
    started = time.monotonic()
    revision: int | None = None  # the first query reads it, with the first answer
    while True:
        async with engine.connect() as connection:
            live_since = _now(connection) - timedelta(seconds=live_s)
            target = _REVISION.c.revision if revision is None else literal(revision)
            behind = (_ROW.c.revision < target) & (_ROW.c.seen_at > live_since)
            if exclude is not None:
                behind &= _ROW.c.id != exclude
            query = (
                select(_REVISION.c.revision, _ROW.c.hostname, _ROW.c.pid)
                .select_from(_REVISION.outerjoin(_ROW, behind))
                .where(_REVISION.c.id == 1)
            )
            rows = (await connection.execute(query)).all()
        revision = int(rows[0][0]) if revision is None else revision
        pending = [f"{host}:{pid}" for _, host, pid in rows if host is not None]
        waited = time.monotonic() - started
        if not pending:
            return Acknowledgement(revision, waited, ())
        if waited >= timeout_s:
            log.warning(
                "cache revision %d not acknowledged within %.1f s by %s; they no longer trust "
                "their key caches",
                revision,
                timeout_s,
                ", ".join(pending),
            )
            return Acknowledgement(revision, waited, tuple(pending))
        await asyncio.sleep(poll_s)
