"""The rate limits' shared counts in Redis: one connection, one script call per round trip.

The rate limiter (``metering.ratelimit``) sends one round trip at a time, carrying every key's
increment, so a process needs one connection and no pool. The connection is a plain asyncio
protocol: each command's reply is parsed by ``hiredis`` (the protocol parser Redis's own client
libraries use) as its bytes arrive, and handed to the future that waits for it, in order.
A round trip through ``redis-py``'s client cost about three times the CPU of this one (its pool,
its stream reader and its parser per reply; docs/limits.md), and at saturation that was most of
what a rate limit added to a request.

The increment is the ``limits`` package's own (``incr_expire.lua``: increment, and give a new
window's counter its expiry), looped over a batch's keys: one reply per round trip. It runs by
its SHA-1 (``EVALSHA``); a Redis that does not know it (restarted, flushed) is sent the script
itself once (``EVAL``), which also teaches it the script again.

Any trouble (refused, reset, an error reply, no reply within ``timeout_s``) raises, and closes
the connection: the next call connects again. The caller decides what a failure means (the rate
limiter fails open). The URL may hold a password: it is never logged or shown.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from pydantic import SecretStr
from redis.asyncio.connection import parse_url

KEY_PREFIX = "meterapi"

ADD_SCRIPT = """
local counts = {}
for i, key in ipairs(KEYS) do
  local amount = tonumber(ARGV[2 * i - 1])
  local count = redis.call("incrby", key, amount)
  if count == amount then
    redis.call("expire", key, ARGV[2 * i])
  end
  counts[i] = count
end
return counts
"""
# Redis names a script by its SHA-1; not a security use.
ADD_SHA = hashlib.sha1(ADD_SCRIPT.encode(), usedforsecurity=False).hexdigest()


class RedisTrouble(Exception):
    """Redis refused a command, or the connection failed."""


def command(*parts: str | int | bytes) -> bytes:
    """One command in Redis's protocol: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


class _Wire(asyncio.Protocol):
    """A connection's replies, each to the future of the command it answers, in order."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, data: bytes, replies: int = 1) -> list[asyncio.Future[Any]]:
        if self.closed or self.transport is None:
            raise RedisTrouble("connection closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self._waiting.extend(futures)
        self.transport.write(data)
        return futures

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError:  # not Redis speaking: nothing more can be trusted
                self.close()
                return
            if reply is False:
                return
            if not self._waiting:  # a reply nobody asked for: the stream cannot be trusted
                self.close()
                return
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(RedisTrouble("connection lost"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _checked(reply: Any) -> Any:
    if isinstance(reply, hiredis.ReplyError):
        raise RedisTrouble(str(reply).split(" ", 1)[0])  # the error's code, nothing it echoed
    return reply


class RedisCounts:
    """The counts in Redis under keys prefixed ``meterapi:``, over one connection."""

    def __init__(self, redis_url: SecretStr, *, timeout_s: float = 1.0) -> None:
        url = redis_url.get_secret_value()
        self._options: dict[str, Any] = dict(parse_url(url))
        self._tls = _tls(self._options) if url.startswith("rediss://") else None
        self.timeout_s = timeout_s
        self._wire: _Wire | None = None
        self._connecting: asyncio.Future[_Wire] | None = None

    def __repr__(self) -> str:  # never the URL: it may hold a password
        return "RedisCounts()"

    async def add(self, increments: Sequence[tuple[str, int, int]]) -> list[int]:
        """Apply each ``(key, window s, amount)``; each key's count after its increment."""
        keys = [f"{KEY_PREFIX}:{key}".encode() for key, _, _ in increments]
        args: list[int] = []
        for _, window, amount in increments:
            args += (amount, window)
        try:
            async with asyncio.timeout(self.timeout_s):
                wire = self._wire
                if wire is None or wire.closed:
                    wire = await self._connect()
                (reply,) = wire.send(command("EVALSHA", ADD_SHA, len(keys), *keys, *args))
                counts = await reply
                if isinstance(counts, hiredis.ReplyError) and str(counts).startswith("NOSCRIPT"):
                    (reply,) = wire.send(command("EVAL", ADD_SCRIPT, len(keys), *keys, *args))
                    counts = await reply
                return [int(count) for count in _checked(counts)]
        except BaseException:
            self._drop()
            raise

    async def warm(self) -> None:
        """Connect and load the script, before the first call needs them."""
        try:
            async with asyncio.timeout(self.timeout_s):
                wire = await self._connect()
                (loaded,) = wire.send(command("SCRIPT", "LOAD", ADD_SCRIPT))
                _checked(await loaded)
        except BaseException:
            self._drop()
            raise

    async def _connect(self) -> _Wire:
        """The open connection, or a new one (the last was closed by trouble or by Redis)."""
        if self._wire is not None and not self._wire.closed:
            return self._wire
        if self._connecting is None:  # calls arriving meanwhile share one connection attempt
            self._connecting = asyncio.ensure_future(self._open())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _open(self) -> _Wire:
        options = self._options
        loop = asyncio.get_running_loop()
        _, wire = await loop.create_connection(
            _Wire,
            options.get("host", "localhost"),
            options.get("port", 6379),
            ssl=self._tls,
        )
        hello: list[bytes] = []
        if options.get("password") is not None:
            user = options.get("username")
            credentials = (options["password"],) if user is None else (user, options["password"])
            hello.append(command("AUTH", *credentials))
        if options.get("db"):
            hello.append(command("SELECT", options["db"]))
        try:
            if hello:
                for reply in wire.send(b"".join(hello), replies=len(hello)):
                    _checked(await reply)
        except BaseException:
            wire.close()
            raise
        self._wire = wire
        return wire

    def _drop(self) -> None:
        """Close the connection after trouble: a reply may still be on its way."""
        if self._wire is not None:
            self._wire.close()
            self._wire = None

    async def close(self) -> None:
        self._drop()
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None


def _tls(options: dict[str, Any]) -> ssl.SSLContext:
    """``rediss://``: TLS, verified unless the URL says ``ssl_cert_reqs=none``."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_cert_reqs") in ("none", "optional"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
