"""Serving a fixed list of static files: anything not on the list is a 404."""

from __future__ import annotations

from pathlib import Path

from fastapi.responses import FileResponse, Response

from meterapi.errors import NotFound


def serve_listed(
    directory: Path, name: str, *, listed: dict[str, str], cache_control: str, what: str
) -> Response:
    """``directory / name`` with its listed media type; a name not in ``listed`` is refused."""
    media_type = listed.get(name)
    if media_type is None:
        raise NotFound(f"No such {what}.")
    return FileResponse(
        directory / name,
        media_type=media_type,
        headers={"Cache-Control": cache_control, "X-Content-Type-Options": "nosniff"},
    )
