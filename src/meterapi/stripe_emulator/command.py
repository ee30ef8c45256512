"""`meterapi stripe-emulator` and `python -m meterapi.stripe_emulator`: run it in the foreground."""

from __future__ import annotations

import argparse

import uvicorn

from .app import create_emulator_app
from .webhooks import DEFAULT_WEBHOOK_SECRET

DEFAULT_PORT = 12111
DESCRIPTION = "A local, stateful Stripe-compatible server. Test mode only."


def tcp_port(text: str) -> int:
    """An argparse type: a TCP port, 1-65535 (uvicorn would wrap 99999 round, or fail obscurely)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, not {port}")
    return port


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options; `meterapi stripe-emulator` and `python -m` share them."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=tcp_port, default=DEFAULT_PORT, help="port to listen on")
    p.add_argument("--webhook-url", default=None, help="where to deliver signed webhook events")
    p.add_argument(
        "--webhook-secret", default=DEFAULT_WEBHOOK_SECRET, help="secret that signs webhooks"
    )
    p.add_argument("--state-file", default=None, help="persist state to this JSON file")
    p.add_argument("--public-url", default=None, help="base URL of the hosted pages")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meterapi stripe-emulator", description=DESCRIPTION)
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted, with the options `add_arguments` defines."""
    app = create_emulator_app(
        webhook_url=args.webhook_url,
        webhook_secret=args.webhook_secret,
        state_file=args.state_file,
        public_url=args.public_url,
    )
    print(
        f"Stripe emulator on http://{args.host}:{args.port} (test mode: no real money moves)\n"
        f"  any sk_test_… key is accepted; webhooks → {args.webhook_url or '(none)'}\n"
        f"  webhook secret: {args.webhook_secret}",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))
