"""Helpers for the API-key tests: seed customers and keys, count SQL statements."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import FastAPI
from sqlalchemy import event

from meterapi.db import Sessionmaker, session_scope
from meterapi.keys import service
from meterapi.keys.policy import KeyPolicy
from meterapi.models import ApiKey, Customer
from tests.integration import internals

KEY_TABLES = re.compile(r"\b(api_key|customer)\b", re.IGNORECASE)


async def seed_customer(
    sessionmaker: Sessionmaker,
    *,
    stripe_customer_id: str = "cus_alpha",
    status: str | None = "active",
    past_due_since: datetime | None = None,
    subscription_id: str | None = None,
) -> int:
    async with session_scope(sessionmaker) as session:
        customer = Customer(
            stripe_customer_id=stripe_customer_id,
            subscription_id=subscription_id or (f"sub_{stripe_customer_id}" if status else None),
            subscription_status=status,
            past_due_since=past_due_since,
        )
        session.add(customer)
        await session.flush()
        assert customer.id is not None
        return customer.id


@dataclass
class Seeder:
    """Customers and keys written straight to the database, as provisioning would leave them.

    Its own connection and the pepper of the settings the app runs with, so it needs nothing from
    inside a running app: tests then call the app over HTTP with what it made.
    """

    sessionmaker: Sessionmaker
    pepper: bytes

    async def customer(self, *, stripe_customer_id: str = "cus_alpha", **customer: Any) -> int:
        return await seed_customer(
            self.sessionmaker, stripe_customer_id=stripe_customer_id, **customer
        )

    async def key(self, customer_id: int, **kwargs: Any) -> tuple[ApiKey, str]:
        async with session_scope(self.sessionmaker) as session:
            return await service.issue(
                session,
                customer_id=customer_id,
                policy=KeyPolicy(pepper=self.pepper, live=False),
                **kwargs,
            )

    async def customer_with_key(
        self, *, stripe_customer_id: str = "cus_alpha", **customer: Any
    ) -> tuple[int, str]:
        customer_id = await self.customer(stripe_customer_id=stripe_customer_id, **customer)
        _key, plaintext = await self.key(customer_id)
        return customer_id, plaintext


@dataclass
class StatementLog:
    statements: list[str] = field(default_factory=list)

    def touching_keys(self) -> list[str]:
        """Statements that read or write the api_key or customer tables."""
        return [s for s in self.statements if KEY_TABLES.search(s)]


@contextmanager
def count_statements(app: FastAPI) -> Iterator[StatementLog]:
    """Every statement the app's engine sends while the block runs."""
    engine = internals.engine(app).sync_engine
    log = StatementLog()

    def record(*args: Any) -> None:
        log.statements.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield log
    finally:
        event.remove(engine, "before_cursor_execute", record)


def headers(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def wrong_key(key: str) -> str:
    """``key`` with its last character changed: always a different key (a typo)."""
    return key[:-1] + ("x" if key[-1] != "x" else "y")
