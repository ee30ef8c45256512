"""Run the emulator on loopback in a background thread (for tests and for `meterapi serve`)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType

import uvicorn

from .app import Emulator, create_emulator_app, emulator_of
from .webhooks import DEFAULT_RETRY_DELAYS, DEFAULT_WEBHOOK_SECRET

START_TIMEOUT_S = 10.0


class EmulatorServer:
    """`with EmulatorServer() as emu: emu.url` — a live emulator on 127.0.0.1.

    Port 0 picks a free port. Webhook URL and secret can be changed while it runs.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        webhook_url: str | None = None,
        webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
        state_file: str | None = None,
        public_url: str | None = None,
        webhook_retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        hold_webhooks: bool = False,
    ) -> None:
        """``hold_webhooks``: with no ``webhook_url`` yet, keep events until one is set (and
        send them then) rather than dropping them."""
        self.host = host
        self.port = port
        self.app = create_emulator_app(
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            state_file=state_file,
            public_url=public_url,
            webhook_retry_delays=webhook_retry_delays,
        )
        self.emulator.target.held = hold_webhooks and webhook_url is None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def emulator(self) -> Emulator:
        return emulator_of(self.app)

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. `http://127.0.0.1:54321`."""
        return f"http://{self.host}:{self.port}"

    @property
    def webhook_secret(self) -> str:
        return self.emulator.target.secret

    def set_webhook(self, url: str | None, secret: str | None = None) -> None:
        """Deliver webhooks to `url` (None: stop delivering); optionally change the secret."""
        self.emulator.target.url = url
        if secret is not None:
            self.emulator.target.secret = secret
        if url is not None and self.emulator.target.held:
            self.emulator.sender.release()

    def start(self) -> EmulatorServer:
        if self._thread is not None:
            raise RuntimeError("the emulator server is already running")
        # Bind first, so the port is known (and taken) before the thread starts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            # Beside `meterapi serve` it shares uvicorn's loggers: its request lines (which
            # carry Checkout Session ids) would mix into the service's log.
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="stripe-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the Stripe emulator failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
