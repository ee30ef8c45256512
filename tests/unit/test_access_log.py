"""What the access log may show of a request's path and query."""

from __future__ import annotations

import pytest

from meterapi.api.access_log import target

KEY = "mk_test_" + "A" * 38
SESSION = "cs_test_a1" + "b" * 40 + "wxyz"


@pytest.mark.parametrize(
    ("path", "query", "shown"),
    [
        ("/v1/data", b"", "/v1/data"),
        ("/v1/data", f"apiKey={KEY}".encode(), "/v1/data?apiKey=[redacted]"),
        # Secret-looking names, in any case and as a part of the name.
        (
            "/x",
            b"API_KEY=1&Access_Token=2&client_secret=3&password=4&auth=5&sig=6&a=b",
            "/x?API_KEY=[redacted]&Access_Token=[redacted]&client_secret=[redacted]"
            "&password=[redacted]&auth=[redacted]&sig=[redacted]&a=b",
        ),
        ("/dashboard", f"session_id={SESSION}".encode(), "/dashboard?session_id=[redacted]"),
        # Known secret shapes under any name, and in the path.
        (f"/v1/keys/{SESSION}", f"q={KEY}".encode(), "/v1/keys/cs_…wxyz?q=mk_test_[redacted]"),
        ("/x", b"w=whsec_abc%2Bdef%3D&s=sk_live_123", "/x?w=whsec_[redacted]&s=sk_live_[redacted]"),
        (f"/{KEY}/docs_page", b"", "/mk_test_[redacted]/docs_page"),
        # One request, one line: spaces and control characters are escaped.
        ("/a b\n", b"x=%0a", "/a%20b%0A?x=%0A"),
    ],
)
def test_target_is_redacted(path: str, query: bytes, shown: str) -> None:
    assert target({"path": path, "query_string": query}) == shown


def test_a_percent_encoded_session_id_is_still_redacted() -> None:
    # The path in the ASGI scope is already decoded, the query string is decoded here.
    assert SESSION not in target(
        {"path": "/x", "query_string": f"y={SESSION}".replace("_", "%5F").encode()}
    )
