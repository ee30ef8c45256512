"""The ledger's group commit, and the reporter's claim step, on a real database."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from meterapi.db import Sessionmaker, index_scans_only, is_postgres, make_engine
from meterapi.metering import claim, ledger
from meterapi.metering.claim import claim_unreported, make_identifier
from meterapi.metering.ledger import LedgerUnavailable, UsageRecorder
from meterapi.metering.usage import usage_totals
from meterapi.models import Customer, ReportStatus, UsageEvent, UsageReport


async def add_customer(sessionmaker: Sessionmaker, stripe_id: str = "cus_A") -> int:
    async with sessionmaker() as session:
        customer = Customer(stripe_customer_id=stripe_id, subscription_status="active")
        session.add(customer)
        await session.commit()
        assert customer.id is not None
        return customer.id


@pytest.fixture
async def ledger_engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """The ledger's own engine, as the service gives it one."""
    engine = make_engine(db_url)
    yield engine
    await engine.dispose()


async def committed_batches(sessionmaker: Sessionmaker, commits: list[int]) -> int:
    """How many transactions wrote the ledger's rows. On PostgreSQL the rows say it themselves
    (``xmin``: the inserting transaction); on SQLite, the recorder's ``on_commit`` calls."""
    async with sessionmaker() as session:
        if not is_postgres(session):
            return commits[0]
        return int(await session.scalar(text("SELECT count(DISTINCT xmin::text) FROM usage_event")))


async def record_together(ledger_engine: AsyncEngine, customer_id: int, n: int) -> list[int]:
    """``n`` records of one unit started in one turn, through a recorder started and stopped for
    them; the number of commits its ``on_commit`` counted, in a one-item list."""
    commits = [0]
    recorder = UsageRecorder(
        ledger_engine, on_commit=lambda: commits.__setitem__(0, commits[0] + 1)
    )
    recorder.start()
    await asyncio.gather(
        *(
            recorder.record(customer_id=customer_id, api_key_id="k", route="/v1/data", units=1)
            for _ in range(n)
        )
    )
    await recorder.stop()
    return commits


async def test_concurrent_records_share_commits(
    sessionmaker: Sessionmaker, ledger_engine: AsyncEngine
) -> None:
    customer_id = await add_customer(sessionmaker)
    commits = await record_together(ledger_engine, customer_id, 300)
    async with sessionmaker() as session:
        total = await session.scalar(select(func.sum(UsageEvent.units)))
        rows = await session.scalar(select(func.count()).select_from(UsageEvent))
    assert total == 300
    # One request's commit is in flight while the others queue behind it.
    batches = await committed_batches(sessionmaker, commits)
    assert 1 <= batches < 30
    # Each batch wrote one row for its one customer, key and route (two if it straddled a minute).
    assert batches <= rows <= 2 * batches


async def test_record_returns_only_after_commit(
    sessionmaker: Sessionmaker, ledger_engine: AsyncEngine
) -> None:
    customer_id = await add_customer(sessionmaker)
    recorder = UsageRecorder(ledger_engine)
    recorder.start()
    await recorder.record(customer_id=customer_id, api_key_id="k", route="/v1/data", units=3)
    async with sessionmaker() as session:  # a different connection sees it at once
        assert await session.scalar(select(func.sum(UsageEvent.units))) == 3
    await recorder.stop()


async def test_a_lane_whose_rows_the_other_lane_took_writes_nothing(
    sessionmaker: Sessionmaker, ledger_engine: AsyncEngine
) -> None:
    # On PostgreSQL two rows queued in one turn start both lanes, which gather side by side; the
    # first to finish takes both rows, and the other must not commit an empty statement.
    customer_id = await add_customer(sessionmaker)
    commits = await record_together(ledger_engine, customer_id, 2)
    assert commits[0] == 1


