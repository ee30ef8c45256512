"""Soak: mixed traffic for minutes, Stripe faults every so often, one SIGKILL and restart of the
service; then the exact usage totals, and the service's resident memory over time.

    .venv/bin/python -m bench.soak [--minutes 10] [--rate 300]

Traffic is open loop (``bench.loadgen``, in separate processes) in back-to-back segments, so
every request is answered and counted: ``/v1/data`` for two customers, ``/v1/data`` with a
malformed key, ``/v1/keys``, ``/v1/usage`` (which calls Stripe), ``/healthz``. Every
``--fault-every`` seconds the emulator is told to fail meter-event calls in one of the ways Stripe
fails (5xx, 429, a hang past the client's timeout, an answer lost after the event was applied,
added latency). Halfway through, the service is SIGKILLed mid-segment and started again on the
same port.

Checked at the end, per customer: Stripe's total equals the ledger, with no identifier twice;
the ledger holds every 2xx the clients saw, plus at most the requests that failed on the client's
side (cut off by the SIGKILL, or left unanswered when an overloaded service fell behind), whose 2xx
may have been produced, and so billed, without reaching the client. Memory: RSS is
read from ``/proc/<pid>/status`` every few seconds; flat means the last third of the samples is
within 2 MiB of the first third after warm-up (per process: the restart starts a new one).
Not a CI test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

from bench.stack import (
    METER_EVENTS_PATH,
    ROOT,
    Stack,
    ledger_units,
    meter_event_calls,
    narrator,
    start_counting_meter_event_calls,
    stripe_usage,
)

FLAT_MIB = 2.0  # growth from the first to the last third of a process's samples

FAULTS: list[dict[str, object]] = [
    {"kind": "error", "status": 500, "count": 5},
    {"kind": "rate_limit", "count": 5},
    {"kind": "hang", "seconds": 12.0, "count": 1},  # past the service's 10 s Stripe timeout
    {"kind": "lost_response", "count": 3},
    {"kind": "latency", "seconds": 0.5, "count": 20},
    {"kind": "hang", "seconds": 12.0, "count": 1, "apply": True},  # applied, then no answer
]


@dataclass
class Stream:
    label: str
    path: str
    share: float  # of the total rate
    key: str | None
    customer: str | None = None  # billed to this Stripe customer when 2xx
    ok: int = 0
    requests: int = 0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


def start_stream(stream: Stream, port: int, rate: float, seconds: float) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "BENCH_KEY"}
    env["PYTHONPATH"] = str(ROOT)
    if stream.key:
        env["BENCH_KEY"] = stream.key
    argv = [
        sys.executable, "-m", "bench.loadgen", "--target", f"127.0.0.1:{port}",
        "--path", stream.path, "--seconds", f"{seconds:g}", "--connections", "8",
        "--rate", f"{max(rate * stream.share, 1.0):.1f}",
    ]  # fmt: skip
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def collect(stream: Stream, popen: subprocess.Popen[str]) -> int:
    out, err = popen.communicate(timeout=120)
    if popen.returncode != 0:
        raise RuntimeError(f"load generator failed: {err[-1500:]}")
    data = json.loads(out.strip().splitlines()[-1])
    stream.ok += int(data["ok"])
    stream.requests += int(data["requests"])
    errors = int(data["errors"]) + int(data["unanswered"])
    stream.errors += errors
    for status, n in data["statuses"].items():
        stream.statuses[status] = stream.statuses.get(status, 0) + n
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=300.0, help="total requests/s offered")
    parser.add_argument("--segment", type=float, default=20.0, help="seconds per load segment")
    parser.add_argument("--fault-every", type=float, default=30.0, help="seconds between faults")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS reads")
    args = parser.parse_args(argv)
    say = narrator()
    with Stack() as stack:
        say("creating a PostgreSQL database, starting the Stripe emulator")
        stack.set_up()
        assert stack.emulator is not None
        alice, alice_key = stack.seed_customer("soak-alice")
        bob, bob_key = stack.seed_customer("soak-bob")
        bad_key = alice_key[:-1] + ("A" if alice_key[-1] != "A" else "B")
        streams = [
            Stream("/v1/data alice", "/v1/data", 0.45, alice_key, alice),
            Stream("/v1/data bob", "/v1/data", 0.2, bob_key, bob),
            Stream("/v1/data malformed key", "/v1/data", 0.1, bad_key),
            Stream("/v1/keys", "/v1/keys", 0.05, bob_key),
            Stream("/v1/usage", "/v1/usage", 0.05, alice_key),
            Stream("/healthz", "/healthz", 0.15, None),
        ]

        async def counter() -> str:
            async with stack.control() as control:
                return await start_counting_meter_event_calls(control)

        counter_id = asyncio.run(counter())
        service = stack.start_service("meterapi-soak")
        port = service.port
        say(
            f"service pid {service.pid} on port {port}; {args.minutes:g} min at {args.rate:g} req/s"
        )

        samples: list[tuple[float, int, int]] = []  # (time, pid, RSS KiB)
        total_s = args.minutes * 60
        kill_at = total_s / 2
        killed = False
        cut_by_kill = 0
        next_fault = args.fault_every
        next_sample = 0.0
        fault_index = 0
        soak_start = time.monotonic()
        while (elapsed := time.monotonic() - soak_start) < total_s:
            seconds = min(args.segment, total_s - elapsed)
            if seconds < 1:
                break
            kill_in_segment = not killed and elapsed + seconds >= kill_at
            popens = [(s, start_stream(s, port, args.rate, seconds)) for s in streams]
            segment_end = time.monotonic() + seconds
            while time.monotonic() < segment_end:
                now = time.monotonic() - soak_start
                if now >= next_sample and service.alive():
                    samples.append((now, service.pid, service.rss_kib()))
                    next_sample += args.sample_every
                if now >= next_fault:
                    spec = FAULTS[fault_index % len(FAULTS)]
                    fault_index += 1
                    next_fault += args.fault_every
                    asyncio.run(_inject(stack, spec))
                    say(f"fault on meter-event calls: {spec}")
                if kill_in_segment and not killed and now >= kill_at:
                    say(f"SIGKILL pid {service.pid}")
                    service.kill()
                    service = stack.start_service("meterapi-soak", port=port)
                    say(f"restarted: pid {service.pid}")
                    killed = True
                time.sleep(0.2)
            segment_errors = sum(collect(s, p) for s, p in popens)
            if kill_in_segment:
                cut_by_kill = segment_errors
            elif segment_errors:
                say(f"{segment_errors} requests failed outside the kill")
            ok = sum(s.ok for s in streams if s.customer)
            say(f"segment done: {ok:,} billable 2xx so far, RSS {service.rss_kib() / 1024:.1f} MiB")

        calls = asyncio.run(meter_event_calls(stack.emulator.url, counter_id))
        say("SIGTERM (the service flushes), then `meterapi usage flush`")
        service.terminate()
        asyncio.run(_clear_faults(stack))
        stack.cli("usage", "flush", "--timeout", "120")

        async def totals() -> list[tuple[Stream, int, int, int, int]]:
            rows = []
            async with stack.control() as control:
                for s in streams:
                    if s.customer is None:
                        continue
                    ledger = await ledger_units(stack.database_url, s.customer)
                    usage = await stripe_usage(control, s.customer)
                    rows.append(
                        (
                            s,
                            ledger.units,
                            usage.total,
                            usage.duplicate_identifiers,
                            ledger.reports_parked,
                        )
                    )
            return rows

        rows = asyncio.run(totals())

    print()
    print(f"soak: {args.minutes:g} min, {args.rate:g} req/s offered, faults every "
          f"{args.fault_every:g} s ({fault_index} injected), one SIGKILL + restart")  # fmt: skip
    print("traffic:")
    for s in streams:
        print(
            f"  {s.label:<24} {s.requests:>8,} answered, statuses {s.statuses}, {s.errors} failed"
        )
    print(f"requests cut off by the SIGKILL (any stream): {cut_by_kill}")
    print(f"Stripe meter-event calls: {calls} (faults included)")
    exact = True
    print("usage totals:")
    for s, ledger, stripe_total, duplicates, parked in rows:
        # A request the client gave up on (cut by the SIGKILL, or unanswered when its load
        # generator stopped waiting) may still have produced a 2xx, which is billed: the ledger
        # lies between the 2xx seen and that plus the stream's failed requests.
        ok = stripe_total == ledger and duplicates == 0 and s.ok <= ledger <= s.ok + s.errors
        exact &= ok
        print(f"  {s.label:<24} 2xx seen {s.ok:,} | ledger {ledger:,} (+{ledger - s.ok} of "
              f"{s.errors} failed requests) | Stripe {stripe_total:,} | duplicate identifiers "
              f"{duplicates} | parked {parked}  → {'EXACT' if ok else 'MISMATCH'}")  # fmt: skip
    print("service RSS (MiB) over time:")
    by_pid: dict[int, list[tuple[float, int]]] = {}
    for t, pid, rss in samples:
        by_pid.setdefault(pid, []).append((t, rss))
    flat = True
    for pid, points in by_pid.items():
        line = " ".join(f"{t:.0f}s:{rss / 1024:.1f}" for t, rss in points)
        print(f"  pid {pid}: {line}")
        if len(points) >= 9:
            third = len(points) // 3
            head = statistics.median(r for _, r in points[1 : third + 1])  # after warm-up
            tail = statistics.median(r for _, r in points[-third:])
            growth = (tail - head) / 1024
            flat &= growth < FLAT_MIB
            print(f"    median first third {head / 1024:.1f} MiB → last third "
                  f"{tail / 1024:.1f} MiB ({growth:+.1f} MiB)")  # fmt: skip
    print(
        f"memory: {'flat' if flat else 'GROWING'}; usage totals: {'exact' if exact else 'MISMATCH'}"
    )
    return 0 if exact and flat else 1


async def _inject(stack: Stack, spec: dict[str, object]) -> None:
    async with stack.control() as control:
        options = {k: v for k, v in spec.items() if k != "kind"}
        await control.inject_fault(str(spec["kind"]), METER_EVENTS_PATH, method="POST", **options)


async def _clear_faults(stack: Stack) -> None:
    # Faults are count-limited; what is left of them would only slow the final flush down.
    # (This also drops the call counter, which has been read already.)
    async with stack.control() as control:
        await control.clear_faults()


if __name__ == "__main__":
    raise SystemExit(main())
