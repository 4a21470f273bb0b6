"""Control process: the web console for agents and the supervisor view (aiohttp, Jinja2, Server-Sent Events).

The console reaches the rest of the control process only through a ``Desk``.
Everything the agent reads is Persian, right to left, with Jalali dates and
Persian digits; the national ID is shown in full only on the agent's own
screen-pop (never on the supervisor view, never in a log).

Sessions are aiohttp-session cookies encrypted with a key made at start-up
(a restart logs everyone out), SameSite=Strict, HttpOnly, and Secure when the
console is served over HTTPS. State-changing JSON calls also carry the
session's CSRF token in the ``X-CSRF-Token`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import jdatetime
import jinja2
from aiohttp import web
from aiohttp_session import Session, get_session, new_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from ivr.acd import Acd
from ivr.national_id import normalize_digits
from softswitch.config import Agency, AgentAccount
from storage.tracking_code import is_tracking_code

log = logging.getLogger("softswitch.console")

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"

SESSION_COOKIE = "softswitch_console"
SESSION_MAX_AGE_S = 12 * 3600  # one shift; the cookie cannot be replayed after that
CSRF_HEADER = "X-CSRF-Token"
LOGIN_FAILURES_ALLOWED = 5
LOGIN_WINDOW_S = 300.0
SUPERVISOR_COALESCE_S = 0.25  # a burst of ACD events becomes one snapshot
SUMMARY_MAX_CHARS = 4000
AGENT_FIELDS = ("id", "name", "state", "seconds_in_state", "pause_reason", "pause_requested", "answered_today")


class Desk(Protocol):
    """What the console needs from the control process; the control process implements it."""

    @property
    def agencies(self) -> Sequence[Agency]: ...

    @property
    def categories(self) -> Sequence[str]: ...

    @property
    def acd(self) -> Acd: ...

    def verify_agent(self, agent_id: str, password: str) -> bool: ...

    def agent_account(self, agent_id: str) -> AgentAccount | None: ...

    def current_offer(self, agent_id: str) -> dict[str, Any] | None:
        """The screen-pop of this agent's ringing or connected call, so a reload shows it again."""

    def subscribe(self, agent_id: str) -> asyncio.Queue[dict[str, Any]]:
        """Events for this agent: offer, connected, call_ended, case_filed, tracking_code_read, agent."""

    def unsubscribe(self, agent_id: str, q: asyncio.Queue[dict[str, Any]]) -> None: ...

    async def file_case(self, agent_id: str, call_key: str, agency_id: str, category: str, summary: str) -> str:
        """The new case's tracking code; ValueError (Persian message) on bad input, PermissionError if not
        this agent's call."""

    async def attach_case(self, agent_id: str, call_key: str, tracking_code: str) -> str:
        """Attach the call to an existing case; LookupError if there is no such case."""

    async def give_tracking_code(self, agent_id: str, call_key: str) -> str:
        """The IVR reads the code to the caller; LookupError if no case is filed or attached yet."""

    async def recording_path(self, agent_id: str, recording_id: int) -> Path | None:
        """A recording of this agent's current call, else None."""


# -- what the agent reads ------------------------------------------------------

