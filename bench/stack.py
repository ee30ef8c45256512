"""The system under test, each part in its own process on 127.0.0.1: a fresh PostgreSQL database,
the Stripe emulator, meterapi under uvicorn (one or more processes), and the tutorial baseline.

Everything started here is stopped by ``Stack.close()`` (also on Ctrl-C), and the database is
dropped; a failing step leaves no process or database behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import asyncpg
import httpx
import stripe
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bench.cpu import children, postgres_backends
from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.models import Customer, UsageEvent, UsageReport
from meterapi.stripe_emulator import EmulatorControl

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "postgres"}
# Test-mode placeholders: the emulator accepts any sk_test_ key; nothing here is a secret.
SECRET_KEY = "sk_test_bench"  # noqa: S105
WEBHOOK_SECRET = "whsec_bench_not_secret"  # noqa: S105
PEPPER = "bench-pepper-not-secret"
START_TIMEOUT_S = 120.0  # a worker starting on a loaded two-core machine


def narrator() -> Callable[[str], None]:
    """``say(message)``: the message on stdout after the seconds since this call."""
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"{time.monotonic() - started:7.1f}s  {message}", flush=True)

    return say


_next_port = 0


def free_port() -> int:
    """A free port: the system's pick, or the next free one in ``BENCH_PORTS`` (``low-high``),
    for a machine where each user of it keeps to a range."""
    global _next_port
    span = os.environ.get("BENCH_PORTS", "")
    if span:
        low, _, high = span.partition("-")
        for port in range(max(int(low), _next_port), int(high) + 1):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _next_port = port + 1
            return port
        raise RuntimeError(f"no free port left in BENCH_PORTS={span}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- PostgreSQL ----------------------------------------------------------------------------------


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(**PG_ADMIN, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def create_database(name: str) -> str:
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- processes -----------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_http(self, path: str, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {path} within {timeout_s:.0f} s")

    def terminate(self, timeout_s: float = 40.0) -> int | None:
        """SIGTERM and wait (the service flushes its usage to Stripe on the way out)."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL: nothing is flushed."""
        if self.alive():
            self.popen.kill()
            self.popen.wait(timeout=10)

    def rss_kib(self) -> int:
        """Resident memory of the process (and of its children, for a multi-worker uvicorn)."""
        total = 0
        for pid in [self.pid, *children(self.pid)]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class Stack:
    """Owns every process and the database it creates; ``close()`` releases them all."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="meterapi-bench-")))
    sqlite: bool = False  # a SQLite file in the work directory instead of PostgreSQL
    database: str | None = None
    database_url: str = ""
    emulator: Proc | None = None
    price_id: str = ""
    procs: list[Proc] = field(default_factory=list)

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def spawn(self, name: str, argv: list[str], *, port: int, env: dict[str, str]) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                cwd=self.workdir,  # no stray .env is read
                env={**_clean_environ(), "PYTHONPATH": str(ROOT), **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, not them
            )
        proc = Proc(name, popen, log, port)
        self.procs.append(proc)
        return proc

    # -- the parts ------------------------------------------------------------------------------

    def create_database(self) -> str:
        if self.sqlite:
            self.database_url = f"sqlite+aiosqlite:///{self.workdir / 'bench.db'}"
            return self.database_url
        self.database = f"meterapi_bench_{os.getpid()}_{int(time.time())}"
        self.database_url = create_database(self.database)
        return self.database_url

    def database_pids(self) -> Callable[[], list[int]] | None:
        """The database's processes serving this stack (None: inside the service, SQLite)."""
        if self.database is None:
            return None
        return postgres_backends(PG_ADMIN, self.database)

    def start_emulator(self) -> Proc:
        port = free_port()
        self.emulator = self.spawn(
            "emulator",
            [sys.executable, "-m", "bench.emulator", "--port", str(port)],
            port=port,
            env={},
        )
        self.emulator.wait_http("/_emulator/health")
        return self.emulator

    def service_env(self, **extra: str) -> dict[str, str]:
        assert self.emulator is not None
        env = {
            "METERAPI_DATABASE_URL": self.database_url,
            "METERAPI_STRIPE_SECRET_KEY": SECRET_KEY,
            "METERAPI_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "METERAPI_KEY_PEPPER": PEPPER,
            "METERAPI_STRIPE_API_BASE": self.emulator.url,
        }
        if self.price_id:
            env["METERAPI_STRIPE_PRICE_ID"] = self.price_id
        env.update(extra)
        return env

    def cli(self, *args: str, timeout_s: float = 120.0) -> str:
        """Run ``meterapi …`` against this stack; return its stdout."""
        result = subprocess.run(
            [sys.executable, "-m", "meterapi.cli", *args],
            cwd=self.workdir,
            env={**_clean_environ(), **self.service_env()},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"meterapi {' '.join(args[:2])} failed: {result.stderr[-2000:]}")
        return result.stdout

    def set_up(self) -> None:
        """A fresh database, the emulator, the schema and the metered price."""
        self.create_database()
        self.start_emulator()
        self.migrate_and_set_up_stripe()

    def migrate_and_set_up_stripe(self) -> None:
        self.cli("db", "upgrade")
        for line in self.cli("stripe", "setup").splitlines():
            if line.startswith("METERAPI_STRIPE_PRICE_ID="):
                self.price_id = line.partition("=")[2].strip()
        assert self.price_id, "meterapi stripe setup printed no price"

    def start_service(
        self,
        name: str = "meterapi",
        *,
        workers: int = 1,
        port: int | None = None,
        app: str = "meterapi.cli.serve:create_served_app",  # as `meterapi serve` runs it
        **env: str,
    ) -> Proc:
        port = port or free_port()
        argv = [
            sys.executable, "-m", "uvicorn", app, "--factory",
            "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--log-level", "warning", "--timeout-graceful-shutdown", "20",
        ]  # fmt: skip
        if workers > 1:  # as `meterapi serve --workers N` runs them (meterapi.cli.workers)
            argv = [
                sys.executable, "-m", "bench.workers", app,
                "--port", str(port), "--workers", str(workers),
            ]  # fmt: skip
        proc = self.spawn(name, argv, port=port, env=self.service_env(**env))
        proc.wait_http("/readyz")
        return proc

    def start_tutorial(self, *, customer: str, key: str) -> Proc:
        assert self.emulator is not None
        port = free_port()
        argv = [
            sys.executable, "-m", "uvicorn", "bench.tutorial_app:app",
            "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        env = {
            "BENCH_TUTORIAL_STRIPE_BASE": self.emulator.url,
            "BENCH_TUTORIAL_CUSTOMER": customer,
            "BENCH_TUTORIAL_KEY": key,
        }
        proc = self.spawn("tutorial", argv, port=port, env=env)
        proc.wait_http("/docs")
        return proc

    def seed_customer(self, label: str) -> tuple[str, str]:
        """A customer with an active subscription in Stripe and in our database, and a key for
        it issued by ``meterapi keys issue``. Returns (Stripe customer id, key)."""
        assert self.emulator is not None and self.price_id
        sdk = stripe.StripeClient(
            SECRET_KEY,
            http_client=stripe.HTTPXClient(allow_sync_methods=True),
            base_addresses={"api": self.emulator.url, "meter_events": self.emulator.url},
        )
        customer = sdk.v1.customers.create(params={"email": f"{label}@bench.example"})
        subscription = sdk.v1.subscriptions.create(
            params={"customer": customer.id, "items": [{"price": self.price_id}]}
        )
        asyncio.run(
            _insert_customer(
                self.database_url,
                stripe_customer_id=customer.id,
                subscription_id=subscription.id,
                subscription_item_id=subscription["items"].data[0].id,
                status=subscription.status,
            )
        )
        key = self.cli("keys", "issue", "--customer", customer.id, "--name", label).strip()
        return customer.id, key

    # -- what Stripe and the ledger hold -------------------------------------------------------

    def control(self) -> EmulatorControl:
        assert self.emulator is not None
        return EmulatorControl(self.emulator.url)

    def close(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.terminate(timeout_s=30)
            except Exception:  # noqa: S110 (best effort: the next one must still stop)
                pass
            finally:
                proc.kill()
        self.procs.clear()
        if self.database:
            drop_database(self.database)
            self.database = None


def _clean_environ() -> dict[str, str]:
    """This process's environment without the developer's METERAPI_ settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("METERAPI_", "BENCH_"))}


async def _insert_customer(database_url: str, **fields: Any) -> None:
    engine = make_engine(database_url)
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            session.add(
                Customer(
                    stripe_customer_id=fields["stripe_customer_id"],
                    subscription_id=fields["subscription_id"],
                    subscription_item_id=fields["subscription_item_id"],
                    subscription_status=fields["status"],
                )
            )
    finally:
        await engine.dispose()


@dataclass
class Ledger:
    units: int
    reports_pending: int
    reports_parked: int


async def _customer_pk(session: AsyncSession, stripe_customer_id: str) -> int | None:
    found = select(Customer.id).where(Customer.stripe_customer_id == stripe_customer_id)
    return (await session.exec(found)).one()


T = TypeVar("T")


async def _of_customer(
    database_url: str,
    stripe_customer_id: str,
    read: Callable[[AsyncSession, int | None], Awaitable[T]],
) -> T:
    """``read(session, customer's row id)`` on an engine of its own, disposed of after."""
    engine = make_engine(database_url)
    try:
        async with make_sessionmaker(engine)() as session:
            return await read(session, await _customer_pk(session, stripe_customer_id))
    finally:
        await engine.dispose()


async def ledger_units(database_url: str, stripe_customer_id: str) -> Ledger:
    """The customer's units in our ledger, and the reports not (yet) acknowledged by Stripe."""

    async def read(session: AsyncSession, customer_id: int | None) -> Ledger:
        units = (
            await session.exec(
                select(func.coalesce(func.sum(UsageEvent.units), 0)).where(
                    UsageEvent.customer_id == customer_id
                )
            )
        ).one()
        by_status = dict(
            (
                await session.exec(
                    select(UsageReport.status, func.count())
                    .where(UsageReport.customer_id == customer_id)
                    .group_by(col(UsageReport.status))
                )
            ).all()
        )
        return Ledger(int(units), by_status.get("pending", 0), by_status.get("parked", 0))

    return await _of_customer(database_url, stripe_customer_id, read)


async def ledger_rows(database_url: str, stripe_customer_id: str) -> int:
    """How many ``usage_event`` rows the customer has: for a customer whose load uses one key
    and one route, the ledger's committed batches (one row each, two across a minute)."""

    async def read(session: AsyncSession, customer_id: int | None) -> int:
        count = select(func.count()).where(UsageEvent.customer_id == customer_id)
        return int((await session.exec(count)).one())

    return await _of_customer(database_url, stripe_customer_id, read)


@dataclass
class StripeUsage:
    total: int
    events: int
    duplicate_identifiers: int


async def stripe_usage(control: EmulatorControl, stripe_customer_id: str) -> StripeUsage:
    """What the emulator holds for the customer: the summed value, and a duplicate check."""
    body = await control.meter_events(customer=stripe_customer_id)
    live = [e for e in body["data"] if not e["canceled"]]
    identifiers = [e["identifier"] for e in body["data"]]
    return StripeUsage(
        total=int(sum(float(e["value"]) for e in live)),
        events=len(live),
        duplicate_identifiers=len(identifiers) - len(set(identifiers)),
    )


METER_EVENTS_PATH = "/v1/billing/meter_events"


async def start_counting_meter_event_calls(control: EmulatorControl) -> str:
    """A zero-latency fault on every meter-event call: its hit count is the number of calls
    the emulator received (accepted, refused or failed alike)."""
    fault = await control.inject_fault(
        "latency", METER_EVENTS_PATH, method="POST", seconds=0.0, count=None
    )
    return str(fault["id"])


async def meter_event_calls(emulator_url: str, fault_id: str) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{emulator_url}/_emulator/faults")
    response.raise_for_status()
    for fault in response.json()["data"]:
        if fault["id"] == fault_id:
            return int(fault["hits"])
    raise RuntimeError("the meter-event call counter is gone (were the faults cleared?)")