async def test_recorded_rows_read_back_exactly(
    sessionmaker: Sessionmaker, ledger_engine: AsyncEngine
) -> None:
    a = await add_customer(sessionmaker, "cus_A")
    b = await add_customer(sessionmaker, "cus_B")
    at = datetime(2026, 11, 25, 10, 0, 10, 123456, tzinfo=UTC)
    recorder = UsageRecorder(ledger_engine)
    recorder.start()
    await asyncio.gather(
        recorder.record(
            customer_id=a, api_key_id="key_a", route="/v1/data", units=1, occurred_at=at
        ),
        recorder.record(
            customer_id=b, api_key_id="key_b", route="/v1/other", units=5, occurred_at=at
        ),
    )
    await recorder.stop()
    async with sessionmaker() as session:
        rows = (await session.exec(select(UsageEvent).order_by(col(UsageEvent.customer_id)))).all()
    assert [
        (r.customer_id, r.api_key_id, r.route, r.units, r.occurred_at, r.report_id) for r in rows
    ] == [
        (a, "key_a", "/v1/data", 1, at, None),
        (b, "key_b", "/v1/other", 5, at, None),
    ]


async def test_a_failed_commit_fails_the_request(
    sessionmaker: Sessionmaker, ledger_engine: AsyncEngine
) -> None:
    recorder = UsageRecorder(ledger_engine)
    recorder.start()
    with pytest.raises(LedgerUnavailable):  # no such customer: the foreign key refuses it
        await recorder.record(customer_id=999_999, api_key_id="k", route="/v1/data", units=1)
    await recorder.stop()
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(UsageEvent)) == 0


async def test_record_refused_when_not_running(
    sessionmaker: Sessionmaker, ledger_engine: AsyncEngine
) -> None:
    recorder = UsageRecorder(ledger_engine)
    with pytest.raises(LedgerUnavailable):
        await recorder.record(customer_id=1, api_key_id="k", route="/v1/data", units=1)


