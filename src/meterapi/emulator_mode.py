"""``meterapi serve`` without a Stripe key: the built-in Stripe emulator beside the service.

Also the start-up warning for the opposite case, a real Stripe key without a public URL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from meterapi.billing.gateway import EMULATOR_WEBHOOK_SECRET, StripeGateway
from meterapi.config import Settings
from meterapi.stripe_emulator import EmulatorServer

log = logging.getLogger(__name__)

EMULATOR_PORT = 12111
EMULATOR_BANNER = """
  ======================================================================
   EMULATOR MODE: no METERAPI_STRIPE_SECRET_KEY is set.
   Stripe is the built-in emulator at {url}; no real money moves.
   Subscribe at {public}/dashboard, or POST {public}/v1/checkout.
  ======================================================================
"""
PUBLIC_URL_WARNING = """
  ======================================================================
   WARNING: a Stripe key is set but METERAPI_PUBLIC_URL is not.
   Checkout and the billing portal will send customers back to
   {public}, which is probably not where they reach this service.
   Set METERAPI_PUBLIC_URL to the service's public address.
  ======================================================================
"""
READY_TIMEOUT_S = 300.0


def local_host(host: str) -> str:
    """Where this machine reaches a server that listens on ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104


def url_of(host: str, port: int) -> str:
    host = local_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def warn_without_public_url(settings: Settings) -> None:
    """Say loudly, at start, that Checkout would return customers to the default address."""
    if "public_url" not in settings.model_fields_set:
        print(PUBLIC_URL_WARNING.format(public=settings.public_url), file=sys.stderr, flush=True)


def start(
    settings: Settings, *, host: str, port: int, emulator_host: str, state_file: str
) -> EmulatorServer:
    """Run the emulator, make (or reuse) the metered price, and point the service at both.

    The service's workers build their own Settings from the environment, so what they need is
    set there: the emulator's address, the price, and (unless set explicitly) the public URL,
    which defaults to where ``serve`` listens so any ``--port`` works end to end.
    """
    service_url = url_of(host, port)
    public = settings.public_url
    if "public_url" not in settings.model_fields_set:
        public = service_url
    server = _start_server(emulator_host, str(Path(state_file).resolve()))
    api_base = url_of(emulator_host, server.port)
    if local_host(emulator_host) != emulator_host:
        # Listening on every address (in a container): the hosted pages are named by the
        # public host, so the buyer's browser reaches them where it reaches the service.
        public_host = urlsplit(public).hostname or "127.0.0.1"
        server.emulator.public_url = url_of(public_host, server.port)
    wired = settings.model_copy(update={"stripe_api_base": api_base})
    price_id = settings.stripe_price_id or asyncio.run(_ensure_price(wired))
    os.environ["METERAPI_STRIPE_API_BASE"] = api_base
    os.environ["METERAPI_STRIPE_PRICE_ID"] = price_id
    os.environ["METERAPI_PUBLIC_URL"] = public
    _deliver_when_ready(server, service_url)
    shown = server.emulator.public_url or api_base
    print(EMULATOR_BANNER.format(url=shown, public=public), flush=True)
    return server


def _start_server(host: str, state_file: str) -> EmulatorServer:
    for port in (EMULATOR_PORT, 0):  # the usual port, else any free one
        candidate = EmulatorServer(
            host=host,
            port=port,
            webhook_url=None,  # set once the service listens: see _deliver_when_ready
            hold_webhooks=True,  # events of the meantime (a quick first checkout) wait for it
            webhook_secret=EMULATOR_WEBHOOK_SECRET,
            state_file=state_file,
        )
        try:
            return candidate.start()
        except OSError:
            continue
    raise RuntimeError("no port for the Stripe emulator")


async def _ensure_price(settings: Settings) -> str:
    gateway = StripeGateway(settings)
    try:
        return (await gateway.ensure_metered_price())[1]
    finally:
        await gateway.close()


def _deliver_when_ready(server: EmulatorServer, service_url: str) -> None:
    """Start the emulator's webhook delivery once the service answers, from a background
    thread: events sent before uvicorn listens could only fail."""

    def wait() -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{service_url}/healthz", timeout=1.0).status_code == 200:
                    server.set_webhook(f"{service_url}/webhooks/stripe")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        log.warning("the service did not answer at %s: the emulator sends no webhooks", service_url)

    threading.Thread(target=wait, name="emulator-webhooks", daemon=True).start()
