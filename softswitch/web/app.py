"""The control process's HTTP application: health, and the routes of the API, the console and the agency page.

The web side sees the control process only through ``Service``: what it
serves is the store, the config, the agents' desk and the synthesiser.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from media.synth import Synthesizer
from softswitch.config import Config
from softswitch.web.agency import AgencyServices, add_agency_routes
from softswitch.web.console import Desk, add_console_routes
from softswitch.web.intake import add_intake_routes
from softswitch.web.relay import HostRelay
from softswitch.web.sessions import install_sessions
from softswitch.web.responses import json_error
from storage.errors import StorageFull, StoreDamaged, StoreUnavailable
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

    async def metrics_text(self) -> bytes:
        """Prometheus text format."""

    def intake_filed(self, channel: str, duplicate: bool) -> None:
        """A request went through the duplicate rule (counted in the metrics)."""


SERVICE = web.AppKey("service", Service)
RETRY_AFTER_S = 30
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(service: Service) -> web.Application:
    app = web.Application(middlewares=[store_unavailable])
    app[SERVICE] = service
    app.router.add_get("/api/health", health)
    app.router.add_get("/metrics", metrics)
    timezone = service.config.office_hours.timezone
    http = service.config.http
    # Secure cookies when served over HTTPS, here or by a TLS-terminating proxy.
    install_sessions(app, service.store, secure_cookies=http.cookies_secure, idle_s=http.session_idle_s,
                     lifetime_s=http.session_lifetime_s)
    relay = None
    if service.config.database_url is not None:
        # Several hosts: an agent's console relays the requests for their call to the call's host.
        relay = HostRelay(service.store.console_url, ca_file=service.config.cluster.peer_ca_file)

        async def close_relay(_: web.Application) -> None:
            await relay.close()
        app.on_cleanup.append(close_relay)
    add_console_routes(app, service.desk, timezone=timezone, relay=relay)
    add_intake_routes(app, service.store, service.config, service.intake_filed)
    add_agency_routes(app, AgencyServices(service.store, service.config.agencies, service.synthesizer,
                                          service.config.under_data(Path("answers")),
                                          service.config.sip.service_number),
                      timezone=timezone)
    return app


@web.middleware
async def store_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A full disk, a damaged store or a database server out of reach is the service's trouble, not a bug:
    503 with Retry-After, so a client tries again later or elsewhere, and nothing half-written is claimed as done."""
    try:
        return await handler(request)
    except (StorageFull, StoreDamaged, StoreUnavailable) as exc:
        raise json_error(web.HTTPServiceUnavailable, f"the case store cannot take this now: {type(exc).__name__}",
                         headers={"Retry-After": str(RETRY_AFTER_S)}) from exc


async def metrics(request: web.Request) -> web.Response:
    # For Prometheus on the operator's network: no personal data in any label (softswitch/control/metrics.py).
    return web.Response(body=await request.app[SERVICE].metrics_text(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def health(request: web.Request) -> web.Response:
    # A load balancer or a trunk's health check sends no traffic while starting, draining, or
    # refusing calls for a problem it names (a full disk, a failing store).
    body = await request.app[SERVICE].health()
    refusing = body["status"] in ("starting", "draining") or bool(body.get("problems"))
    return web.json_response(body, status=503 if refusing else 200)
