"""Gateway benchmark: ``python -m bench.gateway [--seconds 10] [--connections 32]``.

On one machine, each part in its own process: PostgreSQL, the Stripe emulator, a trivial upstream
(``bench.gateway_upstream``, a bare ASGI app under uvicorn) and meterapi in gateway mode (one
worker) in front of it, with a paying customer's key. It measures:

1. throughput at saturation (closed loop, the same connections), straight to the upstream and
   through the gateway (authenticated, forwarded, 1 unit recorded per call), and their ratio;
2. the latency the gateway adds at half its saturation rate (open loop at that rate, p50 through
   the gateway minus p50 straight to the upstream at the same rate);
3. the gateway's resident memory while a slow client reads a 10 MB streamed response through it
   (before, peak sampled every 10 ms, after; and the kernel's high-water mark before and after),
   twice, then a 100 MB one: a proxy that buffered would grow by the response's size, so the
   peak must not depend on it.

Load comes from ``wrk`` when installed, else ``bench.loadgen`` (open loop is always loadgen).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.drive import Result, offered, saturate, wrk_available
from bench.stack import Proc, Stack, free_port, narrator

GATEWAY_TOML = """\
upstream = "http://127.0.0.1:9"   # METERAPI_UPSTREAM_URL sets the real one
timeout_s = 30

[[route]]
path = "/hello"
units = 1

[[route]]
path = "/big"
units = 1
"""


def cpu_seconds(proc: Proc) -> float:
    """User + system CPU the process has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(procs: list[Proc], run: Callable[[], Result]) -> tuple[Result, list[float]]:
    """``run()``'s result and the CPU µs each process spent per request answered."""
    before = [cpu_seconds(p) for p in procs]
    result = run()
    spent = [cpu_seconds(p) - b for p, b in zip(procs, before, strict=True)]
    return result, [s * 1e6 / max(result.requests, 1) for s in spent]


