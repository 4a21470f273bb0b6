"""The agencies' page, where an agency's users answer the cases referred to it (aiohttp, Jinja2).

An agency user logs in on the console's session cookie under a role of its own
(``softswitch.web.sessions.SessionPages``), so an agency user cannot open the console
and an agent cannot open this page. A user sees only the cases of their own
agency (any other tracking code is 404), with the subject's national ID masked,
their history and the caller's recordings; writes an answer (synthesised to
speech at once, for the IVR's follow-up) or uploads a recorded one; and moves
the status forward. Every change goes through the store, so it lands in the
case's history as ``agency:<agency id>/<user id>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from aiohttp import BodyPartReader, web

from media.synth import (MAX_INPUT_CHANNELS, MAX_INPUT_RATE, MIN_INPUT_RATE, AudioTooLong, AudioUnsupported,
                         SynthesisError, Synthesizer, convert_to_telephone_wav)
from softswitch.config import Agency, AgencyUser
from softswitch.domain.cases import AGENCY_STATUSES, STATUS_LABELS, STATUS_ORDER
from softswitch.domain.persian import jalali_datetime, persian_digits
from softswitch.domain.sms import ANSWER_READY, sms_text
from softswitch.domain.text import clean_text
from softswitch.domain.tracking_code import is_tracking_code
from softswitch.web.credentials import verify_password
from softswitch.web.responses import SECURITY_HEADERS
from softswitch.web.sessions import PAGE_ERRORS, STATIC_DIR, SessionPages, page_error
from storage.errors import NotFound
from storage.models import Case, CaseEvent, Recording
from storage.store import Store
from storage.web_sessions import WebSession

log = logging.getLogger("softswitch.agency")

ANSWER_TEXT_MAX_CHARS = 4000
UPLOAD_MAX_BYTES = 20 * 1024 * 1024
ANSWER_MAX_S = 600.0  # a recorded answer is played whole to the caller on follow-up
CONVERT_TIMEOUT_S = 60.0
LIST_LIMIT = 1000
# The caller's own words and the conversation with the agent. The spoken-ID attempts are
# left out: they say the national ID in full, and an agency sees it only masked.
LISTENABLE_KINDS = ("message", "conversation")
# Cases only move forward; an agency may set the last two steps.


class AgencyDeps(Protocol):
    """What the agency page needs from the control process."""

    @property
    def store(self) -> Store: ...

    @property
    def agencies(self) -> Sequence[Agency]: ...

    @property
    def synthesizer(self) -> Synthesizer: ...

    @property
    def answers_dir(self) -> Path:
        """Where answers' audio is kept (under data_dir, e.g. var/answers), one folder per case."""

    @property
    def service_number(self) -> str:
        """The hotline's number, as the answer-ready SMS names it."""


@dataclass(frozen=True)
class AgencyServices:
    """A plain AgencyDeps."""

    store: Store
    agencies: Sequence[Agency]
    synthesizer: Synthesizer
    answers_dir: Path
    service_number: str = "111"


# -- what the agency user reads ------------------------------------------------------

STATUS_ACTIONS = {"answered": "اعلام پاسخ‌داده‌شده", "closed": "بستن پرونده"}
CHANNEL_LABELS = {"phone": "تلفن ۱۱۱", "sms": "پیامک", "letter": "نامه", "web": "وب‌گاه"}
EVENT_LABELS = {
    "created": "ثبت درخواست", "filed": "تکمیل پرونده", "contact": "درخواست دوباره", "referred": "ارجاع",
    "status": "تغییر وضعیت", "answered": "ثبت پاسخ", "duplicate_override": "ثبت جداگانه درخواست مشابه",
    "tracking_code_read": "اعلام کد پیگیری",
}
RECORDING_LABELS = {"message": "پیام تماس‌گیرنده", "conversation": "مکالمه با کارشناس"}
ID_STATUS_LABELS = {"verified": "تأییدشده", "unverified": "تأییدنشده", "to_transcribe": "فقط صدا", "none": "اعلام نشده"}

