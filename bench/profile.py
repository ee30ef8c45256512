"""Where the service's CPU goes on one path: py-spy samples the service under wrk's load.

    python -m bench.profile [--sqlite] [--path /v1/data] [--path /healthz] [--seconds 15]

Starts the same stack as ``python -m bench`` (a fresh database, the emulator, one uvicorn worker
of ``bench/auth_app.py``), saturates each path in turn with wrk (or ``bench.loadgen``) while
``py-spy record`` samples the service's process, and prints for each path the functions with the
most samples: on-CPU time inclusive of callees ("total") and in the function itself ("self").
The raw stacks stay in the work directory, for a flame graph. Needs ``py-spy``
(``pip install py-spy``) and the right to trace the process (root, or ptrace allowed).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
from pathlib import Path

from bench import auth_app, drive
from bench.stack import Stack, narrator


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
    args = parser.parse_args(argv)
    paths = args.path or ["/healthz", "/v1/data"]
    tool = "wrk" if drive.wrk_available() else "loadgen"
    say = narrator()
    report: list[str] = []
    with Stack(sqlite=args.sqlite) as stack:
        say("setting up")
        stack.set_up()
        _, key = stack.seed_customer("profile")
        service = stack.start_service("meterapi", app="bench.auth_app:create_app")
        for path in paths:
            needs_key = path in ("/v1/data", auth_app.PATH)
            load_key = key if needs_key else None
            say(f"warm-up {path}")
            drive.saturate(
                [service.port], path, key=load_key, seconds=2, connections=args.connections,
                tool=tool,
            )  # fmt: skip
            out = stack.workdir / f"profile{path.replace('/', '_')}.txt"
            say(f"profiling {path} for {args.seconds:g} s")
            spy = record(service.pid, out, args.seconds + 1, args.rate)
            result = drive.saturate(
                [service.port], path, key=load_key, seconds=args.seconds,
                connections=args.connections, tool=tool,
            )  # fmt: skip
            spy.wait(timeout=args.seconds + 60)
            report.append(f"{path}: {result.rps:,.0f} req/s under the profiler ({tool})")
            report += summarize(out, args.top)
        service.terminate()
        report.append(f"raw stacks (py-spy's collapsed format) in {stack.workdir}")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
