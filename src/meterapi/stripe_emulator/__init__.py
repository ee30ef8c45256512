"""A local, stateful Stripe emulator that the real `stripe` SDK talks to (test mode only).

Public surface:

- `create_emulator_app(*, webhook_url=None, webhook_secret=DEFAULT_WEBHOOK_SECRET,
  state_file=None, public_url=None, webhook_retry_delays=DEFAULT_RETRY_DELAYS)` → ASGI app.
- `EmulatorServer(...)`: the app under uvicorn on 127.0.0.1 in a thread; `start()`/`stop()` or
  `with`; `.url`; `.set_webhook(url, secret=None)`; `.emulator` for in-process inspection.
- `EmulatorControl(base_url)`: async client for the `/_emulator/` control endpoints.
- `main(argv)`: the `meterapi stripe-emulator` command.

Point the SDK at it with `base_addresses={"api": url, "meter_events": url}` and any `sk_test_…`
key. Control endpoints live under `/_emulator/`; hosted pages under `/checkout/` and `/portal/`.
"""

from .app import Emulator, create_emulator_app, emulator_of
from .client import EmulatorControl
from .command import main
from .server import EmulatorServer
from .state import API_VERSION
from .webhooks import DEFAULT_WEBHOOK_SECRET, sign

__all__ = [
    "API_VERSION",
    "DEFAULT_WEBHOOK_SECRET",
    "Emulator",
    "EmulatorControl",
    "EmulatorServer",
    "create_emulator_app",
    "emulator_of",
    "main",
    "sign",
]
