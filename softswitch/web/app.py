"""The control process's HTTP application: health, and the routes of the API, the console and the agency page.

The web side sees the control process only through ``Service``: what it
serves is the store, the config, the agents' desk and the synthesiser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from media.synth import Synthesizer
from softswitch.config import Config
from softswitch.web.agency import AgencyServices, add_agency_routes
from softswitch.web.console import Desk, add_console_routes
from softswitch.web.intake import add_intake_routes
from storage.store import Store


class Service(Protocol):
    """What the HTTP side needs of the control process (softswitch.control.process.Softswitch)."""

    @property
    def config(self) -> Config: ...

    @property
    def store(self) -> Store: ...

    @property
    def desk(self) -> Desk: ...

    @property
    def synthesizer(self) -> Synthesizer: ...

    async def health(self) -> dict[str, Any]: ...


SERVICE = web.AppKey("service", Service)


def build_app(service: Service) -> web.Application:
    app = web.Application()
    app[SERVICE] = service
    app.router.add_get("/api/health", health)
    timezone = service.config.office_hours.timezone
    add_console_routes(app, service.desk, timezone=timezone)
    add_intake_routes(app, service.store, service.config)
    add_agency_routes(app, AgencyServices(service.store, service.config.agencies, service.synthesizer,
                                          service.config.under_data(Path("answers"))),
                      timezone=timezone)
    return app


async def health(request: web.Request) -> web.Response:
    # A load balancer or a trunk's health check sends no traffic while starting or draining.
    body = await request.app[SERVICE].health()
    return web.json_response(body, status=503 if body["status"] in ("starting", "draining") else 200)
