"""Browser tests: the real service under uvicorn on loopback, the Stripe emulator delivering its
webhooks to it, and Debian's chromium driven by Playwright for Python.

Without ``/usr/bin/chromium`` (or the playwright package) the tests skip and say why; in CI
(``CI=true``, where ``.ci/install-extra`` installs chromium) they fail instead.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn

from meterapi.app import create_app
from meterapi.config import Settings
from meterapi.stripe_emulator import EmulatorServer
from tests.conftest import EMULATOR_WEBHOOK_SECRET, IN_CI, stripe_settings

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

# Debian's chromium; METERAPI_TEST_CHROMIUM names another build (or a missing one, to see the skip).
CHROMIUM = Path(os.environ.get("METERAPI_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "e2e"
START_TIMEOUT_S = 15.0
# Every wait in the browser is bounded: a broken page fails in seconds, not minutes.
ACTION_TIMEOUT_MS = 10_000


def _unavailable() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: apt-get install chromium (or run .ci/install-extra)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -e '.[dev]'"
    return None


@pytest.fixture(autouse=True)
def _browser_available() -> None:
    """Checked before anything starts: skip with the reason, or fail in CI."""
    problem = _unavailable()
    if problem:
        if IN_CI:
            pytest.fail(f"browser tests cannot run in CI: {problem}")
        pytest.skip(problem)


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A fresh chromium per test. Sync Playwright runs an event loop on this thread while it is
    open, so it starts after (and stops before) the fixtures that use ``asyncio.run``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "console_allows(*texts): browser console errors containing these texts are expected",
    )


@pytest.fixture
def page(
    live_service: LiveService, browser: Browser, request: pytest.FixtureRequest
) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(ACTION_TIMEOUT_MS)
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    try:
        yield page
    finally:
        context.close()
    # A script error on any page is a bug even when the journey got through.
    marker = request.node.get_closest_marker("console_allows")
    allowed = ["status of 4", *(marker.args if marker else ())]
    assert not [e for e in console_errors if not any(a in e for a in allowed)], console_errors


@dataclass
class Screenshots:
    """``shots.take(page, "name")`` saves ``artifacts/e2e/<test>/NN-name.png``."""

    folder: Path
    taken: list[Path] = field(default_factory=list)

    def take(self, page: Page, name: str, *, full_page: bool = True) -> Path:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        self.taken.append(path)
        return path


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Screenshots:
    folder = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return Screenshots(folder)


@dataclass
class LiveService:
    url: str
    emulator: EmulatorServer

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0)

    def subscribe(self, email: str = "grace@example.com") -> str:
        """Checkout, pay on the emulator's hosted page, claim: the new customer's first key."""
        with self.client() as http:
            checkout = http.post("/v1/checkout", json={"email": email})
            assert checkout.status_code == 201, checkout.text
            paid = http.post(checkout.json()["url"], data={"email": email})
            assert paid.status_code == 303, paid.text
            claim = http.post(
                "/v1/keys/claim",
                json={
                    "checkout_session_id": checkout.json()["id"],
                    "claim_token": checkout.json()["claim_token"],
                },
            )
            assert claim.status_code == 201, claim.text
            api_key: str = claim.json()["api_key"]
            return api_key


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serving(
    settings: Settings, emulator: EmulatorServer, sock: socket.socket
) -> Iterator[LiveService]:
    """The whole service under a real uvicorn on ``sock``, wired to the emulator both ways."""
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config: dict[str, Any] = {"log_level": "warning", "lifespan": "on"}
    server = uvicorn.Server(uvicorn.Config(create_app(settings), **config))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="meterapi-e2e", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            pytest.fail("the service did not start under uvicorn")
        time.sleep(0.02)
    emulator.set_webhook(f"{url}/webhooks/stripe", EMULATOR_WEBHOOK_SECRET)
    try:
        yield LiveService(url=url, emulator=emulator)
    finally:
        emulator.set_webhook(None)
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        # A connection the server's loop left behind is finalised here, not in a later test.
        gc.collect()


def _live_settings(
    db_url: str, emulator: EmulatorServer, price: str, url: str, **overrides: Any
) -> Settings:
    return stripe_settings(
        db_url,
        emulator,
        price,
        public_url=url,
        stripe_webhook_secret=EMULATOR_WEBHOOK_SECRET,
        **overrides,
    )


@pytest.fixture
def live_service(
    db_url: str, stripe_emulator: EmulatorServer, stripe_price: str
) -> Iterator[LiveService]:
    """The whole service under a real uvicorn on 127.0.0.1, wired to the emulator both ways."""
    sock = _free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = _live_settings(db_url, stripe_emulator, stripe_price, url)
    with serving(settings, stripe_emulator, sock) as service:
        yield service


ADMIN_TOKEN = "e2e-operator-token-0123456789abcdefghij"
OUTBOUND_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes, base64


@pytest.fixture
def admin_service(
    db_url: str, stripe_emulator: EmulatorServer, stripe_price: str
) -> Iterator[LiveService]:
    """As ``live_service``, with the operator API and page on (``ADMIN_TOKEN``), and outbound
    webhooks sent to a port that is bound but never listens: every delivery is refused."""
    sock = _free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with _free_socket() as refusing:
        settings = _live_settings(
            db_url,
            stripe_emulator,
            stripe_price,
            url,
            admin_token=ADMIN_TOKEN,
            webhook_url=f"http://127.0.0.1:{refusing.getsockname()[1]}/hooks",
            webhook_secret=OUTBOUND_SECRET,
        )
        with serving(settings, stripe_emulator, sock) as service:
            yield service
