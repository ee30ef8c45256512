"""Where the service's CPU goes on one path: py-spy samples the service under wrk's load.

    python -m bench.profile [--sqlite] [--path /v1/data] [--path /healthz] [--seconds 15]
                            [--workers 2]

Starts the same stack as ``python -m bench`` (a fresh database, the emulator, uvicorn running
``bench/auth_app.py`` with one worker, or ``--workers N``), saturates each path in turn with wrk
(or ``bench.loadgen``) while ``py-spy record`` samples each serving process, and prints for each
path and process its CPU µs per request (from ``/proc``), then the functions with the most
samples: on-CPU time inclusive of callees ("total") and in the function itself ("self"). On
``/v1/data`` it also prints the ledger's commits per request: the load's customer has one key
and one route, so each committed batch adds one ``usage_event`` row (two when it spans a minute).
The raw stacks stay in the work directory, for a flame graph. Needs ``py-spy``
(``pip install py-spy``) and the right to trace the process (root, or ptrace allowed).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
from pathlib import Path

from bench import auth_app, drive
from bench.cpu import CpuMeter, cpu_seconds, process_tree
from bench.stack import Stack, ledger_rows, narrator


def record(pid: int, out: Path, seconds: float, rate: int) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    argv = [
        py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
        "--rate", str(rate), "--format", "raw", "--output", str(out), "--nonblocking",
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def frame_name(frame: str) -> str:
    """``handle (starlette/routing.py:123)`` → ``starlette/routing.py:handle``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{name}"


def summarize(raw: Path, top: int) -> list[str]:
    total: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    lines = [f"  {samples} samples on CPU"]
    lines.append("  self:")
    lines += [f"    {100 * n / samples:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("  total (with callees):")
    lines += [f"    {100 * n / samples:5.1f}%  {name}" for name, n in total.most_common(top * 2)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--path", action="append", help="default: /healthz and /v1/data")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args(argv)
    paths = args.path or ["/healthz", "/v1/data"]
    tool = "wrk" if drive.wrk_available() else "loadgen"
    say = narrator()
    report: list[str] = []
    with Stack(sqlite=args.sqlite) as stack:
        say("setting up")
        stack.set_up()
        customer, key = stack.seed_customer("profile")
        service = stack.start_service(
            "meterapi", app="bench.auth_app:create_app", workers=args.workers
        )
        # The processes that serve: the one uvicorn process, or its workers.
        servers = process_tree(service.pid)[1:] or [service.pid]
        meter = CpuMeter(lambda: process_tree(service.pid), stack.database_pids())
        for path in paths:
            needs_key = path in ("/v1/data", auth_app.PATH)
            load_key = key if needs_key else None
            say(f"warm-up {path}")
            drive.saturate(
                [service.port], path, key=load_key, seconds=2, connections=args.connections,
                tool=tool,
            )  # fmt: skip
            say(f"profiling {path} for {args.seconds:g} s")
            outs = {
                pid: stack.workdir / f"profile{path.replace('/', '_')}_{pid}.txt" for pid in servers
            }
            spies = [record(pid, out, args.seconds + 1, args.rate) for pid, out in outs.items()]
            rows = asyncio.run(ledger_rows(stack.database_url, customer))
            before = meter.sample()
            result = drive.saturate(
                [service.port], path, key=load_key, seconds=args.seconds,
                connections=args.connections, tool=tool,
            )  # fmt: skip
            cpu = meter.per_request(before, result.requests)
            per_process = {
                pid: (cpu_seconds(pid) - before.service.get(pid, 0.0))
                * 1e6
                / max(result.requests, 1)
                for pid in process_tree(service.pid)
            }
            commits = asyncio.run(ledger_rows(stack.database_url, customer)) - rows
            for spy in spies:
                spy.wait(timeout=args.seconds + 60)
            report.append(
                f"{path}: {result.rps:,.0f} req/s under the profiler ({tool}), "
                f"{args.workers} worker(s); CPU µs per request {cpu.total_us:.0f} "
                f"(service {cpu.service_us:.0f} + database {cpu.database_us:.0f})"
            )
            report.append(
                "  per process (µs per request of all requests): "
                + ", ".join(f"{pid} {us:.0f}" for pid, us in per_process.items())
            )
            if path == "/v1/data" and result.ok:
                report.append(
                    f"  ledger: {commits:,} commits for {result.ok:,} 2xx = "
                    f"{1000 * commits / result.ok:.1f} per 1,000 requests "
                    f"({result.ok / max(commits, 1):.1f} requests per commit)"
                )
            for pid, out in outs.items():
                report.append(f"  process {pid}:")
                report += summarize(out, args.top)
        service.terminate()
        report.append(f"raw stacks (py-spy's collapsed format) in {stack.workdir}")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