LABELS: dict[str, Any] = {
    "states": {
        "logged_out": "خارج از صف", "ready": "آماده", "ringing": "در حال زنگ", "on_call": "در مکالمه",
        "wrap_up": "جمع‌بندی تماس", "paused": "مکث",
    },
    "pause_reasons": {
        "break": "استراحت", "prayer": "نماز", "training": "آموزش", "admin": "کار اداری",
        "manual": "مکث", "no_answer": "زنگ بی‌پاسخ",
    },
    "id_status": {
        "verified": "تأییدشده", "unverified": "تأییدنشده", "to_transcribe": "فقط صدا؛ شماره شناخته نشد",
        "none": "اعلام نشده",
    },
    "case_status": {"received": "دریافت‌شده", "received_incomplete": "ناقص دریافت‌شده"},
    "call_state": {"ringing": "در حال زنگ", "connected": "در مکالمه", "ended": "پایان یافته"},
    "ready_button": {"paused": "پایان استراحت", "wrap_up": "آماده", "ringing": "لغو مکث", "on_call": "لغو مکث"},
    "pause_button": {"ringing": "مکث پس از تماس", "on_call": "مکث پس از تماس"},
    "messages": {
        "connected": "متصل", "disconnected": "قطع ارتباط؛ تلاش دوباره…", "case_filed": "پرونده ثبت شد.",
        "case_attached": "تماس به پرونده پیوست شد.", "code_given": "کد پیگیری برای تماس‌گیرنده خوانده می‌شود.",
        "code_read": "کد پیگیری برای تماس‌گیرنده خوانده شد.", "pause_requested": "مکث پس از پایان این تماس",
        "network": "ارتباط با سرور برقرار نشد.", "no_history": "سابقه‌ای ثبت نشده است.",
        "attempt": "تلاش", "attach_this": "پیوست به این پرونده", "answered": "پاسخ‌داده",
        "service_level_within": "پاسخ تا {n} ثانیه", "per_hour": "تماس‌های امروز به تفکیک ساعت",
    },
    "queue_ringing": "در حال زنگ برای",
}
PAUSE_CHOICES = ("break", "prayer", "training", "admin")

ERRORS = {
    "login_failed": "شناسه یا گذرواژه نادرست است.",
    "login_throttled": "تلاش‌های ناموفق زیاد بود. چند دقیقه دیگر دوباره تلاش کنید.",
    "login_expired": "صفحه ورود منقضی شده بود. دوباره تلاش کنید.",
    "not_logged_in": "نشست شما پایان یافته است. دوباره وارد شوید.",
    "csrf": "درخواست نامعتبر است. صفحه را دوباره بارگذاری کنید.",
    "bad_request": "درخواست نامعتبر است.",
    "not_supervisor": "این صفحه فقط برای سرپرستان است.",
    "unknown_agent": "این کارشناس در سامانه توزیع تماس تعریف نشده است.",
    "transition": "این تغییر وضعیت اکنون ممکن نیست.",
    "pause_reason": "علت مکث نامعتبر است.",
    "not_your_call": "این تماس به شما مربوط نیست.",
    "no_such_case": "پرونده‌ای با این کد پیگیری پیدا نشد.",
    "bad_tracking_code": "کد پیگیری نادرست است؛ ۹ رقم آن را دوباره بررسی کنید.",
    "no_case_yet": "هنوز پرونده‌ای برای این تماس ثبت یا پیوست نشده است.",
    "empty_summary": "خلاصه درخواست را بنویسید.",
}

_PERSIAN_DIGITS = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")


def persian_digits(text: object) -> str:
    return str(text).translate(_PERSIAN_DIGITS)


def _jalali(ts: float, tz: ZoneInfo) -> jdatetime.datetime:
    return jdatetime.datetime.fromgregorian(datetime=datetime.fromtimestamp(ts, tz), locale="fa_IR")


def jalali_datetime_text(ts: float, tz: ZoneInfo) -> str:
    """'۱۴۰۵/۰۹/۰۷ ۰۹:۰۲': a Jalali date and local time, as on a Persian receipt."""
    return persian_digits(_jalali(ts, tz).strftime("%Y/%m/%d %H:%M"))


def jalali_date_text(ts: float, tz: ZoneInfo) -> str:
    """'شنبه ۷ آذر ۱۴۰۵'."""
    day = _jalali(ts, tz)
    return persian_digits(f"{day.strftime('%A')} {day.day} {day.strftime('%B')} {day.year}")


# -- login throttling ------------------------------------------------------------


class LoginThrottle:
    """At most ``allowed`` failed logins per agent id in ``window_s``; the same for ids that do not exist."""

    MAX_TRACKED_IDS = 10_000

    def __init__(self, allowed: int = LOGIN_FAILURES_ALLOWED, window_s: float = LOGIN_WINDOW_S) -> None:
        self.allowed = allowed
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, agent_id: str, now: float) -> bool:
        failures = self._failures.get(agent_id.casefold())
        if failures is None:
            return False
        while failures and now - failures[0] > self.window_s:
            failures.popleft()
        return len(failures) >= self.allowed

    def failed(self, agent_id: str, now: float) -> None:
        if len(self._failures) >= self.MAX_TRACKED_IDS:
            self._failures = {k: v for k, v in self._failures.items() if v and now - v[-1] <= self.window_s}
        self._failures.setdefault(agent_id.casefold(), deque(maxlen=self.allowed)).append(now)

    def succeeded(self, agent_id: str) -> None:
        self._failures.pop(agent_id.casefold(), None)


