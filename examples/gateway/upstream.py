"""A weather API that knows nothing of meterapi but two headers: a plain standard-library
server, standing in for an API written in Go, Node or anything else.

    python upstream.py --port 9000          # UPSTREAM_SECRET=... to check the signature

- ``GET /v1/forecast/{city}``: a JSON forecast (the gateway charges the route's 1 unit).
- ``GET /v1/stream/{city}?hours=N``: N server-sent events, one every 0.2 s; it answers
  ``X-Meterapi-Units: N``, so the gateway charges one unit per hour forecast.

Behind the gateway, every request carries ``X-Meterapi-Customer`` (the paying customer,
``cus_…``) and ``X-Meterapi-Key-Id``, and with a shared secret ``X-Meterapi-Signature``, which this
server checks before trusting the other two.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import random
import time
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SECRET = os.environ.get("UPSTREAM_SECRET", "")
MAX_SKEW_S = 300


def signed_by_the_gateway(headers: Message, method: str, target: str) -> bool:
    """``t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<METHOD>.<target>.<customer>">``, recent."""
    signature = headers.get("X-Meterapi-Signature", "")
    fields = dict(part.split("=", 1) for part in signature.split(",") if "=" in part)
    customer = headers.get("X-Meterapi-Customer", "")
    if not fields.get("t", "").isdigit() or abs(time.time() - int(fields["t"])) > MAX_SKEW_S:
        return False
    message = f"{fields['t']}.{method}.{target}.{customer}".encode()
    expected = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(fields.get("v1", ""), expected)


class Weather(BaseHTTPRequestHandler):
    server_version = "weather/1.0"

    def do_GET(self) -> None:
        if SECRET and not signed_by_the_gateway(self.headers, "GET", self.path):
            self.answer(401, {"error": "not signed by the gateway"})
            return
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        customer = self.headers.get("X-Meterapi-Customer", "")
        if len(parts) == 3 and parts[:2] == ["v1", "forecast"]:
            self.answer(200, {"city": parts[2], "celsius": random.randint(5, 25), "for": customer})
        elif len(parts) == 3 and parts[:2] == ["v1", "stream"]:
            hours = parse_qs(url.query).get("hours", ["3"])[0]
            self.stream(parts[2], int(hours) if hours.isdigit() else 3)
        else:
            self.answer(404, {"error": "no such forecast"})

    def answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def stream(self, city: str, hours: int) -> None:
        # HTTP/1.0 style: no length, the body ends when the connection closes.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Meterapi-Units", str(hours))  # one unit per hour forecast
        self.end_headers()
        for hour in range(hours):
            event = {"city": city, "hour": hour, "celsius": random.randint(5, 25)}
            self.wfile.write(f"event: forecast\ndata: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.2)
        self.wfile.write(b"event: done\ndata: {}\n\n")
        self.close_connection = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Weather)
    print(f"weather upstream on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
