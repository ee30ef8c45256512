"""The access log of a real ``meterapi serve``: one line per request, no secret in clear."""

from __future__ import annotations

from pathlib import Path

import httpx

from meterapi.keys import format as key_format
from tests.integration.servers import ServiceProcess


def test_serve_logs_requests_without_keys_or_session_ids(db_url: str, tmp_path: Path) -> None:
    keys = {name: key_format.generate(live=False) for name in ("apiKey", "key", "token")}
    keys["access_token"] = key_format.generate(live=True)
    session_ids = ["cs_test_a1" + "Q" * 50 + "wxyz", "cs_test_b2" + "R" * 50 + "stuv"]
    unnamed = key_format.generate(live=False)  # a key under an innocent-looking name
    service = ServiceProcess(
        {"METERAPI_DATABASE_URL": db_url}, log_path=tmp_path / "serve.log", cli=True
    ).start()
    try:
        with httpx.Client(base_url=service.url, timeout=10) as client:
            statuses = {
                name: client.get("/v1/data", params={name: key}).status_code
                for name, key in keys.items()
            }
            assert statuses["apiKey"] == 400  # refused, and still not logged
            client.get("/v1/data", params={"q": unnamed})
            # The dashboard's return URL from Checkout, and an id in a path.
            client.get("/dashboard", params={"session_id": session_ids[0]})
            client.get(f"/v1/keys/{session_ids[1]}")
            client.get("/healthz", headers={"X-API-Key": unnamed})
    finally:
        assert service.terminate()
    log = (tmp_path / "serve.log").read_text()

    for secret in [*keys.values(), unnamed, *session_ids]:
        assert secret not in log
        assert secret[8:] not in log  # not even without its prefix
    assert '"GET /' not in log  # uvicorn's own access log ('… "GET /path HTTP/1.1" 200') is off
    # One line per request, from our logger, with method, path, status, duration and client.
    access = [line for line in log.splitlines() if "meterapi.access" in line]
    assert len(access) >= 9
    assert any("GET /v1/data?apiKey=[redacted] 400 " in line for line in access)
    for name in ("key", "token", "access_token"):
        assert any(f"GET /v1/data?{name}=[redacted] 401 " in line for line in access)
    assert any("GET /v1/data?q=mk_test_[redacted] 401 " in line for line in access)
    assert any("GET /dashboard?session_id=[redacted] " in line for line in access)
    assert any(f"GET /v1/keys/cs_…{session_ids[1][-4:]} " in line for line in access)
    healthz = next(line for line in access if "GET /healthz " in line)
    assert healthz.split()[-2].endswith("ms") and healthz.split()[-1].startswith("127.0.0.1:")