@contextmanager
def other_writers_turn(ledger_engine: AsyncEngine) -> Iterator[None]:
    """Hold the ledger writers' lock on this SQLite file, as another process's writer would."""
    database = ledger_engine.url.database
    assert database is not None
    fd = os.open(f"{database}-ledger.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


async def test_sqlite_writers_take_turns_and_a_waiting_writer_gathers(
    sessionmaker: Sessionmaker, ledger_engine: AsyncEngine
) -> None:
    if is_postgres(ledger_engine):
        pytest.skip("SQLite's writers take turns; PostgreSQL commits concurrently")
    customer_id = await add_customer(sessionmaker)
    commits = [0]
    recorder = UsageRecorder(
        ledger_engine, on_commit=lambda: commits.__setitem__(0, commits[0] + 1)
    )
    recorder.start()

    def one() -> Awaitable[None]:
        return recorder.record(customer_id=customer_id, api_key_id="k", route="/v1/data", units=1)

    with other_writers_turn(ledger_engine):
        first = asyncio.ensure_future(one())
        await asyncio.sleep(0.3)
        later = [asyncio.ensure_future(one()) for _ in range(40)]
        await asyncio.sleep(0.3)
        # Nothing commits while another writer has its turn...
        assert not first.done() and not any(r.done() for r in later)
        assert commits == [0]
    # ...and once it ends, the rows that waited commit together.
    await asyncio.wait_for(asyncio.gather(first, *later), timeout=30)
    await recorder.stop()
    assert commits[0] <= 2
    async with sessionmaker() as session:
        assert await session.scalar(select(func.sum(UsageEvent.units))) == 41


async def test_a_sqlite_writer_whose_turn_never_comes_commits_without_it(
    sessionmaker: Sessionmaker, ledger_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn held past ``TURN_WAIT_S`` (a stuck or stopped process) does not hold the ledger
    up for ever: the writer gives the turns up and SQLite's own lock orders the writers."""
    if is_postgres(ledger_engine):
        pytest.skip("SQLite's writers take turns")
    monkeypatch.setattr(ledger, "TURN_WAIT_S", 0.5)
    customer_id = await add_customer(sessionmaker)
    recorder = UsageRecorder(ledger_engine)
    recorder.start()
    with other_writers_turn(ledger_engine):
        async with asyncio.timeout(10):
            await recorder.record(
                customer_id=customer_id, api_key_id="k", route="/v1/data", units=2
            )
            await recorder.record(
                customer_id=customer_id, api_key_id="k", route="/v1/data", units=3
            )
    await recorder.stop()
    async with sessionmaker() as session:
        assert await session.scalar(select(func.sum(UsageEvent.units))) == 5


async def test_sqlite_writers_of_two_recorders_share_one_file(
    sessionmaker: Sessionmaker, db_url: str
) -> None:
    """Two recorders on one file (as two worker processes have) commit everything, in turns."""
    customer_id = await add_customer(sessionmaker)
    engines = [make_engine(db_url), make_engine(db_url)]
    recorders = [UsageRecorder(engine) for engine in engines]
    try:
        for recorder in recorders:
            recorder.start()
        await asyncio.gather(
            *(
                recorder.record(customer_id=customer_id, api_key_id="k", route="/v1/data", units=1)
                for _ in range(200)
                for recorder in recorders
            )
        )
        for recorder in recorders:
            await recorder.stop()
    finally:
        for engine in engines:
            await engine.dispose()
    async with sessionmaker() as session:
        assert await session.scalar(select(func.sum(UsageEvent.units))) == 400


async def test_claim_groups_per_customer_and_minute(sessionmaker: Sessionmaker) -> None:
    a = await add_customer(sessionmaker, "cus_A")
    b = await add_customer(sessionmaker, "cus_B")
    t0 = datetime(2026, 11, 25, 10, 0, 10, tzinfo=UTC)
    rows = [
        (a, t0, 1),
        (a, t0 + timedelta(seconds=20), 2),
        (a, t0 + timedelta(seconds=60), 4),  # the next minute
        (b, t0, 8),
    ]
    async with sessionmaker() as session:
        for customer_id, at, units in rows:
            session.add(
                UsageEvent(
                    customer_id=customer_id, api_key_id="k", route="/r", units=units, occurred_at=at
                )
            )
        await session.commit()
    now = t0 + timedelta(minutes=5)
    async with sessionmaker() as session:
        claimed, made = await claim_unreported(session, event_name="api_requests", now=now)
        await session.commit()
    assert (claimed, made) == (4, 3)
    async with sessionmaker() as session:
        reports = (await session.exec(select(UsageReport).order_by(col(UsageReport.id)))).all()
        values = sorted((r.stripe_customer_id, r.value, r.event_at) for r in reports)
        assert values == [
            ("cus_A", 3, t0 + timedelta(seconds=20)),
            ("cus_A", 4, t0 + timedelta(seconds=60)),
            ("cus_B", 8, t0),
        ]
        unreported = await session.scalar(
            select(func.count()).where(col(UsageEvent.report_id).is_(None))
        )
        assert unreported == 0
        # A second claim finds nothing new.
        assert await claim_unreported(session, event_name="api_requests", now=now) == (0, 0)


def test_identifiers_are_deterministic_and_distinct() -> None:
    assert make_identifier("cus_A", [3, 1, 2]) == make_identifier("cus_A", [1, 2, 3])
    assert make_identifier("cus_A", [1, 2, 3]) != make_identifier("cus_A", [1, 2])
    assert make_identifier("cus_A", [1]) != make_identifier("cus_B", [1])
    assert len(make_identifier("cus_A", list(range(10_000)))) <= 100


@pytest.mark.postgres_only
async def test_concurrent_claims_never_share_a_row(sessionmaker: Sessionmaker) -> None:
    customer_id = await add_customer(sessionmaker)
    async with sessionmaker() as session:
        for _ in range(2000):
            session.add(UsageEvent(customer_id=customer_id, api_key_id="k", route="/r", units=1))
        await session.commit()

    async def claim_in_batches() -> int:
        claimed_total = 0
        while True:
            async with sessionmaker() as session:
                claimed, _ = await claim_unreported(
                    session, event_name="api_requests", now=datetime.now(UTC), limit=150
                )
                await session.commit()
            if claimed == 0:
                return claimed_total
            claimed_total += claimed

    totals = await asyncio.gather(*(claim_in_batches() for _ in range(4)))
    assert sum(totals) == 2000
    async with sessionmaker() as session:
        assert await session.scalar(select(func.sum(UsageReport.value))) == 2000


@pytest.mark.postgres_only
async def test_a_broken_writer_connection_fails_one_batch_then_is_replaced(
    sessionmaker: Sessionmaker, ledger_engine: AsyncEngine
) -> None:
    """The writer keeps its connections between batches; one the server has dropped fails the
    batch on it (those requests are not served as successes) and is not used again."""
    customer_id = await add_customer(sessionmaker)
    recorder = UsageRecorder(ledger_engine)
    recorder.start()
    await recorder.record(customer_id=customer_id, api_key_id="k", route="/v1/data", units=1)
    async with sessionmaker() as session:  # drop every other connection to this database
        await (await session.connection()).execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    with pytest.raises(LedgerUnavailable):
        await recorder.record(customer_id=customer_id, api_key_id="k", route="/v1/data", units=2)
    await recorder.record(customer_id=customer_id, api_key_id="k", route="/v1/data", units=4)
    await recorder.stop()
    async with sessionmaker() as session:
        assert await session.scalar(select(func.sum(UsageEvent.units))) == 5


@pytest.mark.postgres_only
async def test_the_claim_walks_the_unreported_index_in_order(sessionmaker: Sessionmaker) -> None:
    """Whatever the statistics say: an ordered scan of the partial index stops after the limit
    and skips rows reported since the last vacuum; a bitmap or sequential scan reads them all."""
    customer_id = await add_customer(sessionmaker)
    async with sessionmaker() as session:
        for _ in range(50):
            session.add(UsageEvent(customer_id=customer_id, api_key_id="k", route="/r", units=1))
        await session.commit()
    async with sessionmaker() as session:
        connection = await session.connection()
        await connection.execute(text("ANALYZE usage_event"))
        async with index_scans_only(connection):
            plan = (
                await connection.execute(
                    text("EXPLAIN " + claim._PG_CLAIM.element.text), {"limit": 10}
                )
            ).scalars()
        assert any("Index Scan using ix_usage_event_unreported" in line for line in plan)


async def test_usage_totals_add_claimed_and_unclaimed_usage(sessionmaker: Sessionmaker) -> None:
    """The usage view reads claimed usage from its reports and the rest from the ledger; the
    sums are the ledger's all the same, per day too, and only sent reports count as reported."""
    a = await add_customer(sessionmaker, "cus_A")
    b = await add_customer(sessionmaker, "cus_B")
    day1 = datetime(2026, 11, 24, 23, 59, 30, tzinfo=UTC)
    day2 = datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC)
    now = datetime(2026, 11, 25, 9, 0, 0, tzinfo=UTC)

    async def add(customer_id: int, at: datetime, units: int) -> None:
        async with sessionmaker() as session:
            session.add(
                UsageEvent(
                    customer_id=customer_id, api_key_id="k", route="/r", units=units, occurred_at=at
                )
            )
            await session.commit()

    await add(a, day1, 1)
    await add(a, day1, 2)
    await add(a, day2, 4)
    await add(b, day2, 100)  # another customer's
    async with sessionmaker() as session:
        await claim_unreported(session, event_name="api_requests", now=now)
        await session.commit()
    async with sessionmaker() as session:  # Stripe acknowledged the day-1 report only
        reports = (await session.exec(select(UsageReport))).all()
        for report in reports:
            if report.event_at < day2:
                report.status = ReportStatus.SENT
        await session.commit()
    await add(a, day2, 8)  # not claimed yet
    await add(a, datetime(2026, 10, 31, 12, 0, tzinfo=UTC), 16)  # last period

    async with sessionmaker() as session:
        customer = await session.get(Customer, a)
        assert customer is not None
        totals = await usage_totals(session, customer=customer, now=now)
    assert (totals.units, totals.reported_units, totals.pending_units) == (15, 3, 12)
    assert totals.by_day == [(date(2026, 11, 24), 3), (date(2026, 11, 25), 12)]
