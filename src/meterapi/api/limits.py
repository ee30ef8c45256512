"""Refuse request bodies over the configured size, with a 413 the client can read.

Two ways a body can be too large: a ``Content-Length`` over the limit (refused before the app
runs), or a streamed (chunked) body that passes it while the app reads. Either way the answer is
413 ``payload_too_large``. Before answering, the rest of the body is read and thrown away (up to
``DRAIN_FACTOR`` times the limit): a server that answers and closes while the client is still
sending makes the client's TCP stack see a reset, not the 413. A client that asked
``Expect: 100-continue`` has sent nothing yet and is answered at once.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meterapi.api.errors import domain_error_response
from meterapi.api.middleware import HttpMiddleware
from meterapi.errors import PayloadTooLarge

# How much of a refused body is read (and discarded) so the client sees the 413: a multiple
# of the limit, beyond which the connection is simply closed after the answer.
DRAIN_FACTOR = 16


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a streamed body passes the limit.

    An HTTPException so that FastAPI's body parsing passes it on (it turns any other error into
    a 400) and the one error handler answers it as 413 ``payload_too_large``.
    """

    def __init__(self) -> None:
        super().__init__(status_code=PayloadTooLarge.status_code, detail=PayloadTooLarge.message)


class BodySizeLimit(HttpMiddleware):
    """Answers 413 from Content-Length, or stops a streamed body once it passes the limit."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        expects_continue = False
        for name, value in scope["headers"]:
            if name == b"expect" and value.lower() == b"100-continue":
                expects_continue = True
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                fits = value.isdigit() and int(value) <= self.max_bytes * DRAIN_FACTOR
                if fits and not expects_continue:
                    await self._drain(receive, 0)
                await _reject(scope, receive, send, close=not fits)
                return
        received = 0
        exceeded = False
        drained = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded, drained
            if exceeded:
                raise BodyTooLarge()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    drained = not message.get("more_body", False)
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started, drained
            if message["type"] == "http.response.start":
                response_started = True
                if exceeded and not drained:
                    drained = await self._drain(receive, received)
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                if not drained:
                    drained = await self._drain(receive, received)
                await _reject(scope, receive, send, close=not drained)

    async def _drain(self, receive: Receive, received: int) -> bool:
        """Read the rest of the body and discard it; False if it was too much to read."""
        while received <= self.max_bytes * DRAIN_FACTOR:
            message = await receive()
            if message["type"] != "http.request":
                return False  # the client went away
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
        return False


async def _reject(scope: Scope, receive: Receive, send: Send, *, close: bool = False) -> None:
    response = domain_error_response(PayloadTooLarge())
    if close:
        response.headers["connection"] = "close"
    await response(scope, receive, send)
