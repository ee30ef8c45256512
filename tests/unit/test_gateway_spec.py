"""The gateway file is checked at start, and every mistake is named with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterapi import cli
from meterapi.app import create_app
from meterapi.gateway.proxy import client_headers, signature, units_of, upstream_headers
from meterapi.gateway.spec import GatewayFileError, GatewayRoute, load, parse
from tests.conftest import make_settings

GOOD = """\
upstream = "http://127.0.0.1:9000/api/"
timeout_s = 5

[[route]]
path = "/v1/forecast/{city}"
methods = ["GET"]
units = 3

[[route]]
path = "/v1/files/{rest:path}"
methods = ["get", "PUT"]

[[route]]
path = "/v1/free"
units = 0
"""


def test_a_good_file() -> None:
    spec = parse(GOOD, source="gateway.toml")
    assert spec.upstream == "http://127.0.0.1:9000/api"
    assert spec.timeout_s == 5.0
    assert spec.routes == (
        GatewayRoute("/v1/forecast/{city}", ("GET",), 3),
        GatewayRoute("/v1/files/{rest:path}", ("GET", "PUT"), 1),
        GatewayRoute("/v1/free", ("GET",), 0),
    )


def test_the_upstream_url_setting_wins(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(GOOD.replace('upstream = "http://127.0.0.1:9000/api/"\n', ""))
    with pytest.raises(GatewayFileError, match="set upstream, or METERAPI_UPSTREAM_URL"):
        load(path)
    assert load(path, upstream_override="https://api.example.com").upstream == (
        "https://api.example.com"
    )
    assert load(path, upstream_override="https://api.example.com").timeout_s == 5.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("units = 3", "units = -1"), r"gateway.toml:4 \(route #1\) /v1/forecast/\{city\}: units"),
        (("units = 3", "unit = 3"), r":4 \(route #1\): unknown key 'unit'"),
        (("units = 0", "units = 1.5"), r":13 \(route #3\) /v1/free: units must be a whole"),
        (("units = 0", "units = true"), r":13 \(route #3\) /v1/free: units must be a whole"),
        (('methods = ["GET"]', 'methods = ["FETCH"]'), r":4 .*unknown method 'FETCH'"),
        (('methods = ["GET"]', "methods = []"), r":4 .*methods must be a non-empty list"),
        (('methods = ["GET"]', 'methods = ["GET", "get"]'), r":4 .*listed twice"),
        (('"/v1/free"', '"v1/free"'), r":13 .*path 'v1/free' is not a path template"),
        (('"/v1/free"', '"/v1/free?x=1"'), r":13 .*not a path template"),
        (('"/v1/free"', '"/v1/{a}/{a}"'), r":13 .*path '/v1/\{a\}/\{a\}'"),
        (('"/v1/free"', '"/v1/{a:nope}"'), r":13 .*path '/v1/\{a:nope\}'"),
        (('"/v1/free"', '"/v1/forecast/{town}"'), r":13 .*duplicates the route GET /v1/forecast"),
        (("timeout_s = 5", "timeout_s = 0"), r"timeout_s must be a number of seconds > 0"),
        (("timeout_s = 5", "timeouts = 5"), r"unknown key 'timeouts'"),
        (("http://127.0.0.1:9000/api/", "ftp://x"), r"upstream 'ftp://x' is not an http"),
        (("http://127.0.0.1:9000/api/", "http://h/?q=1"), r"must not carry a query"),
        (("[[route]]", "[[routes]]"), r"unknown key 'routes'"),
        (("units = 3\n", "units = 3\n= broken\n"), r"not valid TOML"),
    ],
)
def test_mistakes_are_named(change: tuple[str, str], message: str) -> None:
    text = GOOD.replace(*change, 1)
    assert text != GOOD
    with pytest.raises(GatewayFileError, match=message):
        parse(text, source="gateway.toml")


def test_no_routes_is_a_mistake() -> None:
    with pytest.raises(GatewayFileError, match="no routes"):
        parse('upstream = "http://x"\n', source="g.toml")


def test_serve_stops_on_a_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(GOOD.replace("units = 3", "units = -3"))
    monkeypatch.setenv("METERAPI_GATEWAY_FILE", str(path))
    monkeypatch.setenv("METERAPI_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/never.db")
    assert cli.main(["serve"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"meterapi: configuration error: {path}:4 (route #1)")
    assert "\n" not in error
    assert not (tmp_path / "never.db").exists()  # stopped before touching anything


def test_header_rules() -> None:
    up = upstream_headers(
        [
            (b"host", b"gw"),
            (b"connection", b"keep-alive, X-Listed"),
            (b"x-listed", b"1"),
            (b"te", b"trailers"),
            (b"proxy-authorization", b"x"),
            (b"x-api-key", b"mk_test_x"),
            (b"authorization", b"bearer mk_test_x"),
            (b"x-meterapi-customer", b"cus_forged"),
            (b"accept", b"text/event-stream"),
            (b"content-length", b"3"),
        ]
    )
    assert up == [(b"accept", b"text/event-stream"), (b"content-length", b"3")]
    down, units = client_headers(
        [
            (b"Content-Type", b"text/plain"),
            (b"Transfer-Encoding", b"chunked"),
            (b"X-Meterapi-Units", b"4"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ]
    )
    assert down == [
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]
    assert units == b"4"
    _, twice = client_headers([(b"x-meterapi-units", b"4"), (b"x-meterapi-units", b"4")])
    assert units_of(twice, default=1, route="/r") == 1
    assert units_of(b" 12 ", default=1, route="/r") == 12


def test_signature_is_the_contracts() -> None:
    # HMAC-SHA256("s", "1700000000.GET./v1/x?a=1.cus_1"), computed independently.
    import hashlib
    import hmac

    expected = hmac.new(b"s", b"1700000000.GET./v1/x?a=1.cus_1", hashlib.sha256).hexdigest()
    value = signature(
        b"s", timestamp=1700000000, method="GET", target="/v1/x?a=1", customer="cus_1"
    )
    assert value == f"t=1700000000,v1={expected}"


def test_a_route_may_not_shadow_a_built_in_one(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    route = '[[route]]\npath = "/v1/keys/{id}"\nmethods = ["GET", "DELETE"]\n'
    path.write_text(f'upstream = "http://127.0.0.1:9"\n{route}')
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/x.db", gateway_file=path)
    with pytest.raises(
        GatewayFileError, match=r"DELETE /v1/keys/\{id\} collides with a built-in route"
    ):
        create_app(settings)
    path.write_text('upstream = "http://127.0.0.1:9"\n[[route]]\npath = "/v1/keys/{id}/x"\n')
    assert any(getattr(r, "path", "") == "/v1/keys/{id}/x" for r in create_app(settings).routes)
