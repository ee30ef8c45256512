"""A webhook receiver for the outbound-webhook tests, run as its own process.

It verifies every delivery's Standard Webhooks signature with the ``standardwebhooks`` package,
answers, and appends one JSON line per request to ``--log``:
``{"n", "id", "type", "customer_id", "verified", "overlapping", "status", "start", "end"}``.
``overlapping`` is true when another request with the same ``webhook-id`` was being handled at
the same time (the deliverers must never do that).

Answers: 401 when the signature does not verify; 503 to the first ``--fail-first`` requests;
410 for events of ``--gone-customer``; otherwise 2xx (200, 202 or 204 in turn).
Prints its port on the first line of stdout once it listens.

    python tests/outbound_receiver.py --secret whsec_… --log FILE [--fail-first N]
        [--gone-customer cus_…] [--hold-s 0.05]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SUCCESS = (200, 202, 204)


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(("127.0.0.1", args.port), Handler)
        self.args = args
        self.webhook = Webhook(args.secret)
        self.lock = threading.Lock()
        self.count = 0
        self.in_flight: Counter[str] = Counter()
        self.log = open(args.log, "a", buffering=1)  # noqa: SIM115 (lives as long as the server)


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        start = time.time()
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            payload = self.server.webhook.verify(body, dict(self.headers.items()))
            verified = True
        except WebhookVerificationError:
            payload, verified = json.loads(body or b"{}"), False
        event_id = self.headers.get("webhook-id", "")
        with self.server.lock:
            self.server.count += 1
            n = self.server.count
            self.server.in_flight[event_id] += 1
            overlapping = self.server.in_flight[event_id] > 1
        time.sleep(self.server.args.hold_s)  # long enough for a concurrent duplicate to overlap
        customer = (payload.get("data") or {}).get("customer_id")
        if not verified:
            status = 401
        elif n <= self.server.args.fail_first:
            status = 503
        elif customer == self.server.args.gone_customer:
            status = 410
        else:
            status = SUCCESS[n % len(SUCCESS)]
        record = {
            "n": n,
            "id": event_id,
            "type": payload.get("type"),
            "customer_id": customer,
            "data": payload.get("data"),
            "verified": verified,
            "overlapping": overlapping,
            "status": status,
            "start": start,
            "end": time.time(),
        }
        with self.server.lock:
            self.server.in_flight[event_id] -= 1
            self.server.log.write(json.dumps(record) + "\n")
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--gone-customer", default=None)
    parser.add_argument("--hold-s", type=float, default=0.05)
    server = Receiver(parser.parse_args())
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
