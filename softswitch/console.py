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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import jdatetime
import jinja2
from aiohttp import web
from aiohttp_session import Session, get_session, new_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from ivr.acd import Acd
from ivr.national_id import normalize_digits
from ivr.office_hours import jalali_datetime, persian_digits
from softswitch.config import Agency, AgentAccount
from storage.tracking_code import is_tracking_code

log = logging.getLogger("softswitch.console")

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"

SESSION_COOKIE = "softswitch_console"
SESSIONS_INSTALLED = web.AppKey("sessions_installed", bool)
# The session key under which each role keeps who is logged in, and that role's home page. One key
# per role keeps the roles apart on the one cookie: an agent's session opens nothing of the agency
# page, an agency user's session nothing of the console.
ROLE_HOMES = {"agent_id": "/console", "agency_user": "/agency"}
SESSION_MAX_AGE_S = 12 * 3600  # one shift; the cookie cannot be replayed after that
CSRF_HEADER = "X-CSRF-Token"
LOGIN_FAILURES_ALLOWED = 5
LOGIN_WINDOW_S = 300.0
SUPERVISOR_COALESCE_S = 0.25  # a burst of ACD events becomes one snapshot
SUMMARY_MAX_CHARS = 4000
OVERRIDE_REASON_MAX_CHARS = 500
AGENT_FIELDS = ("id", "name", "state", "seconds_in_state", "pause_reason", "pause_requested", "answered_today",
                "registered")

T = TypeVar("T")


@dataclass(frozen=True)
class FiledCase:
    """What filing came to: the case's tracking code; ``duplicate`` when an open case of the same subject,
    agency and category was there already and the call was linked to it instead of opening another."""

    tracking_code: str
    duplicate: bool = False


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

    async def file_case(self, agent_id: str, call_key: str, agency_id: str, category: str, summary: str,
                        override_reason: str | None = None) -> FiledCase:
        """File the call's case under the one duplicate rule: a new case, or the open one it duplicates.
        With ``override_reason`` a new case is opened even so, the reason kept in both cases' histories.
        ValueError (Persian message) on bad input, PermissionError if not this agent's call."""

    async def refer_case(self, agent_id: str, tracking_code: str, agency_id: str) -> str:
        """Refer again a case this agent can see (the current call's, or one of the screen-pop's history).
        PermissionError for any other case, LookupError if there is none, ValueError (Persian message)."""

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
        "manual": "مکث", "no_answer": "زنگ بی‌پاسخ", "not_registered": "تلفن ثبت نشده است",
        "agent_lost": "تماس با تلفن قطع شد",
    },
    "id_status": {
        "verified": "تأییدشده", "unverified": "تأییدنشده", "to_transcribe": "فقط صدا؛ شماره شناخته نشد",
        "none": "اعلام نشده",
    },
    "case_status": {"received": "دریافت‌شده", "received_incomplete": "ناقص دریافت‌شده", "referred": "ارجاع‌شده",
                    "answered": "پاسخ‌داده‌شده", "closed": "بسته‌شده"},
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
        "case_filed_separately": "پرونده جداگانه ثبت شد.",
        "refer_this": "ارجاع", "case_referred": "پرونده {code} به {agency} ارجاع شد.",
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
    "empty_reason": "دلیل ثبت جداگانه را بنویسید.",
    "not_your_case": "این پرونده در میز شما نیست.",
}

def jalali_date_text(ts: float, tz: ZoneInfo) -> str:
    """'شنبه ۷ آذر ۱۴۰۵': the page header's date, with Persian weekday and month names."""
    day = jdatetime.datetime.fromgregorian(datetime=datetime.fromtimestamp(ts, tz), locale="fa_IR")
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


def json_error(error: type[web.HTTPError], key: str, message: str | None = None, **init: Any) -> web.HTTPError:
    """A Persian error as JSON: the ERRORS entry for key, or the message given; ``init`` as the error class needs."""
    body = json.dumps({"error": message or ERRORS[key], "code": key}, ensure_ascii=False)
    return error(text=body, content_type="application/json", **init)


SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "media-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def install_sessions(app: web.Application, *, secure_cookies: bool = False) -> None:
    """The one encrypted session cookie of the console and the agency page; installed once per application."""
    if app.get(SESSIONS_INSTALLED):
        return
    storage = EncryptedCookieStorage(
        os.urandom(32), cookie_name=SESSION_COOKIE, max_age=SESSION_MAX_AGE_S, httponly=True, samesite="Strict",
        secure=secure_cookies, path="/")
    app.middlewares.append(session_middleware(storage))
    app[SESSIONS_INSTALLED] = True


