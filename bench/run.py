"""The benchmark suite: meterapi (on PostgreSQL, or SQLite with ``--sqlite``) against its own bare
endpoint and a tutorial-style integration, with Stripe's usage totals checked at the end. See
``python -m bench --help``.

One run, in order:

1. a fresh database, the Stripe emulator, ``meterapi db upgrade`` and ``meterapi stripe setup``;
   customers with active subscriptions and keys (``meterapi keys issue``);
2. the verification cost of a key on a cache hit, in-process (µs per call);
3. meterapi under uvicorn (``--workers 1``; ``bench/auth_app.py``, the service plus a paid route
   that charges nothing); at saturation, interleaved rounds of ``/healthz``,
   ``/bench/authenticated`` (the key check, no ledger), ``/v1/data`` (authenticated, metered,
   durable) and ``/v1/data`` with a malformed key (401), each with its CPU µs per request (the
   service's process tree and the database's backends, from ``/proc``);
4. at a fixed offered rate, half of the bare saturation rate: ``/healthz`` and ``/v1/data``,
   open loop, latency measured from each request's intended send time; and the same at half of
   the metered saturation rate, a load the metered path can carry;
5. SIGTERM (the service flushes its usage), then: Stripe's totals against the 2xx responses and
   the ledger, and the meter-event calls Stripe received per metered request;
6. the tutorial-style app (``bench/tutorial_app.py``) with 150 ms added to every Stripe call.

``--quick`` keeps only step 3 (and 5). ``--scale`` instead compares one worker, ``--workers 2``
and two replicas on one database, with the CPU per request of two workers against one worker:
driven by the same connections, and by the connections each of the two gets.
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

    @property
    def cpu_us(self) -> float:
        """CPU µs per request, service and database (the median across rounds)."""
        return statistics.median(c.total_us for c in self.cpu)

    def cpu_line(self, label: str) -> str:
        """CPU µs per request (medians across rounds): the service's and the database's."""
        service = statistics.median(c.service_us for c in self.cpu)
        database = statistics.median(c.database_us for c in self.cpu)
        rounds = ", ".join(f"{c.total_us:.0f}" for c in self.cpu)
        return (
            f"  {label:<34} {self.cpu_us:9,.0f} µs CPU per request "
            f"(service {service:.0f} + database {database:.0f}; rounds: {rounds})"
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
    authenticated: Series = field(default_factory=Series)  # the paid path charging nothing
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
    config: Config,
    args: argparse.Namespace,
    *,
    malformed: bool,
    say: Callable[[str], None],
    authenticated: bool = False,
) -> Figures:
    """Saturation rounds, then (unless ``args.quick``) the fixed offered rates. With
    ``authenticated``, the service is ``bench.auth_app`` and its unmetered paid route runs in the
    same rounds, so what the key check costs and what the ledger costs part in one run."""
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
        if authenticated:
            with_cpu(
                figures.authenticated,
                meter,
                lambda: drive.saturate(
                    ports, auth_app.PATH, key=load.key, seconds=secs, connections=conns, tool=tool
                ),
            )
        if malformed:
            with_cpu(
                figures.malformed,
                meter,
                lambda: drive.saturate(
                    ports, "/v1/data", key=bad_key, seconds=secs, connections=conns, tool=tool
                ),
            )

    figures.rate = round(figures.bare.rps / 2)
    figures.rate2 = round(figures.metered.rps / 2)
    for round_ in range(1, 0 if args.quick else args.rounds + 1):
        for rate, bare, metered in (
            (figures.rate, figures.bare_at_rate, figures.metered_at_rate),
            (figures.rate2, figures.bare_at_rate2, figures.metered_at_rate2),
        ):
            say(f"[{config.label}] fixed rate {rate:,.0f} req/s, round {round_}/{args.rounds}")
            with_cpu(
                bare,
                meter,
                lambda rate=rate: drive.offered(  # type: ignore[misc]
                    ports, "/healthz", key=None, seconds=secs, rate=rate, connections=conns
                ),
            )
            with_cpu(
                metered,
                meter,
                lambda rate=rate: bill(  # type: ignore[misc]
                    config.exact,
                    drive.offered(
                        ports, "/v1/data", key=config.exact.key, seconds=secs, rate=rate,
                        connections=conns,
                    ),
                ),
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
    # bench.auth_app: the service plus an unmetered paid route, measured in the same rounds.
    service = stack.start_service("meterapi", app="bench.auth_app:create_app")
    config = Config("1 worker", [service], load, exact, stack.database_pids())
    figures = measure(config, args, malformed=True, authenticated=True, say=say)
    calls = asyncio.run(meter_event_calls(stack.emulator.url, counter_id))
    units_before_stop = sum(
        asyncio.run(ledger_units(stack.database_url, c.stripe_id)).units for c in (load, exact)
    )
    totals = settle(stack, config)
    shutdown_calls = asyncio.run(meter_event_calls(stack.emulator.url, counter_id)) - calls
    tutorial = None if args.quick else measure_tutorial(stack, args, say)

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
    print("saturation (closed loop); CPU per request from /proc, the service's process tree and")
    print("the database's backends for this run (on SQLite the database is inside the service):")
    bare = figures.bare
    rows = [
        ("GET /healthz (bare)", bare),
        ("GET /bench/authenticated (no ledger)", figures.authenticated),
        ("GET /v1/data (metered, durable)", figures.metered),
        ("GET /v1/data, malformed key (401)", figures.malformed),
    ]
    if tutorial is not None:
        rows.append(("tutorial-style, Stripe +150 ms", tutorial))
    for label, series in rows:
        print(series.line(label))
        print(series.cpu_line(""))
    print(
        f"  metered / bare:         {figures.metered.rps / bare.rps:.3f} throughput, "
        f"{figures.metered.cpu_us / bare.cpu_us:.2f}x CPU per request "
        "(targets ≥ 0.85 and ≤ 1.25x)"
    )
    print(
        f"  authenticated / bare:   {figures.authenticated.rps / bare.rps:.3f} throughput, "
        f"{figures.authenticated.cpu_us / bare.cpu_us:.2f}x CPU per request (the key check)"
    )
    print(
        f"  401 / bare:             {figures.malformed.rps / bare.rps:.3f} throughput, "
        f"{figures.malformed.cpu_us / bare.cpu_us:.2f}x CPU per request"
    )
    if tutorial is not None:
        print(
            f"  tutorial / meterapi:    {tutorial.rps / figures.metered.rps:.3f}   (target ≤ 0.1; "
            f"the tutorial is bound by {args.connections} connections ÷ 0.15 s = "
            f"{args.connections / 0.15:,.0f} req/s)"
        )
    if not args.quick:
        print()
        for rate, at_bare, at_metered, what in (
            (figures.rate, figures.bare_at_rate, figures.metered_at_rate, "bare"),
            (figures.rate2, figures.bare_at_rate2, figures.metered_at_rate2, "metered"),
        ):
            print(f"fixed offered rate {rate:,.0f} req/s (half of {what} saturation; open loop):")
            for label, series in (
                ("GET /healthz (bare)", at_bare),
                ("GET /v1/data (metered, durable)", at_metered),
            ):
                print(series.line(label))
                print(series.cpu_line(""))
            target = "   (target ≤ 5 ms)" if what == "bare" else ""
            print(f"  p99 added by metering:      {at_metered.p99 - at_bare.p99:+.2f} ms{target}")
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


def measure_tutorial(stack: Stack, args: argparse.Namespace, say: Callable[[str], None]) -> Series:
    """The tutorial-style app with 150 ms added to every Stripe call (its own process)."""
    say("[tutorial] 150 ms added to every Stripe call")
    tutorial_id, tutorial_key = stack.seed_customer("tutorial")

    async def slow_stripe() -> None:
        async with stack.control() as control:
            await control.inject_fault(
                "latency", METER_EVENTS_PATH, seconds=TUTORIAL_STRIPE_LATENCY_S, count=None
            )

    asyncio.run(slow_stripe())
    tutorial = stack.start_tutorial(customer=tutorial_id, key=tutorial_key)
    ports, conns, tool = [tutorial.port], args.connections, args.tool
    drive.saturate(ports, "/v1/data", key=tutorial_key, seconds=2, connections=conns, tool=tool)
    series = Series()
    with_cpu(
        series,
        CpuMeter(lambda: process_tree(tutorial.pid)),
        lambda: drive.saturate(
            ports, "/v1/data", key=tutorial_key, seconds=args.seconds, connections=conns,
            tool=tool,
        ),
    )  # fmt: skip
    tutorial.terminate()
    return series


def run_scale(stack: Stack, args: argparse.Namespace, say: Callable[[str], None]) -> bool:
    half = max(args.connections // 2, 1)
    # (label, workers, replicas, connections). The last layout is one worker driven by as many
    # connections as each of two workers gets: at saturation the ledger's batches follow the
    # connections a worker has, so against it two workers show what grows with the workers
    # alone, apart from what smaller batches cost.
    layouts = [("1 worker", 1, 1, args.connections), ("--workers 2", 2, 1, args.connections)]
    if not args.quick:
        layouts.append(("2 replicas", 1, 2, args.connections))
    layouts.append((f"1 worker, {half} connections", 1, 1, half))
    rows: list[tuple[str, Figures, list[Totals]]] = []
    for label, workers, replicas, connections in layouts:
        load, exact = new_customers(stack, label, args.tool)
        services = [
            stack.start_service(
                f"meterapi-{label.replace(' ', '').replace(',', '')}-{i}", workers=workers
            )
            for i in range(replicas)
        ]
        config = Config(label, services, load, exact, stack.database_pids())
        figures = measure(config, argparse.Namespace(**{**vars(args), "connections": connections}),
                          malformed=False, say=say)  # fmt: skip
        rows.append((label, figures, settle(stack, config)))

    print()
    print(
        f"meterapi on several processes — {args.tool}, {args.connections} connections (split "
        f"evenly between replicas) unless said, {args.seconds:g} s per measurement, "
        f"{args.rounds} rounds; {database_name(args)}"
    )
    print(f"  machine: {args.machine}")
    ok = True
    for label, figures, totals in rows:
        print()
        print(f"{label}:")
        print(figures.bare.line("GET /healthz (bare)"))
        print(figures.bare.cpu_line(""))
        print(figures.metered.line("GET /v1/data (metered, durable)"))
        print(figures.metered.cpu_line(""))
        print(
            f"  metered / bare: {figures.metered.rps / figures.bare.rps:.3f} throughput, "
            f"{figures.metered.cpu_us / figures.bare.cpu_us:.2f}x CPU per request"
        )
        if not args.quick:
            for rate, at_bare, at_metered in (
                (figures.rate, figures.bare_at_rate, figures.metered_at_rate),
                (figures.rate2, figures.bare_at_rate2, figures.metered_at_rate2),
            ):
                print(at_bare.line(f"/healthz at {rate:,.0f} req/s"))
                print(at_metered.line(f"/v1/data at {rate:,.0f} req/s"))
                print(f"  p99 added at {rate:,.0f} req/s: {at_metered.p99 - at_bare.p99:+.2f} ms")
        for t in totals:
            print(t.line())
            ok &= t.exact
    one, two, one_half = rows[0][1], rows[1][1], rows[-1][1]
    print()
    print(
        "CPU per request, --workers 2 against 1 worker (target ≤ 1.1x: no contention that grows "
        f"with workers): /healthz {two.bare.cpu_us / one.bare.cpu_us:.2f}x, "
        f"/v1/data {two.metered.cpu_us / one.metered.cpu_us:.2f}x"
    )
    print(
        f"  the same against 1 worker with {half} connections (each of the two workers' share): "
        f"/healthz {two.bare.cpu_us / one_half.bare.cpu_us:.2f}x, "
        f"/v1/data {two.metered.cpu_us / one_half.metered.cpu_us:.2f}x"
    )
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
        "--quick", action="store_true",
        help="saturation rounds only: no fixed offered rate, no tutorial, no replicas",
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
