"""The benchmark suite: meterapi on PostgreSQL against its own bare endpoint and a tutorial-style
integration, with Stripe's usage totals checked at the end. See ``python -m bench --help``.

One run, in order:

1. a fresh PostgreSQL database, the Stripe emulator, ``meterapi db upgrade`` and
   ``meterapi stripe setup``; customers with active subscriptions and keys
   (``meterapi keys issue``);
2. the verification cost of a key on a cache hit, in-process (µs per call);
3. meterapi under uvicorn (``--workers 1``); at saturation, interleaved rounds of ``/healthz``,
   ``/v1/data`` (authenticated, metered, durable) and ``/v1/data`` with a malformed key (401);
4. at a fixed offered rate, half of the bare saturation rate: ``/healthz`` and ``/v1/data``,
   open loop, latency measured from each request's intended send time; and the same at half of
   the metered saturation rate, a load the metered path can carry;
5. SIGTERM (the service flushes its usage), then: Stripe's totals against the 2xx responses and
   the ledger, and the meter-event calls Stripe received per metered request;
6. the key check alone: ``bench/auth_app.py`` (the service plus an authenticated route without
   metering) against ``/healthz``, in its own process;
7. the tutorial-style app (``bench/tutorial_app.py``) with 150 ms added to every Stripe call.

``--scale`` instead compares one worker, ``--workers 2`` and two replicas on one database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import auth_app, drive, keys_bench
from bench.cpu import CpuMeter, CpuPerRequest, process_tree
from bench.drive import Result
from bench.stack import (
    METER_EVENTS_PATH,
    Ledger,
    Proc,
    Stack,
    StripeUsage,
    ledger_units,
    meter_event_calls,
    narrator,
    start_counting_meter_event_calls,
    stripe_usage,
)

TUTORIAL_STRIPE_LATENCY_S = 0.15


# -- machine -------------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    load = " ".join(os.getloadavg().__repr__().strip("()").split(", ")[:3])
    pg = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "SHOW server_version"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, PostgreSQL {pg or '?'}; load average at start {load}"
    )


# -- measurements --------------------------------------------------------------------------------


@dataclass
class Series:
    """Interleaved rounds of one measurement; figures are the medians across rounds."""

    runs: list[Result] = field(default_factory=list)
    cpu: list[CpuPerRequest] = field(default_factory=list)  # per round, when measured

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.runs)

    @property
    def p50(self) -> float:
        return statistics.median(r.p50_ms for r in self.runs)

    @property
    def p99(self) -> float:
        return statistics.median(r.p99_ms for r in self.runs)

    @property
    def ok(self) -> int:
        return sum(r.ok for r in self.runs)

    @property
    def exact(self) -> bool:
        return all(r.exact for r in self.runs)

    def cpu_line(self, label: str) -> str:
        """CPU µs per request (medians across rounds): the service's and the database's."""
        service = statistics.median(c.service_us for c in self.cpu)
        database = statistics.median(c.database_us for c in self.cpu)
        return (
            f"  {label:<34} {service + database:7.0f} µs CPU per request "
            f"(service {service:.0f} + database {database:.0f})"
        )

    def line(self, label: str) -> str:
        spread = ", ".join(f"{r.rps:,.0f}" for r in self.runs)
        other = sum(r.other for r in self.runs)
        errors = sum(r.errors for r in self.runs)
        tail = f"  non-2xx {other:,}" if other else ""
        tail += f"  errors {errors:,}" if errors else ""
        return (
            f"  {label:<34} {self.rps:>9,.0f} req/s   p50 {self.p50:7.2f} ms   "
            f"p99 {self.p99:7.2f} ms   (rounds: {spread}){tail}"
        )


@dataclass
class Customer:
    label: str
    stripe_id: str
    key: str
    sent_ok: int = 0  # 2xx responses counted by the load generators
    counts_exact: bool = True  # every request was answered (no wrk cut-off, no error)


@dataclass
class Config:
    """One deployment under test: one or more service processes on the same database."""

    label: str
    services: list[Proc]
    load: Customer
    exact: Customer
    database_pids: Callable[[], list[int]] | None = None

    def cpu_meter(self) -> CpuMeter:
        return CpuMeter(
            lambda: [pid for s in self.services for pid in process_tree(s.pid)],
            self.database_pids,
        )

    @property
    def ports(self) -> list[int]:
        return [p.port for p in self.services]


@dataclass
class Figures:
    bare: Series = field(default_factory=Series)
    metered: Series = field(default_factory=Series)
    malformed: Series = field(default_factory=Series)
    bare_at_rate: Series = field(default_factory=Series)
    metered_at_rate: Series = field(default_factory=Series)
    rate: float = 0.0
    # The same at half of the metered saturation rate: a load the metered path can carry.
    bare_at_rate2: Series = field(default_factory=Series)
    metered_at_rate2: Series = field(default_factory=Series)
    rate2: float = 0.0


def bill(customer: Customer, result: Result) -> Result:
    customer.sent_ok += result.ok
    customer.counts_exact &= result.exact
    return result


def with_cpu(series: Series, meter: CpuMeter, run: Callable[[], Result]) -> Result:
    """``run()`` appended to ``series``, with the CPU it cost per request."""
    before = meter.sample()
    result = run()
    series.cpu.append(meter.per_request(before, result.requests))
    series.runs.append(result)
    return result


def measure(
    config: Config, args: argparse.Namespace, *, malformed: bool, say: Callable[[str], None]
) -> Figures:
    figures = Figures()
    meter = config.cpu_meter()
    tool, conns, secs = args.tool, args.connections, args.seconds
    ports, load = config.ports, config.load
    bad_key = load.key[:-1] + ("A" if load.key[-1] != "A" else "B")  # the checksum fails

    say(f"[{config.label}] warm-up")
    drive.saturate(ports, "/healthz", key=None, seconds=2, connections=conns, tool=tool)
    bill(
        load,
        drive.saturate(ports, "/v1/data", key=load.key, seconds=2, connections=conns, tool=tool),
    )

    for round_ in range(1, args.rounds + 1):
        say(f"[{config.label}] saturation, round {round_}/{args.rounds}")
        with_cpu(
            figures.bare,
            meter,
            lambda: drive.saturate(
                ports, "/healthz", key=None, seconds=secs, connections=conns, tool=tool
            ),
        )
        with_cpu(
            figures.metered,
            meter,
            lambda: bill(
                load,
                drive.saturate(
                    ports, "/v1/data", key=load.key, seconds=secs, connections=conns, tool=tool
                ),
            ),
        )
        if malformed:
            figures.malformed.runs.append(
                drive.saturate(
                    ports, "/v1/data", key=bad_key, seconds=secs, connections=conns, tool=tool
                )
            )

    figures.rate = round(figures.bare.rps / 2)
    figures.rate2 = round(figures.metered.rps / 2)
    for round_ in range(1, args.rounds + 1):
        for rate, bare, metered in (
            (figures.rate, figures.bare_at_rate, figures.metered_at_rate),
            (figures.rate2, figures.bare_at_rate2, figures.metered_at_rate2),
        ):
            say(f"[{config.label}] fixed rate {rate:,.0f} req/s, round {round_}/{args.rounds}")
            bare.runs.append(
                drive.offered(
                    ports, "/healthz", key=None, seconds=secs, rate=rate, connections=conns
                )
            )
            metered.runs.append(
                bill(
                    config.exact,
                    drive.offered(
                        ports, "/v1/data", key=config.exact.key, seconds=secs, rate=rate,
                        connections=conns,
                    ),
                )
            )  # fmt: skip
    return figures


# -- usage totals --------------------------------------------------------------------------------


@dataclass
class Totals:
    customer: Customer
    ledger: Ledger
    stripe: StripeUsage

    @property
    def exact(self) -> bool:
        """Stripe holds what the ledger holds, once, and the ledger what the clients were told."""
        stripe_ok = (
            self.stripe.total == self.ledger.units and self.stripe.duplicate_identifiers == 0
        )
        if self.customer.counts_exact:
            return stripe_ok and self.ledger.units == self.customer.sent_ok
        return stripe_ok and self.ledger.units >= self.customer.sent_ok

    def line(self) -> str:
        c = self.customer
        if c.counts_exact:
            seen = f"2xx seen by clients {c.sent_ok:,}"
        else:
            cut = self.ledger.units - c.sent_ok
            seen = f"2xx counted by wrk {c.sent_ok:,} (+{cut} in flight when wrk stopped)"
        verdict = "EXACT" if self.exact else "MISMATCH"
        return (
            f"  {c.label:<22} {seen} | ledger {self.ledger.units:,} | Stripe {self.stripe.total:,} "
            f"in {self.stripe.events} meter events, {self.stripe.duplicate_identifiers} duplicate "
            f"identifiers, {self.ledger.reports_pending} pending, "
            f"{self.ledger.reports_parked} parked  → {verdict}"
        )


def settle(stack: Stack, config: Config) -> list[Totals]:
    """SIGTERM every service (each flushes), flush whatever is left, then compare totals."""
    for service in config.services:
        service.terminate()
    stack.cli("usage", "flush", "--timeout", "60")  # a no-op when the shutdowns flushed it all

    async def read() -> list[Totals]:
        async with stack.control() as control:
            return [
                Totals(
                    c,
                    await ledger_units(stack.database_url, c.stripe_id),
                    await stripe_usage(control, c.stripe_id),
                )
                for c in (config.load, config.exact)
            ]

    return asyncio.run(read())


# -- the runs ------------------------------------------------------------------------------------


def new_customers(stack: Stack, label: str, tool: str) -> tuple[Customer, Customer]:
    load_id, load_key = stack.seed_customer(f"{label}-saturation")
    exact_id, exact_key = stack.seed_customer(f"{label}-fixed-rate")
    return (
        Customer(f"{label}: saturation ({tool})", load_id, load_key),
        Customer(f"{label}: fixed rate (loadgen)", exact_id, exact_key),
    )


def measure_key_check(
    stack: Stack, args: argparse.Namespace, *, key: str, say: Callable[[str], None]
) -> tuple[Series, Series]:
    """``/healthz`` against an authenticated, unmetered route of the same service."""
    service = stack.start_service("auth-only", app="bench.auth_app:create_app")
    ports, conns, secs, tool = [service.port], args.connections, args.seconds, args.tool
    path = auth_app.PATH
    bare, authenticated = Series(), Series()
    say("[key check alone] warm-up")
    drive.saturate(ports, "/healthz", key=None, seconds=2, connections=conns, tool=tool)
    drive.saturate(ports, path, key=key, seconds=2, connections=conns, tool=tool)
    for round_ in range(1, args.rounds + 1):
        say(f"[key check alone] saturation, round {round_}/{args.rounds}")
        bare.runs.append(
            drive.saturate(ports, "/healthz", key=None, seconds=secs, connections=conns, tool=tool)
        )
        authenticated.runs.append(
            drive.saturate(
                ports, auth_app.PATH, key=key, seconds=secs, connections=conns, tool=tool
            )
        )
    service.terminate()
    return bare, authenticated


def run_main(stack: Stack, args: argparse.Namespace, say: Callable[[str], None]) -> bool:
    micros = asyncio.run(
        keys_bench.verification_cost(stack.database_url, key=stack.seed_customer("verify")[1])
    )
    load, exact = new_customers(stack, "1 worker", args.tool)

    async def counter() -> str:
        async with stack.control() as control:
            return await start_counting_meter_event_calls(control)

    assert stack.emulator is not None
    counter_id = asyncio.run(counter())
    service = stack.start_service("meterapi")
    config = Config("1 worker", [service], load, exact, stack.database_pids())
    figures = measure(config, args, malformed=True, say=say)
    calls = asyncio.run(meter_event_calls(stack.emulator.url, counter_id))
    units_before_stop = sum(
        asyncio.run(ledger_units(stack.database_url, c.stripe_id)).units for c in (load, exact)
    )
    totals = settle(stack, config)
    shutdown_calls = asyncio.run(meter_event_calls(stack.emulator.url, counter_id)) - calls

    auth_bare, auth_only = measure_key_check(stack, args, key=load.key, say=say)

    say("[tutorial] 150 ms added to every Stripe call")
    tutorial_id, tutorial_key = stack.seed_customer("tutorial")

    async def slow_stripe() -> None:
        async with stack.control() as control:
            await control.inject_fault(
                "latency", METER_EVENTS_PATH, seconds=TUTORIAL_STRIPE_LATENCY_S, count=None
            )

    asyncio.run(slow_stripe())
    tutorial = stack.start_tutorial(customer=tutorial_id, key=tutorial_key)
    drive.saturate(
        [tutorial.port],
        "/v1/data",
        key=tutorial_key,
        seconds=2,
        connections=args.connections,
        tool=args.tool,
    )
    tutorial_series = Series(
        [
            drive.saturate(
                [tutorial.port], "/v1/data", key=tutorial_key, seconds=args.seconds,
                connections=args.connections, tool=args.tool,
            )
        ]
    )  # fmt: skip
    tutorial.terminate()

    print()
    print(
        f"meterapi benchmark — {args.tool}, {args.connections} connections, {args.seconds:g} s per "
        f"measurement, {args.rounds} interleaved rounds (medians); {database_name(args)}, "
        "uvicorn --workers 1"
    )
    print(f"  machine: {args.machine}")
    print()
    print(f"key verification on a cache hit: {micros:.2f} µs per call (in process)")
    print()
    print("saturation (closed loop):")
    print(figures.bare.line("GET /healthz (bare)"))
    print(figures.metered.line("GET /v1/data (metered, durable)"))
    print(figures.malformed.line("GET /v1/data, malformed key (401)"))
    print(tutorial_series.line("tutorial-style, Stripe +150 ms"))
    ratio = figures.metered.rps / figures.bare.rps
    key_check_ratio = auth_only.rps / auth_bare.rps
    tutorial_ratio = tutorial_series.rps / figures.metered.rps
    print(f"  ratio metered / bare:       {ratio:.3f}   (target ≥ 0.77 on PostgreSQL)")
    print(f"  ratio 401 / bare:           {figures.malformed.rps / figures.bare.rps:.3f}")
    print(
        f"  ratio tutorial / meterapi:  {tutorial_ratio:.3f}   (target ≤ 0.1; the tutorial is "
        f"bound by {args.connections} connections ÷ 0.15 s = {args.connections / 0.15:,.0f} req/s)"
    )
    print("CPU per request at saturation (from /proc; the database: its backends for this run):")
    print(figures.bare.cpu_line("GET /healthz (bare)"))
    print(figures.metered.cpu_line("GET /v1/data (metered, durable)"))
    print()
    print("the key check alone (bench/auth_app.py: the same service, a DirectPaidRoute that")
    print("charges nothing and answers /v1/data's body; its own process, interleaved rounds):")
    print(auth_bare.line("GET /healthz (bare)"))
    print(auth_only.line("GET /bench/authenticated"))
    print(f"  ratio authenticated / bare: {key_check_ratio:.3f}   (target ≥ 0.85)")
    print()
    print(f"fixed offered rate {figures.rate:,.0f} req/s (half of bare saturation; open loop):")
    print(figures.bare_at_rate.line("GET /healthz (bare)"))
    print(figures.metered_at_rate.line("GET /v1/data (metered, durable)"))
    added = figures.metered_at_rate.p99 - figures.bare_at_rate.p99
    print(f"  p99 added by metering:      {added:+.2f} ms   (target ≤ 5 ms)")
    print(f"fixed offered rate {figures.rate2:,.0f} req/s (half of metered saturation; open loop):")
    print(figures.bare_at_rate2.line("GET /healthz (bare)"))
    print(figures.metered_at_rate2.line("GET /v1/data (metered, durable)"))
    added2 = figures.metered_at_rate2.p99 - figures.bare_at_rate2.p99
    print(f"  p99 added by metering:      {added2:+.2f} ms")
    print()
    per_request = calls / units_before_stop if units_before_stop else float("nan")
    print(
        f"Stripe meter-event calls while serving: {calls} for {units_before_stop:,} metered 2xx "
        f"= {per_request:.5f} per request (target ≤ 0.01); {shutdown_calls} more at shutdown"
    )
    print("usage totals after SIGTERM (the service flushes; then `meterapi usage flush`):")
    for t in totals:
        print(t.line())
    return all(t.exact for t in totals)


def run_scale(stack: Stack, args: argparse.Namespace, say: Callable[[str], None]) -> bool:
    layouts = [("1 worker", 1, 1), ("--workers 2", 2, 1), ("2 replicas", 1, 2)]
    rows: list[tuple[str, Figures, list[Totals]]] = []
    for label, workers, replicas in layouts:
        load, exact = new_customers(stack, label, args.tool)
        services = [
            stack.start_service(f"meterapi-{label.replace(' ', '')}-{i}", workers=workers)
            for i in range(replicas)
        ]
        config = Config(label, services, load, exact, stack.database_pids())
        figures = measure(config, args, malformed=False, say=say)
        rows.append((label, figures, settle(stack, config)))

    print()
    print(
        f"meterapi on several processes — {args.tool}, {args.connections} connections (split "
        f"evenly between replicas), {args.seconds:g} s per measurement, {args.rounds} rounds"
    )
    print(f"  machine: {args.machine}")
    ok = True
    for label, figures, totals in rows:
        print()
        print(f"{label}:")
        print(figures.bare.line("GET /healthz (bare)"))
        print(figures.metered.line("GET /v1/data (metered, durable)"))
        print(f"  ratio metered / bare: {figures.metered.rps / figures.bare.rps:.3f}")
        print(figures.bare.cpu_line("CPU, /healthz"))
        print(figures.metered.cpu_line("CPU, /v1/data"))
        print(figures.bare_at_rate.line(f"/healthz at {figures.rate:,.0f} req/s"))
        print(figures.metered_at_rate.line(f"/v1/data at {figures.rate:,.0f} req/s"))
        print(
            f"  p99 added at {figures.rate:,.0f} req/s: "
            f"{figures.metered_at_rate.p99 - figures.bare_at_rate.p99:+.2f} ms"
        )
        print(figures.bare_at_rate2.line(f"/healthz at {figures.rate2:,.0f} req/s"))
        print(figures.metered_at_rate2.line(f"/v1/data at {figures.rate2:,.0f} req/s"))
        print(
            f"  p99 added at {figures.rate2:,.0f} req/s: "
            f"{figures.metered_at_rate2.p99 - figures.bare_at_rate2.p99:+.2f} ms"
        )
        for t in totals:
            print(t.line())
            ok &= t.exact
    return ok


def database_name(args: argparse.Namespace) -> str:
    return "SQLite" if args.sqlite else "PostgreSQL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--tool", choices=["auto", "wrk", "loadgen"], default="auto",
        help="saturation load: wrk if installed (auto), or the built-in asyncio generator",
    )  # fmt: skip
    parser.add_argument(
        "--sqlite", action="store_true",
        help="a SQLite file instead of a PostgreSQL database (the service's default)",
    )  # fmt: skip
    parser.add_argument(
        "--scale", action="store_true",
        help="compare 1 worker, --workers 2 and two replicas on one database",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.tool == "auto":
        args.tool = "wrk" if drive.wrk_available() else "loadgen"
    args.machine = machine()
    say = narrator()
    with Stack(sqlite=args.sqlite) as stack:
        say(f"creating a {database_name(args)} database, starting the Stripe emulator")
        stack.set_up()
        ok = run_scale(stack, args, say) if args.scale else run_main(stack, args, say)
    say("done; processes stopped, database dropped")
    if not ok:
        print("USAGE TOTALS MISMATCH: see above")
        return 1
    return 0
