"""Helpers for the outbound-webhook tests: the receiver process, and reading the outbox."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.keys import service as key_service
from meterapi.keys.policy import KeyPolicy
from meterapi.models import Customer, OutboundEvent

# 24 random bytes, base64, as Standard Webhooks secrets are written.
OUTBOUND_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RECEIVER = Path(__file__).resolve().parents[1] / "outbound_receiver.py"


class ReceiverProcess:
    """``tests/outbound_receiver.py`` in its own process, on a free loopback port."""

    def __init__(self, log_dir: Path, *, secret: str = OUTBOUND_SECRET, **options: Any) -> None:
        self.log = log_dir / "received.jsonl"
        self.command = [sys.executable, str(RECEIVER), "--secret", secret, "--log", str(self.log)]
        for name, value in options.items():
            self.command += ["--" + name.replace("_", "-"), str(value)]
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> ReceiverProcess:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        port = self.process.stdout.readline().strip()
        assert port.isdigit(), f"receiver did not start: {port!r}"
        self.url = f"http://127.0.0.1:{port}/hooks"
        return self

    def __exit__(self, *_: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=10)

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


async def outbox_rows(db_url: str) -> list[OutboundEvent]:
    engine = make_engine(db_url)
    try:
        async with make_sessionmaker(engine)() as session:
            query = select(OutboundEvent).order_by(col(OutboundEvent.id))
            return list((await session.exec(query)).all())
    finally:
        await engine.dispose()


async def new_customer_with_key(db_url: str, stripe_customer_id: str) -> None:
    """A customer and a key for it: one ``key.created`` event."""
    engine = make_engine(db_url)
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            customer = Customer(stripe_customer_id=stripe_customer_id, subscription_status="active")
            session.add(customer)
            await session.flush()
            assert customer.id is not None
            await key_service.issue(
                session, customer_id=customer.id, policy=KeyPolicy(pepper=b"p", live=False)
            )
    finally:
        await engine.dispose()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


def assert_order_per_customer(records: list[dict[str, Any]], created: list[str]) -> None:
    """Each event's first attempt began after the previous event of its customer succeeded
    (or was answered 410), in creation order."""
    position = {event_id: i for i, event_id in enumerate(created)}
    by_customer: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_customer.setdefault(record["customer_id"], []).append(record)
    for customer, seen in by_customer.items():
        ids = sorted({r["id"] for r in seen}, key=position.__getitem__)
        for earlier, later in itertools.pairwise(ids):
            settled = [r["end"] for r in seen if r["id"] == earlier and r["status"] < 300]
            settled += [r["end"] for r in seen if r["id"] == earlier and r["status"] == 410]
            first_try = min(r["start"] for r in seen if r["id"] == later)
            assert settled and first_try >= min(settled), (customer, earlier, later)
