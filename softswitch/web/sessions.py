"""What every page behind a login shares: the session cookie, login and its throttle, CSRF, Persian errors.

Sessions are aiohttp-session cookies encrypted with a key made at start-up
(a restart logs everyone out), SameSite=Strict, HttpOnly, and Secure when the
pages are served over HTTPS. State-changing JSON calls also carry the
session's CSRF token in the ``X-CSRF-Token`` header. One cookie holds one role
(``ROLE_HOMES``): the agents' console and the agency page are two subclasses of
``SessionPages``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jdatetime
import jinja2
from aiohttp import web
from aiohttp_session import Session, get_session, new_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from softswitch.domain.persian import persian_digits
from softswitch.web.responses import SECURITY_HEADERS, json_error

log = logging.getLogger("softswitch.web")

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
# What any login page may answer; each page adds its own.
PAGE_ERRORS = {
    "login_failed": "شناسه یا گذرواژه نادرست است.",
    "login_throttled": "تلاش‌های ناموفق زیاد بود. چند دقیقه دیگر دوباره تلاش کنید.",
    "login_expired": "صفحه ورود منقضی شده بود. دوباره تلاش کنید.",
    "not_logged_in": "نشست شما پایان یافته است. دوباره وارد شوید.",
    "csrf": "درخواست نامعتبر است. صفحه را دوباره بارگذاری کنید.",
    "bad_request": "درخواست نامعتبر است.",
}


def page_error(error: type[web.HTTPError], key: str, errors: Mapping[str, str] = PAGE_ERRORS,
               **init: Any) -> web.HTTPError:
    """The Persian error ``errors[key]`` as JSON, with ``key`` as its code."""
    return json_error(error, errors[key], code=key, **init)


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
            raise page_error(web.HTTPForbidden, "csrf")

    @staticmethod
    async def json_body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise page_error(web.HTTPBadRequest, "bad_request") from None
        if not isinstance(body, dict):
            raise page_error(web.HTTPBadRequest, "bad_request")
        return body

    @staticmethod
    def text_field(body: Mapping[str, Any], name: str, max_chars: int = 200) -> str:
        value = body.get(name)
        if not isinstance(value, str) or len(value) > max_chars:
            raise page_error(web.HTTPBadRequest, "bad_request")
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
            return self.login_form(session, 400, PAGE_ERRORS["login_expired"], login_id)
        now = time.monotonic()
        # Only known ids are logged: people type passwords into the id field too.
        shown = repr(login_id) if self.known(login_id) else "an unknown id"
        if self.throttle.blocked(login_id, now):
            log.warning("%s login throttled for %s", self.role, shown)
            return self.login_form(session, 429, PAGE_ERRORS["login_throttled"], login_id)
        # scrypt takes tens of milliseconds: keep it off the event loop.
        verified = bool(login_id) and await asyncio.to_thread(self.verify, login_id, password)
        if not verified:
            self.throttle.failed(login_id, now)
            log.info("%s login failed for %s", self.role, shown)
            return self.login_form(session, 401, PAGE_ERRORS["login_failed"], login_id)
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