AGENCY_ERRORS = {
    **PAGE_ERRORS,
    "no_such_case": "پرونده‌ای با این کد پیگیری در کارتابل شما نیست.",
    "case_closed": "این پرونده بسته شده است.",
    "empty_answer": "متن پاسخ را بنویسید.",
    "answer_too_long": f"متن پاسخ حداکثر {persian_digits(ANSWER_TEXT_MAX_CHARS)} نویسه است.",
    "no_audio": "فایل صوتی پاسخ را انتخاب کنید.",
    "upload_too_large": f"فایل صوتی حداکثر {persian_digits(UPLOAD_MAX_BYTES // (1024 * 1024))} مگابایت است.",
    "audio_too_long": f"پاسخ صوتی حداکثر {persian_digits(int(ANSWER_MAX_S // 60))} دقیقه است.",
    "bad_audio": "این فایل صوتی خوانده نشد. فایلی با قالب WAV، FLAC یا OGG بفرستید.",
    "audio_format": (f"فایل صوتی باید نرخ نمونه‌برداری {persian_digits(MIN_INPUT_RATE // 1000)} تا "
                     f"{persian_digits(MAX_INPUT_RATE // 1000)} کیلوهرتز و حداکثر "
                     f"{persian_digits(MAX_INPUT_CHANNELS)} کانال داشته باشد."),
    "synthesis_failed": "تبدیل متن به گفتار انجام نشد. دوباره تلاش کنید.",
    "bad_status": "این وضعیت مجاز نیست.",
    "status_backward": "وضعیت پرونده فقط رو به جلو تغییر می‌کند.",
    "no_answer_yet": "پیش از اعلام پاسخ‌داده‌شده، پاسخ را ثبت کنید.",
}
MESSAGES = {
    "answer_saved": "پاسخ ثبت شد.", "status_saved": "وضعیت پرونده تغییر کرد.", "sending": "در حال ارسال…",
    "network": "ارتباط با سرور برقرار نشد.", "not_logged_in": PAGE_ERRORS["not_logged_in"],
}


# -- the page ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _User:
    agency: Agency
    user: AgencyUser

    @property
    def actor(self) -> str:
        return f"agency:{self.agency.id}/{self.user.id}"


