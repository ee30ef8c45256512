"""Several uvicorn worker processes on one port, each accepting on a listening socket of its own.

uvicorn's ``--workers`` binds one socket in the supervisor and every worker accepts from it. The
workers' event loops (uvloop's, asyncio's) accept every connection waiting when they wake, so a
client that opens its connections in a burst (a connection pool, a load generator) lands them all
on whichever worker woke first, and the connections stay there: measured with 32 keep-alive
connections against ``--workers 2``, every one of them went to one worker, round after round,
and the other worker idled (docs/performance.md). Each worker here instead listens on a socket of
its own bound to the same address with ``SO_REUSEPORT``, and the kernel spreads new connections
across the workers' sockets by a hash of their addresses.

The supervisor keeps a socket bound to the address (so the port stays ours while workers come
and go) but never listens on it, so the kernel hands it no connection. The socket uvicorn passes
to each worker process is that bound socket; handed to a worker, it becomes a new listening
socket of the worker's own (``_WorkerSocket.__reduce__``), so a worker uvicorn restarts gets one
too. Where the system has no ``SO_REUSEPORT``, the workers share uvicorn's one socket as before.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

STARTUP_FAILURE = 3  # uvicorn's exit code when the server cannot start

log = logging.getLogger("uvicorn.error")


def serve_workers(app: str, *, host: str, port: int, workers: int, **options: Any) -> None:
    """Run ``app`` (an import string) in ``workers`` processes under uvicorn's supervisor,
    each with its own listening socket on ``host:port``; ``options`` are ``uvicorn.Config``'s."""
    from uvicorn import Config
    from uvicorn.supervisors import Multiprocess

    config = Config(app, host=host, port=port, workers=workers, **options)  # sets up logging
    if not hasattr(socket, "SO_REUSEPORT"):
        sock = config.bind_socket()
    else:
        try:
            sock = _WorkerSocket.bound(host, port)
        except OSError as exc:
            log.error("%s", exc)
            sys.exit(STARTUP_FAILURE)
        log.info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", host, sock.port)
    Multiprocess(config, sockets=[sock]).run()


def listening_socket(family: int, host: str, port: int) -> socket.socket:
    """A worker's own socket on the shared address (uvicorn makes it listen)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    _share_address(sock)
    sock.bind((host, port))
    return sock


def _share_address(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


class _WorkerSocket(socket.socket):
    """The supervisor's socket: bound to the address, never listening. What a worker process
    receives in its place is a socket of its own on the same address (``listening_socket``)."""

    @classmethod
    def bound(cls, host: str, port: int) -> _WorkerSocket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = cls(family, socket.SOCK_STREAM)
        _share_address(sock)
        sock.bind((host, port))
        return sock

    @property
    def port(self) -> int:
        return int(self.getsockname()[1])

    def __reduce__(self) -> tuple[Any, tuple[int, str, int]]:
        # multiprocessing shares a plain socket's descriptor with the child; this class is not
        # registered for that, so pickling it names the address instead.
        host, port = self.getsockname()[:2]
        return (listening_socket, (int(self.family), host, port))
