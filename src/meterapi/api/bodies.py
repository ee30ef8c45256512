"""The base of every JSON request body the API takes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RequestBody(BaseModel):
    """A JSON request body: a field the model does not declare is refused (422
    ``validation_error``), never silently ignored, so a misspelt option cannot look accepted."""

    model_config = ConfigDict(extra="forbid")