class SessionPages:
    """Pages behind a login on the shared session cookie: templates, the login form and its throttle, CSRF.

    A subclass is one role: it names the session key that holds who is logged in
    (``ROLE_HOMES``), its login page and template, and how a login id is read from
    the form and checked. A login starts a fresh session (no fixation of a
    pre-login cookie), so one browser holds one role at a time.
    """

    session_key = ""
    login_path = ""
    login_template = ""
    role = ""  # as the logs name it

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self.throttle = LoginThrottle()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=jinja2.select_autoescape(["html"]),
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)

    # -- what each role defines ------------------------------------------------------

    def login_id(self, form: Mapping[str, Any]) -> str:
        """Who is logging in, as the form says it (the throttle counts failures per login id)."""
        raise NotImplementedError

    def login_fields(self, login_id: str) -> dict[str, Any]:
        """What the login form shows again after a failure."""
        raise NotImplementedError

    def verify(self, login_id: str, password: str) -> bool:
        """Runs in a thread: scrypt takes tens of milliseconds."""
        raise NotImplementedError

    def known(self, login_id: str) -> bool:
        raise NotImplementedError

    def landing(self, login_id: str) -> str:
        raise NotImplementedError

    async def logged_out(self, login_id: str) -> None:
        """Called when the user logs out, before the session ends."""

    # -- rendering and sessions --------------------------------------------------

    def render(self, name: str, status: int = 200, **context: Any) -> web.Response:
        html = self.templates.get_template(name).render(**context)
        return web.Response(text=html, status=status, content_type="text/html", headers=SECURITY_HEADERS)

    def today(self) -> str:
        return jalali_date_text(time.time(), self.tz)

    async def signed_in(self, request: web.Request) -> tuple[str | None, Session]:
        """The login id this role keeps in the session, if any."""
        session = await get_session(request)
        login_id = session.get(self.session_key)
        return (login_id if isinstance(login_id, str) else None), session

    def not_signed_in(self, session: Session) -> web.HTTPSeeOther:
        """Where a page sends a visitor who is not logged in as this role: the home page of the role the
        session does hold, else this role's login form."""
        for key, home in ROLE_HOMES.items():
            if key != self.session_key and isinstance(session.get(key), str):
                return web.HTTPSeeOther(home)
        return web.HTTPSeeOther(self.login_path)

    @staticmethod
    def check_csrf(request: web.Request, session: Session) -> None:
        """State-changing calls carry the session's CSRF token in a header that a cross-site form cannot set."""
        token = request.headers.get(CSRF_HEADER, "")
        expected = session.get("csrf")
        if not isinstance(expected, str) or not hmac.compare_digest(token, expected):
            raise json_error(web.HTTPForbidden, "csrf")

    @staticmethod
    async def json_body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise json_error(web.HTTPBadRequest, "bad_request") from None
        if not isinstance(body, dict):
            raise json_error(web.HTTPBadRequest, "bad_request")
        return body

    @staticmethod
    def text_field(body: Mapping[str, Any], name: str, max_chars: int = 200) -> str:
        value = body.get(name)
        if not isinstance(value, str) or len(value) > max_chars:
            raise json_error(web.HTTPBadRequest, "bad_request")
        return value.strip()

    # -- login -----------------------------------------------------------------------

    async def login_page(self, request: web.Request) -> web.Response:
        login_id, session = await self.signed_in(request)
        if login_id is not None and self.known(login_id):
            raise web.HTTPSeeOther(self.landing(login_id))
        return self.login_form(session)

    def login_form(self, session: Session, status: int = 200, error: str | None = None,
                   login_id: str = "") -> web.Response:
        token = secrets.token_urlsafe(32)
        session["login_csrf"] = token
        return self.render(self.login_template, status=status, csrf=token, error=error,
                           **self.login_fields(login_id))

    async def login(self, request: web.Request) -> web.Response:
        session = await get_session(request)
        form = await request.post()
        login_id = self.login_id(form)
        password = str(form.get("password", ""))[:256]
        expected = session.get("login_csrf")
        if not isinstance(expected, str) or not hmac.compare_digest(str(form.get("csrf", "")), expected):
            return self.login_form(session, 400, ERRORS["login_expired"], login_id)
        now = time.monotonic()
        # Only known ids are logged: people type passwords into the id field too.
        shown = repr(login_id) if self.known(login_id) else "an unknown id"
        if self.throttle.blocked(login_id, now):
            log.warning("%s login throttled for %s", self.role, shown)
            return self.login_form(session, 429, ERRORS["login_throttled"], login_id)
        # scrypt takes tens of milliseconds: keep it off the event loop.
        verified = bool(login_id) and await asyncio.to_thread(self.verify, login_id, password)
        if not verified:
            self.throttle.failed(login_id, now)
            log.info("%s login failed for %s", self.role, shown)
            return self.login_form(session, 401, ERRORS["login_failed"], login_id)
        self.throttle.succeeded(login_id)
        session = await new_session(request)  # a fresh session: no fixation of a pre-login cookie
        session[self.session_key] = login_id
        session["csrf"] = secrets.token_urlsafe(32)
        log.info("%s login: %s", self.role, login_id)
        raise web.HTTPSeeOther(self.landing(login_id))

    async def logout(self, request: web.Request) -> web.Response:
        login_id, session = await self.signed_in(request)
        form = await request.post()
        expected = session.get("csrf")
        if login_id is not None and isinstance(expected, str) and hmac.compare_digest(str(form.get("csrf", "")),
                                                                                     expected):
            await self.logged_out(login_id)
            log.info("%s logout: %s", self.role, login_id)
            session.invalidate()
        raise web.HTTPSeeOther(self.login_path)