# -- helpers -----------------------------------------------------------------------


def _json_error(error: type[web.HTTPError], key: str, message: str | None = None) -> web.HTTPError:
    body = json.dumps({"error": message or ERRORS[key], "code": key}, ensure_ascii=False)
    return error(text=body, content_type="application/json")


SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "media-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class _Console:
    def __init__(self, desk: Desk, tz: ZoneInfo, heartbeat_s: float) -> None:
        self.desk = desk
        self.tz = tz
        self.heartbeat_s = heartbeat_s
        self.throttle = LoginThrottle()
        self.streams: set[asyncio.Task[Any]] = set()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=jinja2.select_autoescape(["html"]),
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)

    # -- rendering and sessions --------------------------------------------------

    def render(self, name: str, status: int = 200, **context: Any) -> web.Response:
        html = self.templates.get_template(name).render(**context)
        return web.Response(text=html, status=status, content_type="text/html", headers=SECURITY_HEADERS)

    async def account(self, request: web.Request) -> tuple[AgentAccount | None, Session]:
        session = await get_session(request)
        agent_id = session.get("agent_id")
        if not isinstance(agent_id, str):
            return None, session
        return self.desk.agent_account(agent_id), session

    async def page_account(self, request: web.Request) -> tuple[AgentAccount, Session]:
        account, session = await self.account(request)
        if account is None:
            raise web.HTTPSeeOther("/console/login")
        return account, session

    async def api_account(self, request: web.Request, *, writes: bool) -> AgentAccount:
        account, session = await self.account(request)
        if account is None:
            raise _json_error(web.HTTPUnauthorized, "not_logged_in")
        if writes:
            token = request.headers.get(CSRF_HEADER, "")
            expected = session.get("csrf")
            if not isinstance(expected, str) or not hmac.compare_digest(token, expected):
                raise _json_error(web.HTTPForbidden, "csrf")
        return account

    async def supervisor_api(self, request: web.Request) -> AgentAccount:
        account = await self.api_account(request, writes=False)
        if not account.supervisor:
            raise _json_error(web.HTTPForbidden, "not_supervisor")
        return account

    @staticmethod
    async def json_body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _json_error(web.HTTPBadRequest, "bad_request") from None
        if not isinstance(body, dict):
            raise _json_error(web.HTTPBadRequest, "bad_request")
        return body

    @staticmethod
    def text_field(body: Mapping[str, Any], name: str, max_chars: int = 200) -> str:
        value = body.get(name)
        if not isinstance(value, str) or len(value) > max_chars:
            raise _json_error(web.HTTPBadRequest, "bad_request")
        return value.strip()

    # -- views ---------------------------------------------------------------------

    def agent_view(self, agent_id: str) -> dict[str, Any]:
        """The agent's line of the ACD snapshot: its time in state is measured on the ACD's own clock."""
        for agent in self.desk.acd.snapshot()["agents"]:
            if agent["id"] == agent_id:
                return {key: agent.get(key) for key in AGENT_FIELDS}
        return {"id": agent_id, "name": "", "state": "logged_out", "seconds_in_state": 0.0, "pause_reason": None,
                "pause_requested": None, "answered_today": 0}

    def case_view(self, case: Mapping[str, Any]) -> dict[str, Any]:
        created_at = case.get("created_at")
        when = jalali_datetime_text(created_at, self.tz) if isinstance(created_at, (int, float)) else ""
        return {**case, "created_at_text": when}

    def offer_view(self, pop: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if pop is None:
            return None
        view = {key: value for key, value in pop.items() if key != "type"}
        for key in ("history", "subject_history"):
            view[key] = [self.case_view(case) for case in pop.get(key) or ()]
        return view

    def agent_event_view(self, agent_id: str, event: Mapping[str, Any]) -> dict[str, Any]:
        match event.get("type"):
            case "offer":
                return {"type": "offer", "offer": self.offer_view(event)}
            case "agent":
                return {"type": "agent", "agent": self.agent_view(agent_id)}
            case _:
                return dict(event)

    def snapshot_view(self) -> dict[str, Any]:
        """The ACD's snapshot (caller numbers already masked, no national IDs) and the local hour for the chart."""
        snapshot = self.desk.acd.snapshot()
        wall = snapshot.get("wall")
        local = datetime.fromtimestamp(wall if isinstance(wall, (int, float)) else time.time(), self.tz)
        return {**snapshot, "local_hour": local.hour}

    def page_context(self, account: AgentAccount, session: Session) -> dict[str, Any]:
        return {"account": account, "csrf": session.get("csrf", ""), "today": jalali_date_text(time.time(), self.tz)}

    # -- login -----------------------------------------------------------------------

    async def login_page(self, request: web.Request) -> web.Response:
        account, session = await self.account(request)
        if account is not None:
            raise web.HTTPSeeOther(self.landing(account))
        return self.login_form(session)

    def login_form(self, session: Session, status: int = 200, error: str | None = None,
                   agent_id: str = "") -> web.Response:
        token = secrets.token_urlsafe(32)
        session["login_csrf"] = token
        return self.render("login.html", status=status, csrf=token, error=error, agent_id=agent_id)

    @staticmethod
    def landing(account: AgentAccount) -> str:
        return "/supervisor" if account.supervisor else "/console"

    async def login(self, request: web.Request) -> web.Response:
        session = await get_session(request)
        form = await request.post()
        agent_id = str(form.get("agent_id", "")).strip()[:64]
        password = str(form.get("password", ""))[:256]
        expected = session.get("login_csrf")
        if not isinstance(expected, str) or not hmac.compare_digest(str(form.get("csrf", "")), expected):
            return self.login_form(session, 400, ERRORS["login_expired"], agent_id)
        now = time.monotonic()
        if self.throttle.blocked(agent_id, now):
            log.warning("console login throttled for %s",
                        repr(agent_id) if self.desk.agent_account(agent_id) else "an unknown id")
            return self.login_form(session, 429, ERRORS["login_throttled"], agent_id)
        # scrypt takes tens of milliseconds: keep it off the event loop.
        verified = bool(agent_id) and await asyncio.to_thread(self.desk.verify_agent, agent_id, password)
        account = self.desk.agent_account(agent_id) if verified else None
        if account is None:
            self.throttle.failed(agent_id, now)
            # Only known ids are logged: people type passwords into the id field too.
            known = self.desk.agent_account(agent_id) is not None
            log.info("console login failed for %s", repr(agent_id) if known else "an unknown id")
            return self.login_form(session, 401, ERRORS["login_failed"], agent_id)
        self.throttle.succeeded(agent_id)
        session = await new_session(request)  # a fresh session: no fixation of a pre-login cookie
        session["agent_id"] = account.id
        session["csrf"] = secrets.token_urlsafe(32)
        log.info("console login: %s", account.id)
        raise web.HTTPSeeOther(self.landing(account))

    async def logout(self, request: web.Request) -> web.Response:
        account, session = await self.account(request)
        form = await request.post()
        expected = session.get("csrf")
        if account is not None and isinstance(expected, str) and hmac.compare_digest(str(form.get("csrf", "")),
                                                                                    expected):
            # An agent who leaves the console should not be rung any more; on a call the ACD refuses.
            with contextlib.suppress(KeyError, ValueError):
                self.desk.acd.logout(account.id)
            log.info("console logout: %s", account.id)
            session.invalidate()
        raise web.HTTPSeeOther("/console/login")

    # -- the agent's page ------------------------------------------------------------

    async def agent_page(self, request: web.Request) -> web.Response:
        account, session = await self.page_account(request)
        data = {"agent": self.agent_view(account.id), "offer": self.offer_view(self.desk.current_offer(account.id)),
                "labels": LABELS}
        return self.render("agent.html", **self.page_context(account, session), data=data,
                           agencies=self.desk.agencies, categories=self.desk.categories,
                           pause_choices=[(reason, LABELS["pause_reasons"][reason]) for reason in PAUSE_CHOICES])

    async def agent_events(self, request: web.Request) -> web.StreamResponse:
        account = await self.api_account(request, writes=False)
        response = await self.open_stream(request)
        events = self.desk.subscribe(account.id)
        try:
            # Subscribed first, so nothing between this state and the next event is lost.
            await self.send(response, {"type": "state", "agent": self.agent_view(account.id),
                                       "offer": self.offer_view(self.desk.current_offer(account.id))})
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), self.heartbeat_s)
                except TimeoutError:
                    await response.write(b": heartbeat\n\n")
                    continue
                await self.send(response, self.agent_event_view(account.id, event))
        except ConnectionResetError:
            log.debug("console events: %s disconnected", account.id)
        finally:
            self.desk.unsubscribe(account.id, events)
            self.forget_stream()
        return response

    async def agent_action(self, request: web.Request) -> web.Response:
        account = await self.api_account(request, writes=True)
        body = await self.json_body(request)
        acd = self.desk.acd
        action = request.match_info["action"]
        try:
            match action:
                case "login":
                    acd.login(account.id)
                case "logout":
                    acd.logout(account.id)
                case "ready":
                    acd.set_ready(account.id)
                case "pause":
                    reason = body.get("reason", "break")
                    if reason not in PAUSE_CHOICES:
                        raise _json_error(web.HTTPBadRequest, "pause_reason")
                    acd.pause(account.id, reason)
                case _:
                    raise _json_error(web.HTTPNotFound, "bad_request")
        except KeyError:
            raise _json_error(web.HTTPNotFound, "unknown_agent") from None
        except ValueError:
            raise _json_error(web.HTTPConflict, "transition") from None
        log.info("console: %s %s", account.id, action)
        return web.json_response({"agent": self.agent_view(account.id)})

    async def file_case(self, request: web.Request) -> web.Response:
        account = await self.api_account(request, writes=True)
        body = await self.json_body(request)
        call_key = self.text_field(body, "call_key")
        agency_id = self.text_field(body, "agency_id")
        category = self.text_field(body, "category")
        summary = self.text_field(body, "summary", SUMMARY_MAX_CHARS)
        if not summary:
            raise _json_error(web.HTTPBadRequest, "empty_summary")
        response = await self.tracking_code_answer(
            self.desk.file_case(account.id, call_key, agency_id, category, summary),
            (web.HTTPNotFound, "bad_request"), desk_messages=True)
        log.info("console: %s filed a case for call %s", account.id, call_key)
        return response

    async def attach_case(self, request: web.Request) -> web.Response:
        account = await self.api_account(request, writes=True)
        body = await self.json_body(request)
        call_key = self.text_field(body, "call_key")
        code = normalize_digits(self.text_field(body, "tracking_code", 40)).replace(" ", "").replace("-", "")
        if not is_tracking_code(code):
            raise _json_error(web.HTTPBadRequest, "bad_tracking_code")
        return await self.tracking_code_answer(self.desk.attach_case(account.id, call_key, code),
                                               (web.HTTPNotFound, "no_such_case"))

    async def give_tracking_code(self, request: web.Request) -> web.Response:
        account = await self.api_account(request, writes=True)
        call_key = self.text_field(await self.json_body(request), "call_key")
        return await self.tracking_code_answer(self.desk.give_tracking_code(account.id, call_key),
                                               (web.HTTPConflict, "no_case_yet"))

    @staticmethod
    async def tracking_code_answer(desk_call: Awaitable[str], not_found: tuple[type[web.HTTPError], str], *,
                                   desk_messages: bool = False) -> web.Response:
        """The desk's tracking code as JSON; its refusals as Persian errors (its own ValueError
        messages only where the Desk promises they are fit for the agent)."""
        try:
            code = await desk_call
        except PermissionError:
            raise _json_error(web.HTTPForbidden, "not_your_call") from None
        except LookupError:
            raise _json_error(*not_found) from None
        except ValueError as exc:
            raise _json_error(web.HTTPBadRequest, "bad_request", str(exc) if desk_messages else None) from None
        return web.json_response({"tracking_code": code})

    async def recording(self, request: web.Request) -> web.StreamResponse:
        account = await self.api_account(request, writes=False)
        path = await self.desk.recording_path(account.id, int(request.match_info["recording_id"]))
        if path is None or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    # -- the supervisor's page -------------------------------------------------------

    async def supervisor_page(self, request: web.Request) -> web.Response:
        account, session = await self.page_account(request)
        context = self.page_context(account, session)
        if not account.supervisor:
            return self.render("message.html", status=403, **context, title="دسترسی ممنوع",
                               message=ERRORS["not_supervisor"])
        data = {"snapshot": self.snapshot_view(), "labels": LABELS}
        return self.render("supervisor.html", **context, data=data)

    async def supervisor_snapshot(self, request: web.Request) -> web.Response:
        await self.supervisor_api(request)
        return web.json_response(self.snapshot_view(), dumps=lambda v: json.dumps(v, ensure_ascii=False))

    async def supervisor_events(self, request: web.Request) -> web.StreamResponse:
        await self.supervisor_api(request)
        acd = self.desk.acd
        response = await self.open_stream(request)
        events = acd.subscribe()
        try:
            while True:
                await self.send(response, {"type": "snapshot", "snapshot": self.snapshot_view()})
                # Every event, or the heartbeat, brings a fresh snapshot; a burst brings one.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(events.get(), self.heartbeat_s)
                    await asyncio.sleep(SUPERVISOR_COALESCE_S)
                while not events.empty():
                    events.get_nowait()
        except ConnectionResetError:
            log.debug("supervisor events: client disconnected")
        finally:
            acd.unsubscribe(events)
            self.forget_stream()
        return response

    # -- Server-Sent Events ------------------------------------------------------------

    async def open_stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        task = asyncio.current_task()
        if task is not None:
            self.streams.add(task)
        return response

    def forget_stream(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.streams.discard(task)

    @staticmethod
    async def send(response: web.StreamResponse, message: Mapping[str, Any]) -> None:
        data = json.dumps(message, ensure_ascii=False, default=str)  # one line: newlines are escaped
        await response.write(f"data: {data}\n\n".encode())

    async def close_streams(self, app: web.Application) -> None:
        """On shutdown: event streams never end by themselves, so end them."""
        for task in list(self.streams):
            task.cancel()


def add_console_routes(app: web.Application, desk: Desk, *, secure_cookies: bool = False,
                       timezone: str = "Asia/Tehran", heartbeat_s: float = 15.0) -> None:
    """Serve the agents' console under /console and the supervisor view under /supervisor."""
    storage = EncryptedCookieStorage(
        os.urandom(32), cookie_name=SESSION_COOKIE, max_age=SESSION_MAX_AGE_S, httponly=True, samesite="Strict",
        secure=secure_cookies, path="/")
    app.middlewares.append(session_middleware(storage))
    console = _Console(desk, ZoneInfo(timezone), heartbeat_s)
    app.on_shutdown.append(console.close_streams)
    router = app.router
    router.add_get("/console/login", console.login_page)
    router.add_post("/console/login", console.login)
    router.add_post("/console/logout", console.logout)
    router.add_get("/console", console.agent_page)
    router.add_get("/console/events", console.agent_events)
    router.add_get(r"/console/recordings/{recording_id:\d{1,18}}", console.recording)
    router.add_post("/console/api/agent/{action}", console.agent_action)
    router.add_post("/console/api/cases", console.file_case)
    router.add_post("/console/api/cases/attach", console.attach_case)
    router.add_post("/console/api/tracking-code", console.give_tracking_code)
    router.add_static("/console/static", STATIC_DIR)
    router.add_get("/supervisor", console.supervisor_page)
    router.add_get("/supervisor/api/snapshot", console.supervisor_snapshot)
    router.add_get("/supervisor/events", console.supervisor_events)