UPSTREAM_ARGV = [
    sys.executable, "-m", "uvicorn", "bench.gateway_upstream:app", "--host", "127.0.0.1",
    "--no-access-log", "--log-level", "warning",
]  # fmt: skip


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def stream_memory(gateway: Proc, key: str, *, mib: int = 10) -> dict[str, float]:
    """Read ``mib`` MiB through the gateway slowly while sampling its RSS every 10 ms."""
    before = _status_kib(gateway.pid, "VmRSS")
    hwm_before = _status_kib(gateway.pid, "VmHWM")
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _status_kib(gateway.pid, "VmRSS"))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    received = 0
    started = time.perf_counter()
    try:
        with httpx.stream(
            "GET", f"{gateway.url}/big?mb={mib}", headers={"X-API-Key": key}, timeout=60
        ) as response:
            response.raise_for_status()
            for chunk in response.iter_raw(16384):
                received += len(chunk)
                time.sleep(0.001)  # slower than the upstream writes: a buffering proxy would fill
    finally:
        done.set()
        sampler.join()
    seconds = time.perf_counter() - started
    after = _status_kib(gateway.pid, "VmRSS")
    return {
        "bytes": received,
        "seconds": round(seconds, 2),
        "rss_before_mib": round(before / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "rss_growth_mib": round((peak - before) / 1024, 1),
        "hwm_before_mib": round(hwm_before / 1024, 1),
        "hwm_after_mib": round(_status_kib(gateway.pid, "VmHWM") / 1024, 1),
    }


def _line(name: str, result: Result) -> str:
    return (
        f"{name:<28} {result.rps:9.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
        f"p99 {result.p99_ms:7.2f} ms  2xx {result.ok}  other {result.other}  "
        f"errors {result.errors}  ({result.tool})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gateway throughput, latency and memory")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tool", choices=["wrk", "loadgen"], default=None)
    args = parser.parse_args(argv)
    tool = args.tool or ("wrk" if wrk_available() else "loadgen")
    say = narrator()
    with Stack() as stack:
        say("database, emulator, schema, price")
        stack.set_up()
        port = free_port()
        upstream = stack.spawn(
            "upstream",
            [*UPSTREAM_ARGV, "--port", str(port)],
            port=port,
            env={},
        )
        upstream.wait_http("/hello")
        gateway_file = stack.workdir / "gateway.toml"
        gateway_file.write_text(GATEWAY_TOML)
        gateway = stack.start_service(
            "gateway", METERAPI_GATEWAY_FILE=str(gateway_file), METERAPI_UPSTREAM_URL=upstream.url
        )
        _customer, key = stack.seed_customer("gateway")
        common = {"seconds": args.seconds, "connections": args.connections, "tool": tool}

        say("warm-up")
        saturate([gateway.port], "/hello", key=key, **{**common, "seconds": 3.0})
        saturate([upstream.port], "/hello", key=None, **{**common, "seconds": 3.0})

        say(f"saturation, {args.connections} connections, {args.seconds:g} s each")
        direct, [upstream_cpu] = measured(
            [upstream], lambda: saturate([upstream.port], "/hello", key=None, **common)
        )
        say(_line("straight to the upstream", direct))
        through, [gateway_cpu, upstream_behind_cpu] = measured(
            [gateway, upstream], lambda: saturate([gateway.port], "/hello", key=key, **common)
        )
        say(_line("through the gateway", through))
        ratio = through.rps / direct.rps if direct.rps else 0.0
        say(f"throughput ratio (gateway / straight): {ratio:.2f}")
        say(
            f"CPU per request: upstream alone {upstream_cpu:.0f} us; through the gateway: "
            f"gateway {gateway_cpu:.0f} us + upstream {upstream_behind_cpu:.0f} us"
        )
        paid, [paid_cpu] = measured(
            [gateway], lambda: saturate([gateway.port], "/v1/data", key=key, **common)
        )
        say(_line("the same process, /v1/data", paid))
        say(f"CPU per request of /v1/data (a paid route, nothing forwarded): {paid_cpu:.0f} us")

        half = max(through.rps / 2, 1.0)
        say(f"open loop at half the gateway's saturation: {half:.0f} req/s")
        open_loop = {"seconds": args.seconds, "rate": half, "connections": args.connections}
        direct_half = offered([upstream.port], "/hello", key=None, **open_loop)
        say(_line("straight, half load", direct_half))
        through_half = offered([gateway.port], "/hello", key=key, **open_loop)
        say(_line("through, half load", through_half))
        added = through_half.p50_ms - direct_half.p50_ms
        say(f"p50 added by the gateway at half load: {added:.2f} ms")

        say("10 MB responses, then 100 MB, streamed through the gateway to a slow reader")
        memory = [stream_memory(gateway, key, mib=mib) for mib in (10, 10, 100)]
        for run in memory:
            say(json.dumps(run))

        summary = {
            "tool": tool,
            "connections": args.connections,
            "seconds": args.seconds,
            "direct_rps": round(direct.rps),
            "gateway_rps": round(through.rps),
            "throughput_ratio": round(ratio, 3),
            "cpu_us_per_request": {
                "upstream_alone": round(upstream_cpu),
                "gateway": round(gateway_cpu),
                "upstream_behind_gateway": round(upstream_behind_cpu),
                "gateway_process_on_v1_data": round(paid_cpu),
            },
            "v1_data_rps_same_process": round(paid.rps),
            "half_load_rps": round(half),
            "direct_p50_ms_half_load": round(direct_half.p50_ms, 3),
            "gateway_p50_ms_half_load": round(through_half.p50_ms, 3),
            "p50_added_ms": round(added, 3),
            "stream_10_10_100_mib": memory,
            "gateway_errors": through.errors + through_half.errors,
            "gateway_non_2xx": through.other + through_half.other,
        }
        print(json.dumps(summary, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
