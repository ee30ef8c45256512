"""``POST /v1/words``: count the words of a text, one unit per word.

Served by meterapi with ``METERAPI_ROUTERS=words_api.api:router``. Every route here is paid:
``PaidCaller`` refuses a missing or invalid key (401) or a lapsed subscription (402) before the
endpoint runs, and ``Usage.charge`` bills the units once the 2xx response is produced.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from meterapi import PaidCaller, Usage


async def served_by(response: Response) -> None:
    """A router-level dependency: it runs on every route of this router, paid or refused."""
    response.headers["X-Served-By"] = "words-api"


router = APIRouter(prefix="/v1", tags=["words"], dependencies=[Depends(served_by)])


class Text(BaseModel):
    text: str = Field(max_length=100_000, description="Any text; each word costs one unit.")


class WordCount(BaseModel):
    words: int
    units_charged: int


@router.post(
    "/words",
    summary="Count the words of a text (1 unit per word)",
    responses={
        401: {"description": "Missing or invalid API key"},
        402: {"description": "The subscription does not allow access"},
    },
)
async def count_words(body: Text, caller: PaidCaller, usage: Usage) -> WordCount:
    words = len(body.text.split())
    usage.charge(words)  # an empty text costs nothing
    return WordCount(words=words, units_charged=words)


@router.post("/words/stream", summary="The words of a text, one per line (1 unit per word)")
async def stream_words(body: Text, caller: PaidCaller, usage: Usage) -> StreamingResponse:
    words = body.text.split()
    usage.charge(len(words))  # charged before the response starts, billed before its first byte

    async def lines() -> AsyncIterator[str]:
        for word in words:
            yield word + "\n"

    return StreamingResponse(lines(), media_type="text/plain")
