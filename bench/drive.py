"""Drive load from a separate process: ``wrk`` when it is installed, else ``bench.loadgen``.

Saturation runs (closed loop, fixed connections) use wrk if ``which wrk`` finds it; the fixed
offered rate always uses ``bench.loadgen`` (wrk has no open-loop mode). wrk stops at its deadline
without waiting for the requests in flight, so its 2xx count may miss up to one response per
connection; ``Result.exact`` says whether a count can be compared with Stripe's totals.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.stack import ROOT

WRK_SCRIPT = 'wrk.headers["X-API-Key"] = os.getenv("BENCH_KEY")\n'


@dataclass
class Result:
    tool: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    ok: int  # 2xx responses
    other: int  # non-2xx responses
    errors: int  # connection errors, timeouts, unanswered
    exact: bool  # every request sent was answered and counted

    @staticmethod
    def combine(parts: list[Result]) -> Result:
        """Concurrent runs against several servers: rates add up; latency is the worst part's."""
        return Result(
            tool=parts[0].tool,
            rps=sum(p.rps for p in parts),
            p50_ms=max(p.p50_ms for p in parts),
            p99_ms=max(p.p99_ms for p in parts),
            requests=sum(p.requests for p in parts),
            ok=sum(p.ok for p in parts),
            other=sum(p.other for p in parts),
            errors=sum(p.errors for p in parts),
            exact=all(p.exact for p in parts),
        )


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _env(key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BENCH_KEY"}
    env["PYTHONPATH"] = str(ROOT)
    if key:
        env["BENCH_KEY"] = key  # by environment, so the key is not in `ps` output
    return env


def loadgen(
    ports: list[int],
    path: str,
    *,
    key: str | None,
    seconds: float,
    connections: int,
    rate: float | None = None,
) -> Result:
    argv = [sys.executable, "-m", "bench.loadgen", "--path", path, "--seconds", str(seconds)]
    argv += ["--connections", str(connections)]
    for port in ports:
        argv += ["--target", f"127.0.0.1:{port}"]
    if rate:
        argv += ["--rate", f"{rate:.1f}"]
    done = subprocess.run(
        argv, env=_env(key), capture_output=True, text=True, check=True, timeout=seconds + 120
    )
    data = json.loads(done.stdout.strip().splitlines()[-1])
    errors = int(data["errors"]) + int(data["unanswered"])
    return Result(
        tool="loadgen",
        rps=float(data["rps"]),
        p50_ms=float(data["p50_ms"]),
        p99_ms=float(data["p99_ms"]),
        requests=int(data["requests"]),
        ok=int(data["ok"]),
        other=int(data["requests"]) - int(data["ok"]),
        errors=errors,
        exact=errors == 0,
    )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip()).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> Result:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output)
        if match is None:
            raise RuntimeError(f"unexpected wrk output: {output[-1500:]}")
        return match

    requests = int(find(r"(\d+) requests in")[1])
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    other = int(non_2xx[1]) if non_2xx else 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = sum(int(g) for g in socket_errors.groups()) if socket_errors else 0
    return Result(
        tool="wrk",
        rps=float(find(r"Requests/sec:\s+([\d.]+)")[1]),
        p50_ms=_ms(find(r"\n\s+50%\s+(\S+)")[1]),
        p99_ms=_ms(find(r"\n\s+99%\s+(\S+)")[1]),
        requests=requests,
        ok=requests - other,
        other=other,
        errors=errors,
        exact=False,
    )


def wrk(
    ports: list[int], path: str, *, key: str | None, seconds: float, connections: int
) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "key.lua"
        script.write_text(WRK_SCRIPT if key else "")
        per_target = max(1, connections // len(ports))

        def one(port: int) -> Result:
            argv = [
                "wrk", "-t1", f"-c{per_target}", f"-d{seconds:g}s", "--latency",
                "-s", str(script), f"http://127.0.0.1:{port}{path}",
            ]  # fmt: skip
            done = subprocess.run(
                argv, env=_env(key), capture_output=True, text=True, check=True,
                timeout=seconds + 60,
            )  # fmt: skip
            return parse_wrk(done.stdout)

        with ThreadPoolExecutor(len(ports)) as pool:
            return Result.combine(list(pool.map(one, ports)))


def saturate(
    ports: list[int], path: str, *, key: str | None, seconds: float, connections: int, tool: str
) -> Result:
    """Closed loop at a fixed number of connections, split evenly between ``ports``."""
    if tool == "wrk":
        return wrk(ports, path, key=key, seconds=seconds, connections=connections)
    return loadgen(ports, path, key=key, seconds=seconds, connections=connections)


def offered(
    ports: list[int], path: str, *, key: str | None, seconds: float, rate: float, connections: int
) -> Result:
    """Open loop at ``rate`` requests/s; latency from each request's intended send time."""
    return loadgen(ports, path, key=key, seconds=seconds, connections=connections, rate=rate)
