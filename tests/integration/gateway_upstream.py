"""A small upstream API for the gateway's tests and benchmark, run in its own process:
``python -m uvicorn tests.integration.gateway_upstream:app --port N``.

- ``/echo/{rest:path}`` (any method): what arrived (method, target, headers, body digest), with a
  few headers the gateway must pass on and some it must not; ``?units=`` sets X-Meterapi-Units,
  ``?status=`` the status.
- ``/sse``: an event stream that sends one event, then waits for ``POST /_release`` before the
  rest, and charges 5 units by header.
- ``/slow?s=``: answers after ``s`` seconds. ``/big?mb=``: ``mb`` MB in 64 KiB chunks.
- ``/_seen``: the paths requested so far (the control routes excepted), ``DELETE`` to forget.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

seen: list[str] = []
released = asyncio.Event()
CHUNK = b"x" * 65536


def _note(request: Request) -> None:
    seen.append(request.url.path)


async def echo(request: Request) -> Response:
    _note(request)
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    raw_path = request.scope.get("raw_path", b"").decode()
    query = request.scope["query_string"].decode()
    body = {
        "method": request.method,
        "target": raw_path + ("?" + query if query else ""),
        "headers": [[k.decode(), v.decode()] for k, v in request.scope["headers"]],
        "body_bytes": size,
        "body_sha256": digest.hexdigest(),
    }
    headers = {
        "X-Upstream": "echo",
        "Connection": "X-Hop-Down",
        "X-Hop-Down": "must not pass",
        "Keep-Alive": "timeout=5",
        "Proxy-Authenticate": "Basic",
    }
    if "units" in request.query_params:
        headers["X-Meterapi-Units"] = request.query_params["units"]
    status = int(request.query_params.get("status", "200"))
    return JSONResponse(body, status_code=status, headers=headers)


async def sse(request: Request) -> Response:
    _note(request)

    async def events() -> AsyncIterator[bytes]:
        yield b"event: tick\ndata: 1\n\n"
        try:
            async with asyncio.timeout(30):
                await released.wait()
        except TimeoutError:
            yield b"event: error\ndata: never released\n\n"
            return
        released.clear()
        yield b"event: tick\ndata: 2\n\n"
        yield b"event: done\ndata: 3\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"X-Meterapi-Units": "5", "Cache-Control": "no-cache"},
    )


async def release(_request: Request) -> Response:
    released.set()
    return PlainTextResponse("released")


async def slow(request: Request) -> Response:
    _note(request)
    await asyncio.sleep(float(request.query_params.get("s", "5")))
    return PlainTextResponse("late")


async def big(request: Request) -> Response:
    _note(request)
    chunks = int(float(request.query_params.get("mb", "10")) * 16)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield CHUNK

    return StreamingResponse(body(), media_type="application/octet-stream")


async def hello(_request: Request) -> Response:
    return PlainTextResponse("hello")


async def seen_paths(request: Request) -> Response:
    if request.method == "DELETE":
        seen.clear()
    return JSONResponse(seen)


app = Starlette(
    routes=[
        Route(
            "/echo/{rest:path}",
            echo,
            methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        ),
        Route("/sse", sse),
        Route("/_release", release, methods=["POST"]),
        Route("/slow", slow),
        Route("/big", big),
        Route("/hello", hello),
        Route("/_seen", seen_paths, methods=["GET", "DELETE"]),
    ]
)
