"""The HTTP API for other channels (case intake) and for reporting (a call, a case, lists, CSV, OpenAPI)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Collection
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo

import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from softswitch.config import CHANNELS, CONFIG_DIR, ApiToken, Config
from softswitch.domain.cases import CASE_STATUSES, duplicate_window_s
from softswitch.domain.national_id import parse_national_id
from softswitch.domain.persian import jalali_day
from softswitch.domain.text import clean_text
from softswitch.web.responses import json_error
from storage.errors import NotFound
from storage.models import CallRecord, Case, PersonId, Recording
from storage.reports import calls_csv, cases_csv, rating_summaries, ratings_csv
from storage.store import Store

OPENAPI_DOCUMENT = CONFIG_DIR / "openapi.yaml"
MAX_TEXT_CHARS = 10_000
MAX_LIST = 1000
# IDs that came as typed digits (a form, an SMS, a letter keyed in) are "keypad"
# IDs, like keyed ones on the phone; the check digit is their verification.
TYPED_ID = "keypad"


def token_sha256(token: str) -> str:
    """What api_tokens keeps of a bearer token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _national_id(value: str | None) -> str | None:
    if value is None:
        return None
    national_id = parse_national_id(value)
    if national_id is None:
        # Never echo the value: error bodies end up in clients' logs.
        raise PydanticCustomError("national_id", "not a valid national ID (10 digits with a valid check digit)")
    return national_id


def _one_of(value: str, allowed: Collection[str], what: str) -> str:
    if value not in allowed:
        raise PydanticCustomError("unknown", "unknown {what}", {"what": what})
    return value


class CaseSubmission(BaseModel):
    """The body of POST /api/cases; validate with context {"agency": ids, "category": names} as configured."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    channel: str
    subject_national_id: str
    submitter_national_id: str | None = None
    agency: str
    category: str
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)

    _ids = field_validator("subject_national_id", "submitter_national_id")(_national_id)

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        return _one_of(value, CHANNELS, "channel")

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        # Bidi and other control characters never reach the store: they change how a case reads.
        text = clean_text(value).strip()
        if not text:
            raise PydanticCustomError("empty_text", "text holds no readable characters")
        return text

    @field_validator("agency", "category")
    @classmethod
    def _configured(cls, value: str, info: ValidationInfo) -> str:
        assert info.field_name is not None and isinstance(info.context, dict)
        return _one_of(value, info.context[info.field_name], info.field_name)


class SinceFilter(BaseModel):
    """The query of the calls CSV: Unix seconds or ISO 8601; without an offset, in the service's time zone."""

    model_config = ConfigDict(frozen=True)

    since: datetime | None = None


class CaseFilter(SinceFilter):
    """The query of GET /api/cases and of the cases CSV (which takes no limit)."""

    agency: str | None = None
    status: str | None = None
    limit: int = Field(MAX_LIST, ge=1, le=MAX_LIST)

    @field_validator("status")
    @classmethod
    def _status(cls, value: str | None) -> str | None:
        return None if value is None else _one_of(value, CASE_STATUSES, "status")


def _recording(rec: Recording) -> dict[str, Any]:
    return {"kind": rec.kind, "duration_s": round(rec.duration_s, 3), "sha256": rec.sha256,
            "complete": rec.complete}


def _call(call: CallRecord) -> dict[str, Any]:
    return {"sip_call_id": call.sip_call_id, "from": call.from_uri, "to": call.to_uri, "source": call.source,
            "worker_id": call.worker_id, "arrived_at": call.arrived_at, "answered_at": call.answered_at,
            "ended_at": call.ended_at, "disposition": call.disposition, "ivr_path": list(call.ivr_path),
            "agent_id": call.agent_id, "host": call.host}


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


_Filter = TypeVar("_Filter", bound=SinceFilter)
_Model = TypeVar("_Model", bound=BaseModel)
_T = TypeVar("_T")


def _field_errors(exc: ValidationError) -> web.HTTPError:
    # loc and msg only: pydantic's "input" would echo national IDs.
    fields = [{"field": ".".join(str(part) for part in err["loc"]) or "body", "message": err["msg"]}
              for err in exc.errors()]
    return json_error(web.HTTPUnprocessableEntity, "invalid request", fields=fields)


