"""Rate-limit benchmark: ``python -m bench.limits [--seconds 8] [--rounds 3] [--connections 32]``.

One run, PostgreSQL, each part in its own process (the database, the Stripe emulator, a private
``redis-server`` without persistence, the services):

1. the strategies of the ``limits`` package, in this process: client CPU µs per counted call
   (a hit plus what the RateLimit headers need), memory and Redis, 32 calls in flight;
2. metered throughput (``/v1/data``, one worker) at saturation, in interleaved rounds: without
   a rate limit, with one high enough never to refuse counted in the process, and the same
   counted in Redis, each round starting with the next of the three. Ratios to "without" per
   round (the median is reported), CPU µs per request (service + database + Redis), and how many
   calls went on unchecked (the Redis timeout met);
3. ``--workers 2`` sharing Redis, a key allowed 100/second sending 300/second for 13 s: the 2xx
   of every worker whose answer came in a 10 s window in the steady state, against the quota.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
import redis
import redis.asyncio

from bench.cpu import CpuMeter, process_tree
from bench.drive import Result, saturate, wrk_available
from bench.stack import Proc, Stack, free_port, narrator

NEVER = "1000000/second"  # a limit no run reaches
SHARED_LIMIT = 100  # per second, for part 3
SEND_FACTOR = 3
SATURATED_LIMIT = 500  # per second, for part 4: below what two workers serve


def start_redis(stack: Stack) -> Proc:
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = stack.spawn("redis", [*argv, "--appendonly", "no"], port=port, env={})
    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- 1. strategies ------------------------------------------------------------------------------


def strategies(redis_url: str) -> dict[str, float]:
    """Client CPU µs per call of each strategy, with the reads the RateLimit headers need."""
    from limits import parse
    from limits.aio.storage import MemoryStorage, RedisStorage
    from limits.aio.strategies import (
        FixedWindowRateLimiter,
        MovingWindowRateLimiter,
        SlidingWindowCounterRateLimiter,
    )

    item = parse(NEVER)

    async def measure(limiter: object, *, one_trip: bool, n: int = 4000) -> float:
        from limits.aio.strategies import RateLimiter

        assert isinstance(limiter, RateLimiter)

        async def call(i: int) -> None:
            key = f"k{i % 20}"
            if one_trip:  # the service's way: the count comes back with the increment
                await limiter.storage.incr(item.key_for("b", key, str(int(time.time()))), 1)
            else:
                await limiter.hit(item, "b", key)
                await limiter.get_window_stats(item, "b", key)

        async def worker(start: int) -> None:
            for i in range(start, n, 32):
                await call(i)

        await asyncio.gather(*(worker(j) for j in range(32)))  # warm
        started = time.process_time()
        await asyncio.gather(*(worker(j) for j in range(32)))
        return (time.process_time() - started) * 1e6 / n

    async def run() -> dict[str, float]:
        uri = "async+" + redis_url

        def on_redis(prefix: str) -> RedisStorage:
            return RedisStorage(uri, implementation="redispy", key_prefix=prefix)

        return {
            "memory fixed window, 1 call": await measure(
                FixedWindowRateLimiter(MemoryStorage()), one_trip=True
            ),
            "memory sliding window counter, hit + stats": await measure(
                SlidingWindowCounterRateLimiter(MemoryStorage()), one_trip=False
            ),
            "memory moving window, hit + stats": await measure(
                MovingWindowRateLimiter(MemoryStorage()), one_trip=False
            ),
            "redis fixed window, 1 call": await measure(
                FixedWindowRateLimiter(on_redis("bf")), one_trip=True
            ),
            "redis sliding window counter, hit + stats": await measure(
                SlidingWindowCounterRateLimiter(on_redis("bs")), one_trip=False
            ),
            "redis moving window, hit + stats": await measure(
                MovingWindowRateLimiter(on_redis("bm")), one_trip=False
            ),
        }

    return asyncio.run(run())


def service_limiter(redis_url: str, *, n: int = 8000) -> dict[str, float]:
    """Client CPU µs per ``RateLimiter.hit`` (the service's own, calls batched), 32 in flight,
    on one key and on 32 keys; how many calls each Redis round trip carried; and the client CPU
    of one round trip of 12 keys over the limiter's connection and through redis-py's client."""
    from collections.abc import Sequence

    from limits import parse
    from pydantic import SecretStr

    from meterapi.metering.ratelimit import RateLimiter
    from meterapi.metering.redis_counts import ADD_SCRIPT, RedisCounts

    item = parse(NEVER)

    class Counted(RedisCounts):
        trips = 0

        async def add(self, increments: Sequence[tuple[str, int, int]]) -> list[int]:
            self.trips += 1
            return await super().add(increments)

    async def measure(keys: int) -> tuple[float, float]:
        limiter = RateLimiter(redis_url=SecretStr(redis_url), timeout_s=0.05)
        counts = limiter.counts = Counted(SecretStr(redis_url))
        await limiter.start()

        async def worker(start: int) -> None:
            for i in range(start, n, 32):
                await limiter.hit(item, f"k{i % keys}")

        await asyncio.gather(*(worker(j) for j in range(32)))  # warm
        trips = counts.trips
        started = time.process_time()
        await asyncio.gather(*(worker(j) for j in range(32)))
        cpu_us = (time.process_time() - started) * 1e6 / n
        per_trip = n / max(1, counts.trips - trips)
        await limiter.close()
        return cpu_us, per_trip

    async def round_trip(add: Callable[[], Awaitable[object]], n: int = 2000) -> float:
        await add()
        started = time.process_time()
        for _ in range(n):
            await add()
        return (time.process_time() - started) * 1e6 / n

    async def run() -> dict[str, float]:
        found: dict[str, float] = {}
        twelve = [(f"trip-{i}", 60, 1) for i in range(12)]
        ours = RedisCounts(SecretStr(redis_url))
        client = redis.asyncio.Redis.from_url(redis_url, max_connections=2)
        script = client.register_script(ADD_SCRIPT)
        args = [x for _, window, amount in twelve for x in (amount, window)]
        keys = [key for key, _, _ in twelve]
        for name, add in (
            ("redis-py client", lambda: script(keys=keys, args=args)),
            ("meterapi's connection", lambda: ours.add(twelve)),
        ):
            found[f"one round trip of 12 keys, {name}: client CPU us"] = await round_trip(add)
        await ours.close()
        await client.aclose()
        for keys in (1, 32):
            cpu_us, per_trip = await measure(keys)
            found[f"RateLimiter.hit, {keys} key(s): client CPU us"] = cpu_us
            found[f"RateLimiter.hit, {keys} key(s): calls per round trip"] = per_trip
        return found

    return asyncio.run(run())


# -- 2. throughput ------------------------------------------------------------------------------


def unchecked(proc: Proc) -> dict[str, float]:
    """``meterapi_rate_limit_unchecked_total`` by reason, as one worker of ``proc`` reports it."""
    text = httpx.get(f"{proc.url}/metrics", timeout=10).text
    found = re.findall(
        r'^meterapi_rate_limit_unchecked_total\{reason="([^"]*)"\} (\S+)$', text, re.M
    )
    return {reason: float(value) for reason, value in found}


def _reasons(counts: dict[str, float]) -> str:
    total = sum(counts.values())
    parts = ", ".join(f"{reason} {value:.0f}" for reason, value in sorted(counts.items()))
    return f"{total:.0f}" + (f" ({parts})" if parts else "")


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _line(name: str, result: Result, cpu_us: float) -> str:
    return (
        f"{name:<22} {result.rps:8.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
        f"p99 {result.p99_ms:6.2f} ms  2xx {result.ok}  other {result.other}  "
        f"CPU {cpu_us:5.0f} us/req"
    )


# -- 3. two workers, one quota ------------------------------------------------------------------


async def paced(
    url: str, key: str, *, rate: float, seconds: float
) -> list[tuple[float, float, int]]:
    """Calls due at ``rate`` per second for ``seconds``, from 16 senders on connections of their
    own (a call due while its sender waits goes out late); (answer time from the start, clock
    time when sent, status) of each."""
    answers: list[tuple[float, float, int]] = []
    senders = 16
    started = time.monotonic()

    async def sender(offset: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            i = offset
            while i / rate < seconds:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent = time.time()
                try:
                    response = await client.get("/v1/data", headers={"X-API-Key": key})
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0
                answers.append((time.monotonic() - started, sent, status))
                i += senders

    await asyncio.gather(*(sender(j) for j in range(senders)))
    return answers


def throughput(stack: Stack, redis_proc: Proc, args: argparse.Namespace, say: Say) -> None:
    """Part 2: one worker at saturation without a limit, in-process, and in Redis."""
    redis_url = f"redis://127.0.0.1:{redis_proc.port}/0"
    configs: dict[str, dict[str, str]] = {
        "no rate limit": {},
        "in-process limit": {"METERAPI_RATE_LIMIT": NEVER},
        "Redis limit": {"METERAPI_RATE_LIMIT": NEVER, "METERAPI_REDIS_URL": redis_url},
    }
    services = {
        name: stack.start_service(name.replace(" ", "-"), **env, **_timeout(args))
        for name, env in configs.items()
    }
    keys = {name: stack.seed_customer(name.replace(" ", "-"))[1] for name in configs}
    database = stack.database_pids()
    common = {"seconds": args.seconds, "connections": args.connections, "tool": _tool()}
    for name, proc in services.items():
        saturate([proc.port], "/v1/data", key=keys[name], **{**common, "seconds": 2.0})
    server = redis.Redis(port=redis_proc.port)
    trips_before, redis_cpu_before = _redis_work(server)
    rps: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    requests: dict[str, int] = dict.fromkeys(configs, 0)
    for round_ in range(args.rounds):
        say(f"   round {round_ + 1}, load average {load_average()}")
        # Each round starts with the next configuration: none of them always runs first (a
        # machine's drift, or the round's first run faring better or worse, would favour it).
        names = list(services)
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            proc = services[name]

            def pids(p: Proc = proc) -> list[int]:
                return [*process_tree(p.pid), redis_proc.pid]

            meter = CpuMeter(pids, database)
            before = meter.sample()
            result = saturate([proc.port], "/v1/data", key=keys[name], **common)
            per = meter.per_request(before, result.requests)
            rps[name].append(result.rps)
            cpu[name].append(per.total_us)
            requests[name] += result.requests
            say("   " + _line(name, result, per.total_us))
    base = rps["no rate limit"]
    for name in ("in-process limit", "Redis limit"):
        ratios = [r / b for r, b in zip(rps[name], base, strict=True)]
        say(
            f"   {name}: throughput ratio to none, median {statistics.median(ratios):.2f} "
            f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}); "
            f"CPU {statistics.median(cpu[name]):.0f} us/req against "
            f"{statistics.median(cpu['no rate limit']):.0f}"
        )
    say(
        f"   Redis calls let through unchecked: "
        f"{_reasons(unchecked(services['Redis limit']))} of {requests['Redis limit']} requests "
        f"(warm-up included); load average {load_average()}"
    )
    trips, redis_cpu = (
        a - b for a, b in zip(_redis_work(server), (trips_before, redis_cpu_before), strict=True)
    )
    say(
        f"   Redis round trips: {trips:.0f}, {requests['Redis limit'] / max(trips, 1):.1f} "
        f"requests each; redis-server CPU {redis_cpu * 1e6 / requests['Redis limit']:.1f} us "
        "per request (in the CPU above)"
    )
    for proc in services.values():
        proc.terminate()


def _redis_work(server: redis.Redis) -> tuple[float, float]:
    """Script calls (one per round trip of the service) and CPU seconds of the Redis server."""
    stats = server.info("commandstats")
    trips = sum(float(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_eval"))
    cpu = server.info("cpu")
    return trips, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _two_workers(
    stack: Stack, name: str, per_second: int, redis_url: str, args: argparse.Namespace
) -> Proc:
    """``meterapi serve --workers 2`` sharing Redis, with a limit of ``per_second`` per key."""
    return stack.start_service(
        name,
        workers=2,
        PROMETHEUS_MULTIPROC_DIR=_metrics_dir(stack, name),  # /metrics adds up both workers
        METERAPI_RATE_LIMIT=f"{per_second}/second",
        METERAPI_REDIS_URL=redis_url,
        **_timeout(args),
    )


def paced_quota(stack: Stack, redis_url: str, args: argparse.Namespace, say: Say) -> None:
    """Part 3: two workers, one key sending SEND_FACTOR times its quota, paced."""
    say(f"3. two workers sharing Redis: {SHARED_LIMIT}/second, sent {SEND_FACTOR}x for 13 s")
    shared = _two_workers(stack, "shared", SHARED_LIMIT, redis_url, args)
    for round_ in range(args.rounds):
        _, key = stack.seed_customer(f"shared-{round_}")
        answers = asyncio.run(paced(shared.url, key, rate=SHARED_LIMIT * SEND_FACTOR, seconds=13.0))
        in_window: Callable[[float], bool] = lambda t: 2.0 <= t < 12.0  # noqa: E731
        ok = sum(1 for t, _, status in answers if status == 200 and in_window(t))
        refused = sum(1 for t, _, status in answers if status == 429 and in_window(t))
        other = sum(1 for _, _, status in answers if status not in (200, 429))
        quota = SHARED_LIMIT * 10
        sent = sum(1 for t, _, _ in answers if in_window(t))
        # The same by the windows the limit counts in (clock seconds, by when a call was sent).
        per_second = collections.Counter(int(w) for _, w, status in answers if status == 200)
        first = min(int(w) for _, w, _ in answers) + 2
        whole = sum(per_second[second] for second in range(first, first + 10))
        say(
            f"   2xx answered in a 10 s window: {ok} (quota {quota}, {_off(ok, quota)}); 429 "
            f"{refused}; answered in the window {sent} ({sent / 10:.0f}/s); other answers {other}"
        )
        say(
            f"   2xx sent in 10 whole clock seconds: {whole} ({_off(whole, quota)}); most in one "
            f"second {max(per_second.values())}; unchecked so far {_reasons(unchecked(shared))}; "
            f"load average {load_average()}"
        )
    shared.terminate()


def saturated_quota(stack: Stack, redis_url: str, args: argparse.Namespace, say: Say) -> None:
    """Part 4: two workers at saturation (wrk), one key whose quota is below what they serve.
    The run starts 0.3 s into a clock second and lasts 9 s: it touches 10 windows, each of
    which the saturating client fills, so the 2xx should be 10 quotas."""
    say(f"4. two workers sharing Redis at saturation: {SATURATED_LIMIT}/second, wrk")
    shared = _two_workers(stack, "saturated", SATURATED_LIMIT, redis_url, args)
    _, key = stack.seed_customer("saturated")
    common = {"connections": args.connections, "tool": _tool()}
    saturate([shared.port], "/v1/data", key=key, seconds=2.0, **common)
    for _ in range(args.rounds):
        time.sleep(1.3 - time.time() % 1.0)
        result = saturate([shared.port], "/v1/data", key=key, seconds=9.0, **common)
        quota = SATURATED_LIMIT * 10
        say(
            f"   {result.rps:.0f} req/s; 2xx {result.ok} in 10 windows (quota {quota}, "
            f"{_off(result.ok, quota)}); other {result.other}; unchecked so far "
            f"{_reasons(unchecked(shared))}; load average {load_average()}"
        )
    shared.terminate()


Say = Callable[[str], None]


def _metrics_dir(stack: Stack, name: str) -> str:
    """A directory where the workers of a service share their metrics (as ``meterapi serve``
    makes one), so that ``unchecked`` counts every worker's."""
    path = stack.workdir / f"{name}-metrics"
    path.mkdir()
    return str(path)


def _off(ok: int, quota: int) -> str:
    return f"{100 * (ok - quota) / quota:+.1f}%"


def _timeout(args: argparse.Namespace) -> dict[str, str]:
    return {"METERAPI_REDIS_TIMEOUT_S": args.redis_timeout} if args.redis_timeout else {}


def _tool() -> str:
    return "wrk" if wrk_available() else "loadgen"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rate limits: cost and accuracy")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--parts", default="1234", help="which parts to run, e.g. 34")
    parser.add_argument(
        "--redis-timeout",
        default=None,
        help="METERAPI_REDIS_TIMEOUT_S for the services (default: the service's own)",
    )
    args = parser.parse_args(argv)
    say = narrator()
    with Stack() as stack:
        say(f"database, emulator, schema, price, redis; load average {load_average()}")
        stack.set_up()
        redis_proc = start_redis(stack)
        redis_url = f"redis://127.0.0.1:{redis_proc.port}/0"
        if "1" in args.parts:
            say("1. strategies, client CPU per call, 32 in flight")
            for name, cpu_us in strategies(redis_url).items():
                say(f"   {name:<45} {cpu_us:6.1f} us")
            for name, value in service_limiter(redis_url).items():
                say(f"   {name:<55} {value:6.1f}")
        if "2" in args.parts:
            say("2. metered throughput, one worker each, interleaved rounds")
            throughput(stack, redis_proc, args, say)
        if "3" in args.parts:
            paced_quota(stack, redis_url, args, say)
        if "4" in args.parts:
            saturated_quota(stack, redis_url, args, say)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
