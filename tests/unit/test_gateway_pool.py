"""The gateway's connection pool against a real socket server: connections are reused, one the
server closed while idle is never handed out, and surplus idle connections are closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from meterapi.gateway import pool as pool_module
from meterapi.gateway.pool import Pool, pooled_transport


class Server:
    """A raw HTTP/1.1 server that counts connections; ``close_after`` closes each connection
    after that many answers without saying so (as a keep-alive timeout does)."""

    def __init__(self, close_after: int | None = None) -> None:
        self.close_after = close_after
        self.connections = 0
        self.url = ""
        self.release = asyncio.Event()
        self.release.set()
        self.expected = 0
        self.all_connected = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.connections >= self.expected:
            self.all_connected.set()
        answered = 0
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await self.release.wait()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
                answered += 1
                if self.close_after is not None and answered >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    listener = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    srv.url = f"http://127.0.0.1:{port}/"
    async with listener:
        yield srv


def _client(max_keepalive: int = 100) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=max_keepalive)
    return httpx.AsyncClient(transport=pooled_transport(limits))


def _pool(client: httpx.AsyncClient) -> Pool:
    pool = client._transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool, Pool)
    return pool


async def test_sequential_requests_reuse_one_connection(server: Server) -> None:
    async with _client() as client:
        for _ in range(20):
            response = await client.get(server.url)
            assert response.text == "ok"
    assert server.connections == 1


async def test_a_connection_the_server_closed_is_not_reused(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No periodic sweep in this test: the check before handing a connection out must catch it.
    monkeypatch.setattr(pool_module, "SWEEP_INTERVAL_S", 3600.0)
    server.close_after = 1
    async with _client() as client:
        for _ in range(5):
            assert (await client.get(server.url)).status_code == 200
            await asyncio.sleep(0.05)  # the server's FIN arrives while the connection is idle
        assert len(_pool(client).connections) == 1
    assert server.connections == 5


async def test_surplus_idle_connections_are_closed(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "SWEEP_INTERVAL_S", 0.0)  # a sweep on every pass
    server.release.clear()
    server.expected = 6
    async with _client(max_keepalive=2) as client:
        requests = [asyncio.create_task(client.get(server.url)) for _ in range(6)]
        await asyncio.wait_for(server.all_connected.wait(), timeout=30)
        server.release.set()
        assert [r.status_code for r in await asyncio.gather(*requests)] == [200] * 6
        await client.get(server.url)  # a sweep after all six went idle
        assert len(_pool(client).connections) <= 2
