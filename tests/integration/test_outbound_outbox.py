"""The outbox on a real database: events written with the change that causes them (or not at
all), their bodies, the claim that keeps one sender per event and each customer's order, the
outcome of an attempt, the retry window, listing and retry (API for operators and the CLI)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlmodel import col, select

from meterapi.billing.subscriptions import provision_from_checkout, sync_subscription
from meterapi.cli import main
from meterapi.db import Sessionmaker, session_scope
from meterapi.errors import AlreadyDelivered, NotFound, ValidationFailed
from meterapi.keys import service as key_service
from meterapi.keys.policy import KeyPolicy
from meterapi.models import Customer, OutboundEvent, OutboundStatus
from meterapi.outbound import outbox
from meterapi.outbound.delivery import Attempt, Deliverer, claim_due, settle
from tests.integration.billing_support import PRICE, subscription
from tests.integration.keys_support import Seeder, headers, seed_customer
from tests.integration.outbound_support import eventually

T0 = datetime(2030, 1, 1, tzinfo=UTC)


async def events(sessionmaker: Sessionmaker) -> list[OutboundEvent]:
    async with sessionmaker() as session:
        query = select(OutboundEvent).order_by(col(OutboundEvent.id))
        return list((await session.exec(query.execution_options(populate_existing=True))).all())


def body(row: OutboundEvent) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(row.payload)
    return parsed


async def write(sessionmaker: Sessionmaker, customer_id: int, n: int, *, at: datetime) -> list[str]:
    ids = []
    for i in range(n):
        async with session_scope(sessionmaker) as session:
            row = await outbox.enqueue(
                session,
                type=outbox.EventType.USAGE_THRESHOLD_REACHED,
                customer_id=customer_id,
                data={"threshold_percent": i},
                now=at + timedelta(seconds=i),
            )
            ids.append(row.event_id)
    return ids


async def test_an_event_lives_and_dies_with_its_transaction(sessionmaker: Sessionmaker) -> None:
    customer_id = await seed_customer(sessionmaker, stripe_customer_id="cus_tx")
    with pytest.raises(RuntimeError):
        async with session_scope(sessionmaker) as session:
            await key_service.issue(
                session, customer_id=customer_id, policy=KeyPolicy(pepper=b"p", live=False)
            )
            raise RuntimeError("the change fails after the key was written")
    assert await events(sessionmaker) == []

    async with session_scope(sessionmaker) as session:
        key, _ = await key_service.issue(
            session, customer_id=customer_id, policy=KeyPolicy(pepper=b"p", live=False)
        )
    [row] = await events(sessionmaker)
    assert row.type == "key.created" and row.status == OutboundStatus.PENDING
    assert row.event_id.startswith("msg_") and row.attempts == 0
    sent = body(row)
    assert set(sent) == {"type", "timestamp", "data"} and sent["type"] == "key.created"
    assert sent["data"] == {
        "customer_id": "cus_tx",
        "key": {
            "id": key.id,
            "name": "default",
            "prefix": key.prefix,
            "last4": key.last4,
            "created_at": key.created_at.isoformat().replace("+00:00", "Z"),
            "last_used_at": None,
            "expires_at": None,
            "revoked_at": None,
        },
    }
    assert row.give_up_at - row.created_at == timedelta(days=3)


async def test_key_events_show_the_key_as_the_api_does(
    client: httpx.AsyncClient, seed: Seeder, sessionmaker: Sessionmaker
) -> None:
    _, plaintext = await seed.customer_with_key(stripe_customer_id="cus_api")
    created = await client.post("/v1/keys", headers=headers(plaintext), json={"name": "ci"})
    assert created.status_code == 201
    key_id = created.json()["key"]["id"]
    revoking = await client.delete(f"/v1/keys/{key_id}", headers=headers(plaintext))
    assert revoking.status_code == 204
    listed = await client.get("/v1/keys", headers=headers(plaintext))
    [revoked] = [k for k in listed.json()["data"] if k["id"] == key_id]

    rows = await events(sessionmaker)
    assert [r.type for r in rows] == ["key.created", "key.created", "key.revoked"]
    assert body(rows[1])["data"] == {"customer_id": "cus_api", "key": created.json()["key"]}
    assert body(rows[2])["data"] == {"customer_id": "cus_api", "key": revoked}


async def test_access_changed_only_when_access_flips(sessionmaker: Sessionmaker) -> None:
    steps = [
        ("active", []),  # the first state is no change: customer.provisioned tells it
        ("trialing", []),  # still allowed
        ("past_due", [("denied", "past_due")]),
        ("unpaid", []),  # still denied
        ("active", [("allowed", "active")]),
        ("canceled", [("denied", "canceled")]),
    ]
    expected: list[tuple[str, str]] = []
    for i, (status, announced) in enumerate(steps):
        async with session_scope(sessionmaker) as session:
            await sync_subscription(
                session,
                subscription=subscription(customer="cus_acc", status=status),
                version=T0 + timedelta(seconds=i),
                price_id=PRICE,
            )
        expected += announced
        rows = await events(sessionmaker)
        assert all(r.type == "subscription.access_changed" for r in rows)
        seen = [(body(r)["data"]["access"], body(r)["data"]["status"]) for r in rows]
        assert seen == expected, status
    assert body(rows[0])["data"]["customer_id"] == "cus_acc"


async def test_customer_provisioned_once_per_checkout_session(sessionmaker: Sessionmaker) -> None:
    checkout = {"id": "cs_test_once", "status": "complete", "customer_details": {"email": "a@b.c"}}
    for attempt in range(2):  # the webhook, then the key claim: provisioning is idempotent
        async with session_scope(sessionmaker) as session:
            await provision_from_checkout(
                session,
                checkout_session=checkout,
                subscription=subscription(customer="cus_prov", sub_id="sub_prov"),
                version=T0 + timedelta(seconds=attempt),
                price_id=PRICE,
            )
    [row] = await events(sessionmaker)
    assert row.type == "customer.provisioned"
    assert body(row)["data"] == {"customer_id": "cus_prov", "email": "a@b.c"}


async def test_claim_takes_each_customers_earliest_event_and_leases_it(
    sessionmaker: Sessionmaker,
) -> None:
    a = await seed_customer(sessionmaker, stripe_customer_id="cus_a")
    b = await seed_customer(sessionmaker, stripe_customer_id="cus_b")
    a_ids = await write(sessionmaker, a, 3, at=T0)
    b_ids = await write(sessionmaker, b, 2, at=T0)
    now = T0 + timedelta(minutes=1)
    async with session_scope(sessionmaker) as session:
        first = await claim_due(session, token="one", now=now, lease_s=60)
    assert [c.event_id for c in first] == [a_ids[0], b_ids[0]]
    assert all(c.attempts == 1 for c in first)
    async with session_scope(sessionmaker) as session:  # leased, and the rest wait behind them
        assert await claim_due(session, token="two", now=now, lease_s=60) == []

    async with session_scope(sessionmaker) as session:
        assert await settle(session, first[0], Attempt(204), token="one", now=now) == "delivered"
        # A failure keeps b's first event pending: b's next event still waits behind it.
        assert await settle(session, first[1], Attempt(500), token="one", now=now) == "pending"
    later = now + timedelta(hours=1)
    async with session_scope(sessionmaker) as session:
        second = await claim_due(session, token="two", now=later, lease_s=60)
    assert [c.event_id for c in second] == [a_ids[1], b_ids[0]]
    assert second[1].attempts == 2


async def test_a_lease_that_runs_out_is_claimed_again_under_the_same_id(
    sessionmaker: Sessionmaker,
) -> None:
    customer_id = await seed_customer(sessionmaker, stripe_customer_id="cus_lease")
    [event_id] = await write(sessionmaker, customer_id, 1, at=T0)
    async with session_scope(sessionmaker) as session:
        [lost] = await claim_due(session, token="crashed", now=T0, lease_s=60)
    before, after = T0 + timedelta(seconds=59), T0 + timedelta(seconds=61)
    async with session_scope(sessionmaker) as session:
        assert await claim_due(session, token="other", now=before, lease_s=60) == []
    async with session_scope(sessionmaker) as session:
        [again] = await claim_due(session, token="other", now=after, lease_s=60)
    assert again.event_id == lost.event_id == event_id and again.attempts == 2
    async with session_scope(sessionmaker) as session:  # the first holder's late word is ignored
        assert await settle(session, lost, Attempt(204), token="crashed", now=T0) is None
        assert await settle(session, again, Attempt(200), token="other", now=T0) == "delivered"


async def test_outcomes_gone_retry_and_the_three_day_window(sessionmaker: Sessionmaker) -> None:
    customer_id = await seed_customer(sessionmaker, stripe_customer_id="cus_out")
    await write(sessionmaker, customer_id, 1, at=T0)
    async with session_scope(sessionmaker) as session:
        [claimed] = await claim_due(session, token="t", now=T0, lease_s=60)
        status = await settle(
            session, claimed, Attempt(None, "ConnectError"), token="t", now=T0, rand=lambda: 1.0
        )
    [row] = await events(sessionmaker)
    assert status == "pending" and row.last_error == "ConnectError"
    assert row.next_attempt_at == T0 + timedelta(seconds=5)  # the first retry, within 10 s
    assert row.claimed_by is None

    # The last try allowed: a retry would fall after the window, so the event fails.
    late = T0 + timedelta(days=3) - timedelta(seconds=1)
    async with session_scope(sessionmaker) as session:
        [claimed] = await claim_due(session, token="t", now=late, lease_s=60)
        assert await settle(session, claimed, Attempt(503), token="t", now=late) == "failed"
    [row] = await events(sessionmaker)
    assert row.status == "failed" and row.last_error == "HTTP 503"

    async with session_scope(sessionmaker) as session:
        await outbox.retry(session, event_id=row.event_id, now=late)
        [claimed] = await claim_due(session, token="t", now=late, lease_s=60)
        assert await settle(session, claimed, Attempt(410), token="t", now=late) == "gone"
    [row] = await events(sessionmaker)
    assert row.status == "gone" and row.attempts == 1


async def test_expire_and_prune_bound_the_table(sessionmaker: Sessionmaker) -> None:
    customer_id = await seed_customer(sessionmaker, stripe_customer_id="cus_old")
    await write(sessionmaker, customer_id, 2, at=T0)
    async with session_scope(sessionmaker) as session:
        assert await outbox.expire_and_prune(session, now=T0 + timedelta(hours=1)) == (0, 0)
    async with session_scope(sessionmaker) as session:
        expired = await outbox.expire_and_prune(session, now=T0 + timedelta(days=3, seconds=1))
    assert expired == (1, 0)
    assert [r.status for r in await events(sessionmaker)] == ["failed", "pending"]
    async with session_scope(sessionmaker) as session:
        assert await outbox.expire_and_prune(session, now=T0 + timedelta(days=31)) == (1, 2)
    assert await events(sessionmaker) == []


async def test_list_pages_and_filters(sessionmaker: Sessionmaker) -> None:
    customer_id = await seed_customer(sessionmaker, stripe_customer_id="cus_list")
    ids = await write(sessionmaker, customer_id, 5, at=T0)
    async with session_scope(sessionmaker) as session:
        [claimed] = await claim_due(session, token="t", now=T0, lease_s=60)
        await settle(session, claimed, Attempt(200), token="t", now=T0)
    async with sessionmaker() as session:
        page, more = await outbox.list_events(session, limit=2)
        assert [e.id for e in page] == [ids[4], ids[3]] and more
        page, more = await outbox.list_events(session, limit=2, starting_after=ids[3])
        assert [e.id for e in page] == [ids[2], ids[1]] and more
        page, more = await outbox.list_events(session, limit=2, starting_after=ids[1])
        assert [e.id for e in page] == [ids[0]] and not more
        assert page[0].status == "delivered" and page[0].customer_id == "cus_list"
        assert page[0].data == {"customer_id": "cus_list", "threshold_percent": 0}
        undelivered, _ = await outbox.list_events(session, status="undelivered")
        assert [e.id for e in undelivered] == ids[:0:-1]
        mine, _ = await outbox.list_events(session, stripe_customer_id="cus_list", limit=100)
        assert len(mine) == 5
        assert await outbox.list_events(session, stripe_customer_id="cus_other") == ([], False)
        with pytest.raises(ValidationFailed):
            await outbox.list_events(session, limit=101)
        with pytest.raises(ValidationFailed):
            await outbox.list_events(session, status="lost")
        with pytest.raises(NotFound):
            await outbox.list_events(session, starting_after="msg_nope")


async def test_retry_only_what_was_not_delivered(sessionmaker: Sessionmaker) -> None:
    customer_id = await seed_customer(sessionmaker, stripe_customer_id="cus_retry")
    [event_id] = await write(sessionmaker, customer_id, 1, at=T0)
    async with session_scope(sessionmaker) as session:
        [claimed] = await claim_due(session, token="t", now=T0, lease_s=60)
        await settle(session, claimed, Attempt(200), token="t", now=T0)
    async with session_scope(sessionmaker) as session:
        with pytest.raises(AlreadyDelivered):
            await outbox.retry(session, event_id=event_id)
        with pytest.raises(NotFound):
            await outbox.retry(session, event_id="msg_missing")


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, ["webhooks", "outbound", *args])


async def test_the_cli_lists_and_retries(
    db_url: str,
    sessionmaker: Sessionmaker,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    customer_id = await seed_customer(sessionmaker, stripe_customer_id="cus_cli")
    [event_id] = await write(sessionmaker, customer_id, 1, at=T0)
    async with session_scope(sessionmaker) as session:
        await outbox.expire_and_prune(session, now=T0 + timedelta(days=4))  # → failed
    monkeypatch.setenv("METERAPI_DATABASE_URL", db_url)
    monkeypatch.chdir("/")

    assert await cli("list", "--status", "failed") == 0
    out = capsys.readouterr().out
    assert event_id in out and "cus_cli" in out and "usage.threshold_reached" in out
    assert await cli("retry", event_id) == 0
    assert event_id in capsys.readouterr().out
    [row] = await events(sessionmaker)
    assert row.status == "pending" and row.attempts == 0
    assert row.give_up_at > datetime.now(UTC) + timedelta(days=2)

    assert await cli("retry", "msg_unknown") == 1
    assert "msg_unknown" in capsys.readouterr().err
    assert await cli("list", "--limit", "0") == 1


async def test_a_commit_wakes_the_attached_deliverer(sessionmaker: Sessionmaker) -> None:
    customer_id = await seed_customer(sessionmaker, stripe_customer_id="cus_wake")
    woken: list[int] = []
    outbox.attach(sessionmaker, lambda: woken.append(1))
    async with sessionmaker() as session:
        await outbox.enqueue(session, type="key.created", customer_id=customer_id, data={})
        assert woken == []  # not before the commit: the deliverer would find nothing
        await session.rollback()
    assert woken == []
    async with session_scope(sessionmaker) as session:
        await outbox.enqueue(session, type="key.created", customer_id=customer_id, data={})
    assert woken == [1]
    async with session_scope(sessionmaker) as session:  # a commit without events: no wake
        await session.get(Customer, customer_id)
    assert woken == [1]


@pytest.mark.postgres_only
async def test_concurrent_claims_skip_what_another_holds(sessionmaker: Sessionmaker) -> None:
    """PostgreSQL: while one claim's transaction is open, another neither waits for it nor
    takes its rows, nor the later events of the customer it holds."""
    a = await seed_customer(sessionmaker, stripe_customer_id="cus_pg_a")
    b = await seed_customer(sessionmaker, stripe_customer_id="cus_pg_b")
    a_ids = await write(sessionmaker, a, 2, at=T0)
    b_ids = await write(sessionmaker, b, 1, at=T0)
    now = T0 + timedelta(minutes=1)
    async with sessionmaker() as first, sessionmaker() as second:
        held = await claim_due(first, token="one", now=now, lease_s=60, limit=1)
        assert [c.event_id for c in held] == [a_ids[0]]
        async with asyncio.timeout(5):  # SKIP LOCKED: no waiting on the open transaction
            taken = await claim_due(second, token="two", now=now, lease_s=60)
        assert [c.event_id for c in taken] == [b_ids[0]]
        await second.commit()
        await first.commit()


async def test_without_a_url_nothing_is_sent_and_old_events_expire(
    sessionmaker: Sessionmaker,
) -> None:
    customer_id = await seed_customer(sessionmaker, stripe_customer_id="cus_nourl")
    await write(sessionmaker, customer_id, 1, at=datetime.now(UTC) - timedelta(days=4))
    await write(sessionmaker, customer_id, 1, at=datetime.now(UTC))
    deliverer = Deliverer(sessionmaker, url=None, secret=None)
    assert not deliverer.enabled
    deliverer.start()  # housekeeping runs at start, then every few minutes

    async def expired() -> bool:
        return (await events(sessionmaker))[0].status == "failed"

    await eventually(expired, within=10)
    await deliverer.stop()
    old, recent = await events(sessionmaker)
    assert old.last_error is not None and "METERAPI_WEBHOOK_URL" in old.last_error
    assert old.attempts == 0 and recent.status == "pending" and recent.attempts == 0
