"""The tutorial-style baseline: a paid endpoint that reports usage to Stripe inside the request.

This is how many blog-post integrations meter an API: look the key up, then ``await`` one
Stripe meter-event call before answering, so every response waits on Stripe (and a Stripe outage
is an outage of the API). The benchmark runs it against the emulator with 150 ms of latency
added to every call, about what a call to Stripe's API costs from a distant region.

    BENCH_TUTORIAL_STRIPE_BASE=http://127.0.0.1:12111 BENCH_TUTORIAL_CUSTOMER=cus_… \\
    BENCH_TUTORIAL_KEY=… uvicorn bench.tutorial_app:app
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
import uuid

import stripe
from fastapi import FastAPI, Header, HTTPException

STRIPE_BASE = os.environ.get("BENCH_TUTORIAL_STRIPE_BASE", "http://127.0.0.1:12111")
CUSTOMER = os.environ.get("BENCH_TUTORIAL_CUSTOMER", "cus_tutorial")
EVENT_NAME = os.environ.get("BENCH_TUTORIAL_EVENT_NAME", "api_requests")
# The tutorial keeps key hashes in a table; one known key stands in for it here.
KEY_DIGESTS = {
    hashlib.sha256(os.environ.get("BENCH_TUTORIAL_KEY", "").encode()).hexdigest(): CUSTOMER
}

client = stripe.StripeClient(
    "sk_test_tutorial",
    http_client=stripe.HTTPXClient(timeout=10),
    base_addresses={"api": STRIPE_BASE, "meter_events": STRIPE_BASE},
)
app = FastAPI(title="tutorial-style metered API")


@app.get("/v1/data")
async def get_data(x_api_key: str = Header(default="")) -> dict[str, object]:
    digest = hashlib.sha256(x_api_key.encode()).hexdigest()
    customer = next((c for d, c in KEY_DIGESTS.items() if hmac.compare_digest(d, digest)), None)
    if customer is None:
        raise HTTPException(status_code=401, detail="invalid api key")
    await client.v1.billing.meter_events.create_async(
        params={
            "event_name": EVENT_NAME,
            "identifier": uuid.uuid4().hex,
            "timestamp": int(time.time()),
            "payload": {"stripe_customer_id": customer, "value": "1"},
        }
    )
    return {"object": "data", "customer_id": customer, "items": [1, 2, 3]}
