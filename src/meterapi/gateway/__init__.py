"""Gateway mode (CONTRACT §6): meter an API written in anything by standing in front of it.

``Gateway.from_settings`` reads and checks ``METERAPI_GATEWAY_FILE`` (raising
``GatewayFileError`` with the line at fault), ``mount`` adds its routes to the app, and
``start``/``close`` open and close the one pooled HTTP client the process forwards through.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from meterapi.config import Settings
from meterapi.gateway.proxy import Upstream
from meterapi.gateway.routes import mount
from meterapi.gateway.spec import GatewayFileError, GatewaySpec, load

__all__ = ["Gateway", "GatewayFileError", "GatewaySpec"]


@dataclass
class Gateway:
    spec: GatewaySpec
    upstream: Upstream

    @classmethod
    def from_settings(cls, settings: Settings) -> Gateway | None:
        """The gateway the settings ask for, or None when no gateway file is set."""
        if settings.gateway_file is None:
            return None
        spec = load(settings.gateway_file, upstream_override=settings.upstream_url)
        secret = settings.upstream_secret
        key = secret.get_secret_value().encode() if secret is not None else None
        return cls(spec, Upstream(spec, secret=key))

    def mount(self, app: FastAPI) -> None:
        mount(app, self.spec, self.upstream)

    async def start(self) -> None:
        await self.upstream.start()

    async def close(self) -> None:
        await self.upstream.close()
