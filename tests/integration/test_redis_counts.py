"""The rate limiter's own Redis connection against real servers: counts in the URL's database,
in order when commands overlap; a Redis that forgot the script, a password, TLS, a server gone
and back."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from meterapi.metering.redis_counts import KEY_PREFIX, RedisCounts, RedisTrouble
from tests.integration.redis_support import PrivateRedis, shared_redis_url


async def test_counts_land_in_the_urls_database_in_order() -> None:
    url = shared_redis_url().rsplit("/", 1)[0] + "/7"  # a database other than the default
    counts = RedisCounts(SecretStr(url))
    key = f"counts-{uuid.uuid4().hex}"
    try:
        # Commands sent before the earlier replies came back: each reply finds its own caller.
        replies = await asyncio.gather(
            *(counts.add([(key, 60, 1), ("other", 60, 2)]) for _ in range(20))
        )
    finally:
        await counts.close()
    assert sorted(r[0] for r in replies) == list(range(1, 21))
    server = redis.Redis.from_url(url)
    try:
        assert int(server.get(f"{KEY_PREFIX}:{key}") or 0) == 20
        assert 0 < server.ttl(f"{KEY_PREFIX}:{key}") <= 60
    finally:
        server.close()


async def test_a_redis_that_forgot_the_script_is_sent_it_again() -> None:
    url = shared_redis_url()
    counts = RedisCounts(SecretStr(url))
    key = f"flush-{uuid.uuid4().hex}"
    server = redis.Redis.from_url(url)
    try:
        await counts.warm()
        assert await counts.add([(key, 60, 1)]) == [1]
        server.script_flush()
        assert await counts.add([(key, 60, 2)]) == [3]  # EVAL, once
        assert await counts.add([(key, 60, 1)]) == [4]
    finally:
        server.close()
        await counts.close()


async def test_a_password_is_sent_and_never_shown(tmp_path: Path) -> None:
    with PrivateRedis(tmp_path / "redis.log", password="hunter2-secret") as server:
        counts = RedisCounts(SecretStr(server.url))
        assert await counts.add([("k", 60, 1)]) == [1]
        assert "hunter2" not in repr(counts)
        await counts.close()
        wrong = RedisCounts(SecretStr(server.url.replace("hunter2-secret", "wrong-secret")))
        with pytest.raises(RedisTrouble) as refused:
            await wrong.add([("k", 60, 1)])
        assert "secret" not in str(refused.value)
        await wrong.close()


async def test_a_server_gone_fails_each_call_and_the_next_reconnects(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "redis.log").start()
    counts = RedisCounts(SecretStr(server.url), timeout_s=0.5)
    try:
        assert await counts.add([("k", 60, 1)]) == [1]
        server.kill()
        with pytest.raises((RedisTrouble, OSError)):
            await counts.add([("k", 60, 1)])
        with pytest.raises(OSError):  # refused: nothing listens
            await counts.add([("k", 60, 1)])
        server.start()  # empty, and it never saw the script
        assert await counts.add([("k", 60, 1)]) == [1]
    finally:
        await counts.close()
        server.kill()


async def test_a_connection_redis_closed_is_opened_again_before_the_next_call(
    tmp_path: Path,
) -> None:
    with PrivateRedis(tmp_path / "redis.log") as server:  # a server of its own: it kills clients
        counts = RedisCounts(SecretStr(server.url))
        inspect = redis.Redis.from_url(server.url)
        try:
            assert await counts.add([("k", 60, 1)]) == [1]
            assert inspect.client_kill_filter(_type="normal", skipme=True) == 1  # ours
            await asyncio.sleep(0.1)  # the close reaches the client
            assert await counts.add([("k", 60, 1)]) == [2]  # no failed call: a new connection
        finally:
            inspect.close()
            await counts.close()


async def test_rediss_verifies_the_server_unless_told_not_to(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate to serve")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(
        subprocess.run,
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    with PrivateRedis(tmp_path / "redis.log", tls=(cert, key)) as server:
        trusted = RedisCounts(SecretStr(server.url))  # the certificate as its authority
        assert await trusted.add([("k", 60, 1)]) == [1]
        await trusted.close()
        bare = server.url.split("?")[0]  # the system's authorities: a self-signed server fails
        with pytest.raises(ssl.SSLCertVerificationError):
            await RedisCounts(SecretStr(bare)).add([("k", 60, 1)])
        unverified = RedisCounts(SecretStr(f"{bare}?ssl_cert_reqs=none"))
        assert await unverified.add([("k", 60, 1)]) == [2]
        await unverified.close()
