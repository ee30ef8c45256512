"""The gateway file (``METERAPI_GATEWAY_FILE``, CONTRACT §6): read and checked once, at start.

```toml
upstream = "http://127.0.0.1:9000"      # METERAPI_UPSTREAM_URL overrides it
timeout_s = 30                          # for the response headers, and between body chunks

[[route]]
path = "/v1/forecast/{city}"            # Starlette path syntax; "{rest:path}" takes the remainder
methods = ["GET"]                       # default ["GET"]
units = 1                               # default 1; 0 = paid access, not billed
```

Every mistake stops the start with one message that names the file, the line of the route's
``[[route]]`` header where there is one, and what is wrong: a typo must not quietly turn a paid
route into a free one, or a route into a 404.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.routing import compile_path

from meterapi.config import ConfigError

DEFAULT_TIMEOUT_S = 30.0
MAX_UNITS = 10**9
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_TOP_KEYS = frozenset({"upstream", "timeout_s", "route"})
_ROUTE_KEYS = frozenset({"path", "methods", "units"})
# A path template: segments of URL-safe characters and {name} or {name:convertor} parameters.
_PATH = re.compile(r"^(/([A-Za-z0-9._~!$&'()*+,;=:@%-]|\{[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\})*)+$")

PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?\}")


class GatewayFileError(ConfigError):
    """The gateway file cannot be served as written; the message says where and why."""


@dataclass(frozen=True)
class GatewayRoute:
    path: str
    methods: tuple[str, ...]
    units: int


@dataclass(frozen=True)
class GatewaySpec:
    upstream: str  # scheme://host[:port][/base], no trailing slash
    timeout_s: float
    routes: tuple[GatewayRoute, ...]


def load(path: Path, *, upstream_override: str | None = None) -> GatewaySpec:
    """Read and check the gateway file; ``GatewayFileError`` names the first problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GatewayFileError(f"gateway file {path}: cannot be read ({exc})") from exc
    return parse(text, source=str(path), upstream_override=upstream_override)


def parse(text: str, *, source: str, upstream_override: str | None = None) -> GatewaySpec:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GatewayFileError(f"{source}: not valid TOML: {exc}") from exc
    unknown = sorted(set(document) - _TOP_KEYS)
    if unknown:
        raise GatewayFileError(
            f"{source}: unknown key {unknown[0]!r} (expected upstream, timeout_s, [[route]])"
        )
    upstream = _upstream(upstream_override, source="METERAPI_UPSTREAM_URL") or _upstream(
        document.get("upstream"), source=source
    )
    if upstream is None:
        raise GatewayFileError(f"{source}: set upstream, or METERAPI_UPSTREAM_URL")
    timeout_s = document.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
        raise GatewayFileError(f"{source}: timeout_s must be a number of seconds > 0")
    tables = document.get("route")
    if not isinstance(tables, list) or not tables:
        raise GatewayFileError(f"{source}: no routes; add at least one [[route]] table")
    lines = _route_header_lines(text)
    routes: list[GatewayRoute] = []
    seen: dict[tuple[str, str], str] = {}
    for index, table in enumerate(tables):
        where = f"{source}:{lines[index]}" if index < len(lines) else f"{source}"
        where += f" (route #{index + 1})"
        route = _route(table, where=where)
        pattern = shape(route.path)
        for method in route.methods:
            if (pattern, method) in seen:
                raise GatewayFileError(
                    f"{where}: {method} {route.path} duplicates the route {seen[pattern, method]}"
                )
            seen[pattern, method] = f"{method} {route.path}"
        routes.append(route)
    return GatewaySpec(upstream=upstream, timeout_s=float(timeout_s), routes=tuple(routes))


def shape(path: str) -> str:
    """A template without its parameter names: two templates of one shape match alike."""
    return PARAMETER.sub(lambda m: "{:" + (m.group(2) or "str") + "}", path)


def _upstream(value: object, *, source: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise GatewayFileError(f"{source}: upstream must be a URL string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GatewayFileError(f"{source}: upstream {value!r} is not an http(s):// URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise GatewayFileError(
            f"{source}: upstream {value!r} must not carry a query, fragment or credentials"
        )
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        raise GatewayFileError(f"{source}: upstream {value!r} has a bad port") from exc
    return value.rstrip("/")


def _route(table: object, *, where: str) -> GatewayRoute:
    if not isinstance(table, dict):
        raise GatewayFileError(f"{where}: a route must be a table")
    unknown = sorted(set(table) - _ROUTE_KEYS)
    if unknown:
        raise GatewayFileError(
            f"{where}: unknown key {unknown[0]!r} (expected path, methods, units)"
        )
    path = _path(table.get("path"), where=where)
    where = f"{where} {path}"
    return GatewayRoute(
        path=path,
        methods=_methods(table.get("methods", ["GET"]), where=where),
        units=_units(table.get("units", 1), where=where),
    )


def _path(value: Any, *, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise GatewayFileError(f"{where}: path is required, a string starting with /")
    if not _PATH.match(value) or "//" in value:
        raise GatewayFileError(
            f"{where}: path {value!r} is not a path template "
            "(starts with /, no query, no spaces; parameters as {name} or {name:path})"
        )
    try:
        compile_path(value)
    except (AssertionError, ValueError) as exc:  # an unknown convertor, a repeated name
        raise GatewayFileError(f"{where}: path {value!r}: {exc}") from exc
    return value


def _methods(value: Any, *, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise GatewayFileError(f'{where}: methods must be a non-empty list such as ["GET"]')
    methods = [m.upper() for m in value]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise GatewayFileError(
            f"{where}: unknown method {bad[0]!r} (one of {', '.join(sorted(METHODS))})"
        )
    if len(set(methods)) != len(methods):
        raise GatewayFileError(f"{where}: a method is listed twice")
    return tuple(methods)


def _units(value: Any, *, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_UNITS:
        raise GatewayFileError(f"{where}: units must be a whole number from 0 to {MAX_UNITS}")
    return value


def _route_header_lines(text: str) -> list[int]:
    """The line number of each ``[[route]]`` header, in order (TOML keeps tables in order)."""
    return [
        number
        for number, line in enumerate(text.splitlines(), start=1)
        if re.match(r"^\s*\[\[\s*route\s*\]\]\s*(#.*)?$", line)
    ]