class RatingFilter(BaseModel):
    """The query of the survey results' CSV: grouped by agent, agency or day, over whole days (the hotline's
    dates, YYYY-MM-DD, both included)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    by: Literal["agent", "agency", "day"] = "day"
    since: date | None = None
    until: date | None = None


class IntakeApi:
    """The handlers; tokens are recognised by the SHA-256 kept in ``api_tokens``."""

    def __init__(self, store: Store, config: Config, openapi: dict[str, Any],
                 on_filed: Callable[[str, bool], None]) -> None:
        self.store = store
        self.on_filed = on_filed  # (channel, duplicate), for the metrics
        self.tokens = config.api_tokens
        self.agency_names = {agency.id: agency.name for agency in config.agencies}
        self.agent_names = {account.id: account.name for account in config.agents.accounts}
        self.agencies = frozenset(self.agency_names)
        self.categories = frozenset(config.categories)
        self.window_s = duplicate_window_s(config.cases.duplicate_window_days)
        self.tz = ZoneInfo(config.office_hours.timezone)
        self.openapi_document = openapi

    def authenticate(self, request: web.Request) -> ApiToken:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        digest = token_sha256(presented.strip())
        found = None
        # Every token is compared, in constant time, so timing tells nothing of the stored hashes.
        for token in self.tokens:
            if hmac.compare_digest(token.sha256, digest):
                found = token
        if scheme.lower() != "bearer" or not presented.strip() or found is None:
            raise json_error(web.HTTPUnauthorized, "a valid bearer token is required",
                             headers={"WWW-Authenticate": 'Bearer realm="softswitch-111"'})
        return found

    def reporter(self, request: web.Request) -> ApiToken:
        token = self.authenticate(request)
        if not token.reports:
            raise json_error(web.HTTPForbidden, "this token may not read reports")
        return token

    @staticmethod
    def _validated(request: web.Request, model: type[_Model]) -> _Model:
        try:
            return model.model_validate(dict(request.query))
        except ValidationError as exc:
            raise _field_errors(exc) from None

    def _query(self, request: web.Request, model: type[_Filter]) -> tuple[_Filter, float | None]:
        """The validated query and its ``since`` as Unix seconds."""
        query = self._validated(request, model)
        if isinstance(query, CaseFilter) and query.agency is not None and query.agency not in self.agencies:
            raise json_error(web.HTTPUnprocessableEntity, "invalid request",
                             fields=[{"field": "agency", "message": "unknown agency"}])
        since = query.since
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=self.tz)
        return query, None if since is None else since.timestamp()

    async def submit_case(self, request: web.Request) -> web.Response:
        token = self.authenticate(request)
        if token.channel is None:
            raise json_error(web.HTTPForbidden, "this token may not submit cases")
        try:
            # aiohttp caps the body at client_max_size (1 MiB, 413 beyond) before it is parsed.
            body = await request.json()
        except ValueError:
            raise json_error(web.HTTPBadRequest, "the body must be a JSON object") from None
        except RecursionError:
            # [[[[...]]]] a few thousand deep exhausts the parser's recursion limit: a bad request, not a crash.
            raise json_error(web.HTTPBadRequest, "the body is nested too deeply") from None
        try:
            submission = CaseSubmission.model_validate(
                body, context={"agency": self.agencies, "category": self.categories})
        except ValidationError as exc:
            raise _field_errors(exc) from None
        if submission.channel != token.channel:
            raise json_error(web.HTTPForbidden, f"this token submits for the {token.channel} channel only")
        submitter = submission.submitter_national_id
        result = await self.store.intake(
            PersonId(submission.subject_national_id, TYPED_ID, "verified"),
            submitter=None if submitter is None else PersonId(submitter, TYPED_ID, "verified"),
            channel=submission.channel, agency=submission.agency, category=submission.category,
            summary=submission.text, actor=f"api:{token.name}", window_s=self.window_s)
        self.on_filed(submission.channel, result.duplicate)
        code = result.case.tracking_code
        if result.duplicate:
            return web.json_response({"tracking_code": code, "duplicate": True})
        return web.json_response({"tracking_code": code, "duplicate": False}, status=201,
                                 headers={"Location": f"/api/cases/{code}"})

    async def list_cases(self, request: web.Request) -> web.Response:
        self.reporter(request)
        query, since = self._query(request, CaseFilter)
        cases = await self.store.list_cases(agency=query.agency, status=query.status, since=since,
                                            limit=query.limit)
        return web.json_response([_case(case) for case in cases])

    async def cases_csv(self, request: web.Request) -> web.Response:
        self.reporter(request)
        query, since = self._query(request, CaseFilter)
        cases = await self.store.list_cases(agency=query.agency, status=query.status, since=since, limit=None)
        return _csv_response("cases.csv", cases_csv(cases, agency_names=self.agency_names, tz=self.tz))

    async def calls_csv(self, request: web.Request) -> web.Response:
        self.reporter(request)
        _, since = self._query(request, SinceFilter)
        calls = await self.store.list_calls(since=since)
        codes = await self.store.tracking_codes_by_call(since=since)
        return _csv_response("calls.csv", calls_csv(calls, codes, tz=self.tz))

    async def ratings_csv(self, request: web.Request) -> web.Response:
        self.reporter(request)
        query = self._validated(request, RatingFilter)
        summaries = rating_summaries(await self.store.rating_counts(
            query.by, since_day=query.since.isoformat() if query.since else None,
            until_day=query.until.isoformat() if query.until else None))
        if query.by == "day":
            names = {s.key: jalali_day(date.fromisoformat(s.key)) for s in summaries if s.key is not None}
        else:
            names = self.agent_names if query.by == "agent" else self.agency_names
        return _csv_response(f"ratings-by-{query.by}.csv", ratings_csv(summaries, query.by, names))

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.openapi_document)

    async def get_call(self, request: web.Request) -> web.Response:
        self.reporter(request)
        call = await _found(self.store.get_call_by_sip_id(request.match_info["sip_call_id"]), "call")
        case = await self.store.case_for_call(call.id)
        recordings = await self.store.recordings_for_call(call.id)
        rating = await self.store.rating_for_call(call.id)
        return web.json_response({
            "call": _call(call),
            "case": _case(case) if case else None,
            "tracking_code": case.tracking_code if case else None,
            "recordings": [_recording(r) for r in recordings],
            "rating": None if rating is None else {"score": rating.score, "kind": rating.kind,
                                                   "agent_id": rating.agent_id, "agency": rating.agency},
        })

    async def get_case(self, request: web.Request) -> web.Response:
        self.reporter(request)
        case = await _found(self.store.get_case(request.match_info["tracking_code"]), "case")
        body = _case(case)
        body["recordings"] = [_recording(r) for r in await self.store.recordings_for_case(case.id)]
        body["history"] = [{"at": e.at, "actor": e.actor, "kind": e.kind}
                           for e in await self.store.case_events(case.id)]
        if case.call_id is not None:
            body["call"] = _call(await self.store.get_call(case.call_id))
        return web.json_response(body)


async def _found(lookup: Awaitable[_T], what: str) -> _T:
    """What the store found, or 404 ``no such <what>``."""
    try:
        return await lookup
    except NotFound:
        raise json_error(web.HTTPNotFound, f"no such {what}") from None


def _csv_response(filename: str, text: str) -> web.Response:
    return web.Response(body=text.encode("utf-8"), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def load_openapi(path: Path = OPENAPI_DOCUMENT) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict):
        raise ValueError(f"{path}: not an OpenAPI document")
    return document


def add_intake_routes(app: web.Application, store: Store, config: Config,
                      on_filed: Callable[[str, bool], None]) -> None:
    """POST/GET /api/cases, a call or a case by its id, the CSV reports and /api/openapi.json.
    ``on_filed(channel, duplicate)`` is told of each request that went through the duplicate rule."""
    api = IntakeApi(store, config, load_openapi(), on_filed)
    app.router.add_post("/api/cases", api.submit_case)
    app.router.add_get("/api/cases", api.list_cases)
    app.router.add_get("/api/reports/cases.csv", api.cases_csv)
    app.router.add_get("/api/reports/calls.csv", api.calls_csv)
    app.router.add_get("/api/reports/ratings.csv", api.ratings_csv)
    app.router.add_get("/api/openapi.json", api.openapi)
    app.router.add_get("/api/calls/{sip_call_id}", api.get_call)
    app.router.add_get("/api/cases/{tracking_code}", api.get_case)