class _AgencyPages(SessionPages):
    session_key = "agency_user"
    login_path = "/agency/login"
    login_template = "agency_login.html"
    role = "agency"

    def __init__(self, deps: AgencyDeps, tz: ZoneInfo) -> None:
        super().__init__(tz)
        self.deps = deps

    # -- login: the agency is chosen on the form, so user ids need only be unique within an agency

    def login_id(self, form: Mapping[str, Any]) -> str:
        agency_id = str(form.get("agency_id", "")).strip()[:64]
        user_id = str(form.get("user_id", "")).strip()[:64]
        return f"{agency_id}/{user_id}" if agency_id and user_id else ""

    def login_fields(self, login_id: str) -> dict[str, Any]:
        agency_id, _, user_id = login_id.partition("/")
        return {"agencies": [a for a in self.deps.agencies if a.users], "agency_id": agency_id, "user_id": user_id}

    def find(self, login_id: str) -> _User | None:
        agency_id, _, user_id = login_id.partition("/")
        for agency in self.deps.agencies:
            if agency.id == agency_id:
                for user in agency.users:
                    if user.id == user_id:
                        return _User(agency, user)
        return None

    def verify(self, login_id: str, password: str) -> bool:
        found = self.find(login_id)
        return found is not None and verify_password(password, found.user.password)

    def known(self, login_id: str) -> bool:
        return self.find(login_id) is not None

    def landing(self, login_id: str) -> str:
        return "/agency"

    # -- who is asking ---------------------------------------------------------------

    async def page_user(self, request: web.Request) -> tuple[_User, WebSession]:
        login_id, session = await self.signed_in(request)
        found = None if login_id is None else self.find(login_id)
        if found is None or session is None:
            raise self.not_signed_in(session)
        return found, session

    async def api_user(self, request: web.Request) -> _User:
        """The user behind a state-changing call, which carries the session's CSRF token like the console's."""
        login_id, session = await self.signed_in(request)
        found = None if login_id is None else self.find(login_id)
        if found is None or session is None:
            raise page_error(web.HTTPUnauthorized, "not_logged_in")
        self.check_csrf(request, session)
        return found

    async def own_case(self, user: _User, tracking_code: str, *, page: WebSession | None = None) -> Case:
        """The case if it is referred to this user's agency; else 404, the same as for no case at all
        (a Persian page when ``page`` holds the session of a page request, else JSON)."""
        case: Case | None = None
        if is_tracking_code(tracking_code):
            with contextlib.suppress(NotFound):
                case = await self.deps.store.get_case(tracking_code)
        if case is None or case.agency != user.agency.id:
            if page is not None:
                html = self.templates.get_template("agency_message.html").render(
                    **self.page_context(user, page), title="پرونده پیدا نشد", message=AGENCY_ERRORS["no_such_case"])
                raise web.HTTPNotFound(text=html, content_type="text/html", headers=SECURITY_HEADERS)
            raise page_error(web.HTTPNotFound, "no_such_case", AGENCY_ERRORS)
        return case

    # -- views -----------------------------------------------------------------------

    def when(self, ts: float | None) -> str:
        return "" if ts is None else jalali_datetime(ts, self.tz)

    def agency_name(self, agency_id: object) -> str:
        for agency in self.deps.agencies:
            if agency.id == agency_id:
                return agency.name
        return str(agency_id or "—")

    def actor_text(self, actor: str) -> str:
        kind, _, who = actor.partition(":")
        match kind:
            case "ivr":
                return "سامانه تلفنی ۱۱۱"
            case "system":
                return "سامانه"
            case "agent":
                return f"کارشناس {persian_digits(who)}"
            case "api":
                return f"درگاه {who}"
            case "agency":
                found = self.find(who)
                if found is not None:
                    return f"{found.user.name} ({found.agency.name})"
                return self.agency_name(who.partition("/")[0])
        return actor

    def event_text(self, event: CaseEvent) -> str:
        """What happened, in a line; national IDs appear only masked in the history."""
        d = event.detail
        match event.kind:
            case "created":
                text = f"از راه {CHANNEL_LABELS.get(str(d.get('channel', 'phone')), d.get('channel'))}"
                return text + (f"، ارجاع به {self.agency_name(d['agency'])}" if d.get("agency") else "")
            case "filed":
                return f"{self.agency_name(d.get('agency'))}، {d.get('category') or '—'}"
            case "contact":
                return f"از راه {CHANNEL_LABELS.get(str(d.get('channel', 'phone')), d.get('channel'))}"
            case "referred":
                source = f"از {self.agency_name(d['from'])} " if d.get("from") else ""
                return f"{source}به {self.agency_name(d.get('to'))}"
            case "status" | "answered" if "to" in d:
                answer = ""
                if event.kind == "answered":
                    answer = "پاسخ نوشتاری، خوانده با گفتار ماشینی" if d.get("text") else "پاسخ صوتی"
                    answer += "؛ "
                return answer + (f"از «{STATUS_LABELS.get(str(d.get('from')), d.get('from'))}» "
                                 f"به «{STATUS_LABELS.get(str(d['to']), d['to'])}»")
            case "duplicate_override":
                other = d.get("of") or d.get("case") or ""
                relation = "مشابه پرونده" if d.get("of") else "پرونده جداگانه"
                return f"{relation} {persian_digits(other)}؛ دلیل: {d.get('reason') or '—'}"
        return ""

    def case_row(self, case: Case) -> dict[str, Any]:
        return {
            "tracking_code": case.tracking_code, "tracking_code_text": persian_digits(case.tracking_code),
            "created_at_text": self.when(case.created_at), "category": case.category or "—",
            "summary": case.summary or "", "status": case.status,
            "status_text": STATUS_LABELS.get(case.status, case.status),
            # The agency sees the subject's national ID masked, never in full.
            "national_id_masked": persian_digits(case.national_id_masked or "—"),
        }

    def page_context(self, user: _User, session: WebSession) -> dict[str, Any]:
        return {"account": user, "csrf": session.csrf, "today": self.today(), "messages": MESSAGES}

    # -- pages -------------------------------------------------------------------------

    async def cases_page(self, request: web.Request) -> web.Response:
        user, session = await self.page_user(request)
        wanted = request.query.get("status", "")
        status = wanted if wanted in STATUS_LABELS else None
        cases = await self.deps.store.list_cases(agency=user.agency.id, limit=LIST_LIMIT)
        counts = {key: sum(1 for c in cases if c.status == key) for key in STATUS_LABELS}
        shown = [self.case_row(c) for c in cases if status is None or c.status == status]
        filters = [{"status": "", "label": "همه", "count": persian_digits(len(cases)), "current": status is None}]
        filters += [{"status": key, "label": label, "count": persian_digits(counts[key]), "current": key == status}
                    for key, label in STATUS_LABELS.items()]
        return self.render("agency.html", **self.page_context(user, session), cases=shown, filters=filters)

    async def case_page(self, request: web.Request) -> web.Response:
        user, session = await self.page_user(request)
        case = await self.own_case(user, request.match_info["tracking_code"], page=session)
        store = self.deps.store
        events = await store.case_events(case.id)
        recordings = [r for r in await store.recordings_for_case(case.id) if r.kind in LISTENABLE_KINDS]
        history = [{"at_text": self.when(e.at), "actor_text": self.actor_text(e.actor),
                    "kind": e.kind, "kind_text": EVENT_LABELS.get(e.kind, e.kind), "detail_text": self.event_text(e)}
                   for e in events]
        details = {
            **self.case_row(case),
            "channel_text": CHANNEL_LABELS.get(case.channel, case.channel),
            "agency_name": self.agency_name(case.agency),
            "id_status_text": ID_STATUS_LABELS.get(case.id_status, case.id_status),
            "caller_id_masked": None if case.subject_is_caller else persian_digits(case.caller_national_id_masked or "—"),
            "answer_text": case.answer_text, "has_answer_audio": bool(case.answer_audio),
            "answered_at_text": self.when(case.answered_at),
            "answered_by_text": self.actor_text(case.answered_by) if case.answered_by else "",
        }
        order = STATUS_ORDER.get(case.status, 0)
        actions = [{"status": s, "label": STATUS_ACTIONS[s],
                    "enabled": STATUS_ORDER[s] > order and (s != "answered" or _has_answer(case))}
                   for s in AGENCY_STATUSES]
        return self.render("agency_case.html", **self.page_context(user, session), case=details, history=history,
                           recordings=[self.recording_view(r) for r in recordings], actions=actions,
                           closed=case.status == "closed", text_max=ANSWER_TEXT_MAX_CHARS,
                           audio_max_minutes=persian_digits(int(ANSWER_MAX_S // 60)))

    def recording_view(self, recording: Recording) -> dict[str, Any]:
        return {"id": recording.id, "label": RECORDING_LABELS.get(recording.kind, recording.kind),
                "duration_text": persian_digits(f"{int(recording.duration_s) // 60}:{int(recording.duration_s) % 60:02d}"),
                "complete": recording.complete}

    async def recording(self, request: web.Request) -> web.StreamResponse:
        user, _ = await self.page_user(request)
        case = await self.own_case(user, request.match_info["tracking_code"])
        try:
            recording = await self.deps.store.get_recording(int(request.match_info["recording_id"]))
        except NotFound:
            raise web.HTTPNotFound() from None
        if recording.case_id != case.id or recording.kind not in LISTENABLE_KINDS:
            raise web.HTTPNotFound()
        return _audio_file(Path(recording.path))

    async def answer_audio(self, request: web.Request) -> web.StreamResponse:
        user, _ = await self.page_user(request)
        case = await self.own_case(user, request.match_info["tracking_code"])
        if not case.answer_audio:
            raise web.HTTPNotFound()
        return _audio_file(Path(case.answer_audio))

    # -- changes -----------------------------------------------------------------------

    async def post_answer(self, request: web.Request) -> web.Response:
        user = await self.api_user(request)
        case = await self.own_case(user, request.match_info["tracking_code"])
        if case.status == "closed":
            raise page_error(web.HTTPConflict, "case_closed", AGENCY_ERRORS)
        folder = self.deps.answers_dir / case.tracking_code
        folder.mkdir(parents=True, exist_ok=True)
        # The time in the name keeps every answer's audio: a new answer never overwrites an earlier one.
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{secrets.token_hex(3)}"
        upload = folder / f".upload-{stamp}"  # no extension: sox goes by the content, not a name the user chose
        try:
            mode, text = await self.read_answer_form(request, upload)
            if mode == "text":
                if not text:
                    raise page_error(web.HTTPBadRequest, "empty_answer", AGENCY_ERRORS)
                out = folder / f"{stamp}-text.wav"
                try:
                    await asyncio.to_thread(self.deps.synthesizer.synthesize, text, out)
                except (SynthesisError, ValueError, OSError) as exc:
                    log.error("agency: synthesis of the answer to %s failed: %s", case.tracking_code, exc)
                    raise page_error(web.HTTPBadGateway, "synthesis_failed", AGENCY_ERRORS) from None
                answer_text: str | None = text
            else:
                if not upload.exists() or upload.stat().st_size == 0:
                    raise page_error(web.HTTPBadRequest, "no_audio", AGENCY_ERRORS)
                out = folder / f"{stamp}-recorded.wav"
                try:
                    await asyncio.to_thread(convert_to_telephone_wav, upload, out, max_s=ANSWER_MAX_S,
                                            timeout_s=CONVERT_TIMEOUT_S)
                except AudioTooLong:
                    raise page_error(web.HTTPBadRequest, "audio_too_long", AGENCY_ERRORS) from None
                except AudioUnsupported as exc:
                    log.info("agency: an uploaded answer to %s was refused: %s", case.tracking_code, exc)
                    raise page_error(web.HTTPBadRequest, "audio_format", AGENCY_ERRORS) from None
                except SynthesisError as exc:
                    log.info("agency: an uploaded answer to %s was refused: %s", case.tracking_code, exc)
                    raise page_error(web.HTTPBadRequest, "bad_audio", AGENCY_ERRORS) from None
                answer_text = None
        finally:
            upload.unlink(missing_ok=True)
        digest = await asyncio.to_thread(_sha256, out)
        case = await self.deps.store.set_answer(case.id, user.actor, text=answer_text, audio_path=str(out),
                                                audio_sha256=digest, also=self.answer_ready)
        log.info("agency: %s answered %s (%s)", user.actor, case.tracking_code, mode)
        return web.json_response({"status": case.status, "message": MESSAGES["answer_saved"]})

    async def answer_ready(self, store: Store, case: Case) -> None:
        """With the answer: "your answer is ready" by SMS, if the case's caller asked for its code by SMS."""
        if await store.sms.queue_answer_ready(case.id, sms_text(ANSWER_READY, case.tracking_code,
                                                                self.deps.service_number)):
            log.info("agency: the answer-ready SMS of case %d is queued", case.id)

    async def read_answer_form(self, request: web.Request, upload: Path) -> tuple[str, str]:
        """(mode, text) of the multipart form; an audio file is streamed to ``upload``, bounded in size."""
        mode, text = "", ""
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            raise page_error(web.HTTPBadRequest, "bad_request", AGENCY_ERRORS) from None
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise page_error(web.HTTPBadRequest, "bad_request", AGENCY_ERRORS)
            match part.name:
                case "mode":
                    mode = (await _read_text(part, 16)).strip()
                case "text":
                    raw = await _read_text(part, ANSWER_TEXT_MAX_CHARS * 4 + 64)
                    # Kept and read back to the caller: no bidi or other control characters.
                    text = clean_text(raw).strip()
                    if len(text) > ANSWER_TEXT_MAX_CHARS:
                        raise page_error(web.HTTPBadRequest, "answer_too_long", AGENCY_ERRORS)
                case "audio":
                    await _save_upload(part, upload)
                case _:
                    await part.release()
        if mode not in ("text", "audio"):
            raise page_error(web.HTTPBadRequest, "bad_request", AGENCY_ERRORS)
        return mode, text

    async def post_status(self, request: web.Request) -> web.Response:
        user = await self.api_user(request)
        case = await self.own_case(user, request.match_info["tracking_code"])
        status = self.text_field(await self.json_body(request), "status", 32)
        if status not in AGENCY_STATUSES:
            raise page_error(web.HTTPBadRequest, "bad_status", AGENCY_ERRORS)
        if STATUS_ORDER[status] <= STATUS_ORDER.get(case.status, 0):
            raise page_error(web.HTTPConflict, "status_backward", AGENCY_ERRORS)
        if status == "answered" and not _has_answer(case):
            raise page_error(web.HTTPConflict, "no_answer_yet", AGENCY_ERRORS)
        case = await self.deps.store.set_case_status(case.id, status, user.actor)
        log.info("agency: %s set %s to %s", user.actor, case.tracking_code, status)
        return web.json_response({"status": case.status, "message": MESSAGES["status_saved"]})


def _has_answer(case: Case) -> bool:
    return bool(case.answer_text or case.answer_audio)


def _audio_file(path: Path) -> web.StreamResponse:
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                           "Content-Type": "audio/wav"})


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


async def _read_text(part: BodyPartReader, max_bytes: int) -> str:
    data = bytearray()
    while chunk := await part.read_chunk():
        data += chunk
        if len(data) > max_bytes:
            raise page_error(web.HTTPBadRequest, "answer_too_long", AGENCY_ERRORS)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise page_error(web.HTTPBadRequest, "bad_request", AGENCY_ERRORS) from None


async def _save_upload(part: BodyPartReader, path: Path) -> None:
    size = 0
    with open(path, "wb") as out:
        while chunk := await part.read_chunk(256 * 1024):
            size += len(chunk)
            if size > UPLOAD_MAX_BYTES:
                raise page_error(web.HTTPRequestEntityTooLarge, "upload_too_large", AGENCY_ERRORS,
                                 max_size=UPLOAD_MAX_BYTES, actual_size=size)
            out.write(chunk)


def add_agency_routes(app: web.Application, deps: AgencyDeps, *, timezone: str = "Asia/Tehran") -> None:
    """Serve the agencies' page under /agency, on the session cookie the console uses (``install_sessions``
    first)."""
    pages = _AgencyPages(deps, ZoneInfo(timezone))
    router = app.router
    code = r"{tracking_code:[0-9]{1,20}}"
    router.add_get("/agency/login", pages.login_page)
    router.add_post("/agency/login", pages.login)
    router.add_post("/agency/logout", pages.logout)
    router.add_get("/agency", pages.cases_page)
    router.add_get(f"/agency/cases/{code}", pages.case_page)
    router.add_get(f"/agency/cases/{code}/recordings/{{recording_id:[0-9]{{1,18}}}}", pages.recording)
    router.add_get(f"/agency/cases/{code}/answer.wav", pages.answer_audio)
    router.add_post(f"/agency/api/cases/{code}/answer", pages.post_answer)
    router.add_post(f"/agency/api/cases/{code}/status", pages.post_status)
    router.add_static("/agency/static", STATIC_DIR)
