"""The trivial upstream the gateway benchmark forwards to: a bare ASGI app, so what is measured
is the gateway, not the upstream.

- ``GET /hello``: 5 bytes.
- ``GET /big?mb=N``: N MiB in 64 KiB chunks, streamed.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

CHUNK = b"x" * 65536
_HELLO = [(b"content-type", b"text/plain"), (b"content-length", b"5")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/big":
        query = scope["query_string"].decode()
        mib = int(query.partition("mb=")[2] or "10")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(mib * 16):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HELLO})
    await send({"type": "http.response.body", "body": b"hello"})
