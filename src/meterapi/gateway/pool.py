"""The gateway's connection pool: httpx's own, with a cheaper bookkeeping pass.

httpcore's ``AsyncConnectionPool`` re-examines every pooled connection twice per request (when a
request arrives and when its response is closed): it asks each one whether it has expired, which
costs a ``poll`` system call (plus a ``getpeername``) per idle connection, and for each idle one it
counts all connections again, so a pass is quadratic in the pool's size. With a few dozen
keep-alive connections to the upstream that pass was most of the gateway's CPU per forwarded
request (measured with ``bench.gateway``; see docs/gateway.md).

``Pool`` keeps httpcore's behaviour and makes the pass linear and cheap:

- a connection is checked for expiry (keep-alive timeout, or the upstream closed it) right before
  it is handed to a request, so a dead connection is never used;
- the whole pool (closed and expired connections, idle ones past ``max_keepalive_connections``)
  is swept in one linear pass at most once a second instead of on every request, so a request
  costs a walk to the first available connection.

Everything else (connecting, HTTP/1.1, TLS, timeouts, streaming) is httpcore's, under httpx's
transport, which maps its errors to httpx's.
"""

from __future__ import annotations

import time

import httpcore
import httpx
from httpcore import AsyncConnectionInterface

SWEEP_INTERVAL_S = 1.0


class Pool(httpcore.AsyncConnectionPool):
    _next_sweep = 0.0

    def _assign_requests_to_connections(self) -> list[AsyncConnectionInterface]:
        """Give each queued request a connection: an available one, else a new one, else one
        made by closing an idle one. Called by httpcore with its lock held, whenever a request
        is added or removed; the whole pool is swept at most once a second."""
        closing: list[AsyncConnectionInterface] = []
        now = time.monotonic()
        if now >= self._next_sweep:
            self._sweep(now, closing)
        for request in self._requests:
            if not request.is_queued():
                continue
            origin = request.request.url.origin
            chosen = self._available(origin, closing)
            if chosen is None:
                if len(self._connections) >= self._max_connections:
                    self._sweep(now, closing)  # closed connections still count until swept
                if len(self._connections) >= self._max_connections:
                    spare = next((c for c in self._connections if c.is_idle()), None)
                    if spare is None:
                        continue  # the request waits for a connection to be released
                    self._connections.remove(spare)
                    closing.append(spare)
                chosen = self.create_connection(origin)
                self._connections.append(chosen)
            request.assign_to_connection(chosen)
        return closing

    def _sweep(self, now: float, closing: list[AsyncConnectionInterface]) -> None:
        """Drop closed connections, close expired ones and idle ones past the keep-alive
        limit."""
        self._next_sweep = now + SWEEP_INTERVAL_S
        kept: list[AsyncConnectionInterface] = []
        idle = 0
        for connection in self._connections:
            if connection.is_closed():
                continue
            if connection.has_expired():
                closing.append(connection)
                continue
            if connection.is_idle():
                if idle >= self._max_keepalive_connections:
                    closing.append(connection)
                    continue
                idle += 1
            kept.append(connection)
        self._connections = kept

    def _available(
        self, origin: httpcore.Origin, closing: list[AsyncConnectionInterface]
    ) -> AsyncConnectionInterface | None:
        """The first connection that can take a request to ``origin`` now; an idle one is
        checked for expiry first, and dropped if it has expired."""
        for connection in list(self._connections):
            if not (connection.can_handle_request(origin) and connection.is_available()):
                continue
            if connection.is_idle() and connection.has_expired():
                self._connections.remove(connection)
                closing.append(connection)
                continue
            return connection
        return None


def pooled_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's transport (no proxy, no environment), running on ``Pool``."""
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    transport._pool = Pool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
    )
    return transport
