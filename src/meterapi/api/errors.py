"""One error shape for everything: ``{"error": {"code", "message"}}`` (CONTRACT §3)."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from meterapi.api.middleware import HttpMiddleware
from meterapi.errors import DomainError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{location or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "The request is malformed."


def domain_error_response(exc: DomainError) -> JSONResponse:
    """A domain error in the one error shape, with its status and headers."""
    return error_response(exc.status_code, exc.code, exc.message, exc.headers)


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return domain_error_response(exc)


def _allowed_methods(request: Request) -> str | None:
    """Every method some route serves on this path (RFC 9110 §15.5.6), not only the first's.

    Starlette's 405 names the methods of the first route whose path matches, so ``/v1/keys``
    (``GET`` and ``POST``, two routes) would answer ``Allow: GET``.
    """
    path: str = request.scope["path"]
    root_path: str = request.scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :] or "/"
    methods: set[str] = set()
    for context in iter_route_contexts(request.app.router.routes):
        regex = getattr(context, "path_regex", None)
        if context.methods and regex is not None and regex.match(path):
            methods.update(context.methods)
    return ", ".join(sorted(methods)) or None


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allow = _allowed_methods(request)
        if allow is not None:
            headers = {**(exc.headers or {}), "Allow": allow}
            message = exc.detail if isinstance(exc.detail, str) else "Method Not Allowed"
            return error_response(405, "method_not_allowed", message, headers)
    if exc.status_code == 400:
        # The framework's own 400s all mean a body it could not parse (bytes that are not
        # UTF-8 JSON, say): malformed input, which CONTRACT §3 answers with validation_error.
        return error_response(422, "validation_error", "The request body could not be parsed.")
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "validation_error", _describe(exc))


def _database_unavailable(exc: Exception) -> bool:
    """The database is down, overloaded or locked: worth a retry, unlike a bug."""
    if isinstance(exc, ConnectionError | sa_exc.TimeoutError):  # refused; pool exhausted
        return True
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if not _database_unavailable(exc):
        return await _unexpected_error(request, exc)
    log.warning(
        "database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__
    )
    return error_response(
        503,
        "database_unavailable",
        "The database is busy or unreachable; nothing was done. Try again shortly.",
        {"Retry-After": "1"},
    )


def _where(exc: BaseException) -> str:
    """The file and line that raised: enough to find the bug, with none of the data."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Log the type, route and place only: an exception's text can carry request data (a SQL
    # error's bound parameters, a driver's message quoting a value).
    log.error(
        "unhandled %s on %s %s at %s",
        type(exc).__name__,
        request.method,
        request.url.path,
        _where(exc),
    )
    return error_response(500, "internal_error", "Something went wrong on our side.")


class UnhandledErrors(HttpMiddleware):
    """Answers 500 for an exception no handler took, and keeps it from the server's log.

    Starlette re-raises such an exception after its 500 so that the server logs its traceback,
    and that text can quote request data. This boundary, outside every other middleware we add,
    logs what ``_unexpected_error`` logs and lets nothing through.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            response = await _unexpected_error(Request(scope), exc)
            if not started:
                await response(scope, receive, send)


ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Stable; see CONTRACT §3."},
                "message": {"type": "string", "description": "For humans."},
            },
        }
    },
}


def _document_the_error_shape(app: FastAPI) -> None:
    """FastAPI documents 422s as ``{"detail": [...]}``; ours are the error shape, so say so."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schemas = schema.get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                schemas["HTTPValidationError"] = ERROR_SCHEMA
                schemas.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    _document_the_error_shape(app)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for database_trouble in (ConnectionError, sa_exc.TimeoutError, sa_exc.DBAPIError):
        app.add_exception_handler(database_trouble, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
