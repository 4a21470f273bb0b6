"""Control process: the JSON HTTP API (health, CDRs, cases)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from softswitch.agency import AgencyServices, add_agency_routes
from softswitch.console import add_console_routes

from storage.errors import NotFound
from storage.models import CallRecord, Case, Recording

if TYPE_CHECKING:
    from softswitch.control import Softswitch

SOFTSWITCH = web.AppKey("softswitch", object)
# Checks a request carries a token that may read cases (set by softswitch/intake_api.py).
ReportsAuth = Callable[[web.Request], object]
REPORTS_AUTH: web.AppKey[ReportsAuth] = web.AppKey("reports_auth")


def _recording(rec: Recording) -> dict[str, Any]:
    return {"kind": rec.kind, "duration_s": round(rec.duration_s, 3), "sha256": rec.sha256,
            "complete": rec.complete}


def _call(call: CallRecord) -> dict[str, Any]:
    return {"sip_call_id": call.sip_call_id, "from": call.from_uri, "to": call.to_uri, "source": call.source,
            "worker_id": call.worker_id, "arrived_at": call.arrived_at, "answered_at": call.answered_at,
            "ended_at": call.ended_at, "disposition": call.disposition, "ivr_path": list(call.ivr_path),
            "agent_id": call.agent_id}


def _case(case: Case) -> dict[str, Any]:
    """A case with IDs masked; roles that may see an ID in full come with the agent console."""
    body: dict[str, Any] = {
        "tracking_code": case.tracking_code, "status": case.status, "created_at": case.created_at,
        "national_id": case.national_id_masked, "id_source": case.id_source, "id_status": case.id_status,
        "on_behalf_of_other": not case.subject_is_caller, "caller": None, "channel": case.channel,
        "agency": case.agency, "category": case.category, "summary": case.summary, "filed_by": case.filed_by,
    }
    if not case.subject_is_caller:
        body["caller"] = {"national_id": case.caller_national_id_masked, "id_source": case.caller_id_source,
                          "id_status": case.caller_id_status}
    return body


def build_app(softswitch: Softswitch) -> web.Application:
    app = web.Application()
    app[SOFTSWITCH] = softswitch
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/calls/{sip_call_id}", get_call)
    app.router.add_get("/api/cases/{tracking_code}", get_case)
    add_console_routes(app, softswitch.desk, timezone=softswitch.config.office_hours.timezone)
    from softswitch.intake_api import add_intake_routes  # it renders cases with this module's views

    add_intake_routes(app, softswitch.store, softswitch.config)
    add_agency_routes(app, AgencyServices(softswitch.store, softswitch.config.agencies, softswitch.synthesizer,
                                          softswitch.config.under_data(Path("answers"))),
                      timezone=softswitch.config.office_hours.timezone)
    return app


def _switch(request: web.Request) -> Softswitch:
    return request.app[SOFTSWITCH]  # type: ignore[return-value]


def _not_found(message: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=json.dumps({"error": message}), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    # A load balancer or a trunk's health check sends no traffic while starting or draining.
    body = await _switch(request).health()
    return web.json_response(body, status=503 if body["status"] in ("starting", "draining") else 200)


async def get_call(request: web.Request) -> web.Response:
    request.app[REPORTS_AUTH](request)
    store = _switch(request).store
    try:
        call = await store.get_call_by_sip_id(request.match_info["sip_call_id"])
    except NotFound:
        raise _not_found("no such call") from None
    case = await store.case_for_call(call.id)
    recordings = await store.recordings_for_call(call.id)
    return web.json_response({
        "call": _call(call),
        "case": _case(case) if case else None,
        "tracking_code": case.tracking_code if case else None,
        "recordings": [_recording(r) for r in recordings],
    })


async def get_case(request: web.Request) -> web.Response:
    request.app[REPORTS_AUTH](request)
    store = _switch(request).store
    try:
        case = await store.get_case(request.match_info["tracking_code"])
    except NotFound:
        raise _not_found("no such case") from None
    recordings = await store.recordings_for_case(case.id)
    body = _case(case)
    body["recordings"] = [_recording(r) for r in recordings]
    body["history"] = [{"at": e.at, "actor": e.actor, "kind": e.kind} for e in await store.case_events(case.id)]
    if case.call_id is not None:
        body["call"] = _call(await store.get_call(case.call_id))
    return web.json_response(body)