class _Console(SessionPages):
    session_key = "agent_id"
    login_path = "/console/login"
    login_template = "login.html"
    role = "console"

    def __init__(self, desk: Desk, tz: ZoneInfo, heartbeat_s: float) -> None:
        super().__init__(tz)
        self.desk = desk
        self.heartbeat_s = heartbeat_s
        self.streams: set[asyncio.Task[Any]] = set()

    # -- the agent's login ---------------------------------------------------------

    def login_id(self, form: Mapping[str, Any]) -> str:
        return str(form.get("agent_id", "")).strip()[:64]

    def login_fields(self, login_id: str) -> dict[str, Any]:
        return {"agent_id": login_id}

    def verify(self, login_id: str, password: str) -> bool:
        return self.desk.verify_agent(login_id, password)

    def known(self, login_id: str) -> bool:
        return self.desk.agent_account(login_id) is not None

    def landing(self, login_id: str) -> str:
        account = self.desk.agent_account(login_id)
        return "/supervisor" if account is not None and account.supervisor else "/console"

    async def logged_out(self, login_id: str) -> None:
        # An agent who leaves the console should not be rung any more; on a call the ACD refuses.
        with contextlib.suppress(KeyError, ValueError):
            self.desk.acd.logout(login_id)

    async def account(self, request: web.Request) -> tuple[AgentAccount | None, Session]:
        agent_id, session = await self.signed_in(request)
        return (None if agent_id is None else self.desk.agent_account(agent_id)), session

    async def page_account(self, request: web.Request) -> tuple[AgentAccount, Session]:
        account, session = await self.account(request)
        if account is None:
            raise self.not_signed_in(session)
        return account, session

    async def api_account(self, request: web.Request, *, writes: bool) -> AgentAccount:
        account, session = await self.account(request)
        if account is None:
            raise json_error(web.HTTPUnauthorized, "not_logged_in")
        if writes:
            self.check_csrf(request, session)
        return account

    async def supervisor_api(self, request: web.Request) -> AgentAccount:
        account = await self.api_account(request, writes=False)
        if not account.supervisor:
            raise json_error(web.HTTPForbidden, "not_supervisor")
        return account

    # -- views ---------------------------------------------------------------------

    def agent_view(self, agent_id: str) -> dict[str, Any]:
        """The agent's line of the ACD snapshot: its time in state is measured on the ACD's own clock."""
        for agent in self.desk.acd.snapshot()["agents"]:
            if agent["id"] == agent_id:
                return {key: agent.get(key) for key in AGENT_FIELDS}
        return {"id": agent_id, "name": "", "state": "logged_out", "seconds_in_state": 0.0, "pause_reason": None,
                "pause_requested": None, "answered_today": 0, "registered": None}

    def case_view(self, case: Mapping[str, Any]) -> dict[str, Any]:
        created_at = case.get("created_at")
        when = jalali_datetime(created_at, self.tz) if isinstance(created_at, (int, float)) else ""
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
        return {"account": account, "csrf": session.get("csrf", ""), "today": self.today()}

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
                        raise json_error(web.HTTPBadRequest, "pause_reason")
                    acd.pause(account.id, reason)
                case _:
                    raise json_error(web.HTTPNotFound, "bad_request")
        except KeyError:
            raise json_error(web.HTTPNotFound, "unknown_agent") from None
        except ValueError:
            raise json_error(web.HTTPConflict, "transition") from None
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
            raise json_error(web.HTTPBadRequest, "empty_summary")
        override_reason = None
        if body.get("override_reason") is not None:
            override_reason = self.text_field(body, "override_reason", OVERRIDE_REASON_MAX_CHARS)
            if not override_reason:
                raise json_error(web.HTTPBadRequest, "empty_reason")
        filed = await self.desk_result(
            self.desk.file_case(account.id, call_key, agency_id, category, summary, override_reason),
            (web.HTTPNotFound, "bad_request"), desk_messages=True)
        log.info("console: %s filed a case for call %s%s", account.id, call_key,
                 " (a duplicate)" if filed.duplicate else " (separately, with a reason)" if override_reason else "")
        return web.json_response({"tracking_code": filed.tracking_code, "duplicate": filed.duplicate})

    @classmethod
    def tracking_code_field(cls, body: Mapping[str, Any]) -> str:
        """A tracking code as typed: Persian digits, spaces and dashes allowed; its check digit verified."""
        code = normalize_digits(cls.text_field(body, "tracking_code", 40)).replace(" ", "").replace("-", "")
        if not is_tracking_code(code):
            raise json_error(web.HTTPBadRequest, "bad_tracking_code")
        return code

    async def attach_case(self, request: web.Request) -> web.Response:
        account = await self.api_account(request, writes=True)
        body = await self.json_body(request)
        call_key = self.text_field(body, "call_key")
        code = self.tracking_code_field(body)
        return await self.tracking_code_answer(self.desk.attach_case(account.id, call_key, code),
                                               (web.HTTPNotFound, "no_such_case"))

    async def refer_case(self, request: web.Request) -> web.Response:
        account = await self.api_account(request, writes=True)
        body = await self.json_body(request)
        code = self.tracking_code_field(body)
        agency_id = self.text_field(body, "agency_id")
        response = await self.tracking_code_answer(self.desk.refer_case(account.id, code, agency_id),
                                                   (web.HTTPNotFound, "no_such_case"), desk_messages=True,
                                                   forbidden="not_your_case")
        log.info("console: %s referred case %s to %s", account.id, code, agency_id)
        return response

    async def give_tracking_code(self, request: web.Request) -> web.Response:
        account = await self.api_account(request, writes=True)
        call_key = self.text_field(await self.json_body(request), "call_key")
        return await self.tracking_code_answer(self.desk.give_tracking_code(account.id, call_key),
                                               (web.HTTPConflict, "no_case_yet"))

    @classmethod
    async def tracking_code_answer(cls, desk_call: Awaitable[str], not_found: tuple[type[web.HTTPError], str], *,
                                   desk_messages: bool = False, forbidden: str = "not_your_call") -> web.Response:
        """The desk's tracking code as JSON."""
        code = await cls.desk_result(desk_call, not_found, desk_messages=desk_messages, forbidden=forbidden)
        return web.json_response({"tracking_code": code})

    @staticmethod
    async def desk_result(desk_call: Awaitable[T], not_found: tuple[type[web.HTTPError], str], *,
                          desk_messages: bool = False, forbidden: str = "not_your_call") -> T:
        """What the desk answers; its refusals as Persian errors (its own ValueError messages only
        where the Desk promises they are fit for the agent)."""
        try:
            return await desk_call
        except PermissionError:
            raise json_error(web.HTTPForbidden, forbidden) from None
        except LookupError:
            raise json_error(*not_found) from None
        except ValueError as exc:
            raise json_error(web.HTTPBadRequest, "bad_request", str(exc) if desk_messages else None) from None

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
    install_sessions(app, secure_cookies=secure_cookies)
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
    router.add_post("/console/api/cases/refer", console.refer_case)
    router.add_post("/console/api/tracking-code", console.give_tracking_code)
    router.add_static("/console/static", STATIC_DIR)
    router.add_get("/supervisor", console.supervisor_page)
    router.add_get("/supervisor/api/snapshot", console.supervisor_snapshot)
    router.add_get("/supervisor/events", console.supervisor_events)
