"""What every page behind a login shares: the session cookie, login and its throttle, CSRF, Persian errors.

Sessions are aiohttp-session cookies encrypted with a key made at start-up
(a restart logs everyone out), SameSite=Strict, HttpOnly, and Secure when the
pages are served over HTTPS (``http.tls_cert_file`` or ``http.secure_cookies``).
The cookie names a random session id that must be live in the application's
``SessionRegistry``: a logout ends the user's sessions everywhere (event
streams included), and a saved cookie is worth nothing after it. Login
attempts are throttled per source and per (login id, source)
(``LoginThrottle``). State-changing JSON calls also carry the session's CSRF
token in the ``X-CSRF-Token`` header. One cookie holds one role
(``ROLE_HOMES``): the agents' console and the agency page are two subclasses
of ``SessionPages``.
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
from collections.abc import Callable, Mapping
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
LOGIN_FAILURES_ALLOWED = 5  # per (login id, source) in the window
LOGIN_FAILURES_PER_SOURCE = 30  # per source, at any ids: a whole office may be one address behind NAT
LOGIN_FAILURES_PER_ID = 50  # per login id from all sources; past it only sources that have not failed there
LOGIN_WINDOW_S = 300.0
# JSON bodies of the console and the agency page are a few short fields.
JSON_BODY_MAX_BYTES = 64 * 1024
# What any login page may answer; each page adds its own.
PAGE_ERRORS = {
    "login_failed": "شناسه یا گذرواژه نادرست است.",
    "login_throttled": "تلاش‌های ناموفق زیاد بود. چند دقیقه دیگر دوباره تلاش کنید.",
    "login_expired": "صفحه ورود منقضی شده بود. دوباره تلاش کنید.",
    "not_logged_in": "نشست شما پایان یافته است. دوباره وارد شوید.",
    "csrf": "درخواست نامعتبر است. صفحه را دوباره بارگذاری کنید.",
    "bad_request": "درخواست نامعتبر است.",
    "too_deep": "درخواست نامعتبر است: ساختار آن بیش از حد تودرتو است.",
    "too_large": "درخواست بیش از حد بزرگ است.",
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


class LoginAttempt:
    """One login attempt, counted as a failure from the moment it starts (``LoginThrottle.begin``) until the
    password check says otherwise: concurrent attempts cannot get past the limit while scrypt runs."""

    def __init__(self, throttle: LoginThrottle, keys: tuple[tuple[str, ...], ...], at: float) -> None:
        self._throttle = throttle
        self._keys = keys
        self._at = at

    def succeeded(self) -> None:
        """The right password: this attempt and the earlier failures of this id from this source are forgotten
        (not the source's failures at other ids, which a source holding one account could otherwise reset)."""
        self._throttle._forget(self._keys, self._at)

    def failed(self) -> None:
        """Nothing to do: the attempt was counted as a failure when it began."""


class LoginThrottle:
    """Failed logins counted per source and per (login id, source), so a guesser is stopped without locking the
    rightful user out of a login id from where they have not failed.

    In ``window_s``: a source with ``per_source`` failures (at any ids, unknown ones too) is blocked; a source
    with ``per_id_source`` failures at one id is blocked for that id. Guessing one id from many sources is
    capped by ``per_id``: past it, every source that has already failed at that id is blocked for it, so each
    fresh source gets one guess while a source that has not failed keeps logging in. An attempt counts from
    the moment it starts (``begin``), before the awaited password check. Ids are compared case-insensitively.
    The counts are in memory, per process (a restart or a second host starts afresh: issue 13).
    """

    MAX_TRACKED_KEYS = 20_000

    def __init__(self, per_id_source: int = LOGIN_FAILURES_ALLOWED, window_s: float = LOGIN_WINDOW_S, *,
                 per_source: int = LOGIN_FAILURES_PER_SOURCE, per_id: int = LOGIN_FAILURES_PER_ID) -> None:
        self.per_id_source = per_id_source
        self.per_source = per_source
        self.per_id = per_id
        self.window_s = window_s
        self._failures: dict[tuple[str, ...], deque[float]] = {}

    def _count(self, key: tuple[str, ...], now: float) -> int:
        failures = self._failures.get(key)
        if failures is None:
            return 0
        while failures and now - failures[0] > self.window_s:
            failures.popleft()
        return len(failures)

    def blocked(self, login_id: str, source: str, now: float) -> bool:
        login_id = login_id.casefold()
        pair = self._count(("pair", login_id, source), now)
        return (self._count(("source", source), now) >= self.per_source or pair >= self.per_id_source
                or (pair > 0 and self._count(("id", login_id), now) >= self.per_id))

    def begin(self, login_id: str, source: str, now: float) -> LoginAttempt | None:
        """None if the attempt is refused; else the attempt, already counted as a failure. Synchronous (no
        await between the check and the count), so concurrent attempts see each other."""
        if self.blocked(login_id, source, now):
            return None
        login_id = login_id.casefold()
        keys = (("source", source), ("pair", login_id, source), ("id", login_id))
        if len(self._failures) + len(keys) > self.MAX_TRACKED_KEYS:
            self._prune(now)
        for key in keys:
            # An id's count from all sources is only ever compared with per_id: keep no more than that.
            self._failures.setdefault(key, deque(maxlen=self.per_id if key[0] == "id" else None)).append(now)
        return LoginAttempt(self, keys, now)

    def _forget(self, keys: tuple[tuple[str, ...], ...], at: float) -> None:
        for key in keys:
            failures = self._failures.get(key)
            if failures is None:
                continue
            if key[0] == "pair":
                del self._failures[key]
            else:
                with contextlib.suppress(ValueError):
                    failures.remove(at)

    def _prune(self, now: float) -> None:
        """Bound the memory a spray of made-up ids or sources can take: expired counts go first; if that is
        not enough, the oldest half (a flood of fresh keys then costs the oldest counts, never a lock-out)."""
        self._failures = {key: failures for key, failures in self._failures.items()
                          if failures and now - failures[-1] <= self.window_s}
        if len(self._failures) > self.MAX_TRACKED_KEYS // 2:
            keys = sorted(self._failures, key=lambda key: self._failures[key][-1])
            for key in keys[:len(keys) // 2]:
                del self._failures[key]


# -- server-side sessions --------------------------------------------------------


class SessionRegistry:
    """The live sessions of one application, by role and login id: the cookie only names a random session id,
    and a session id that is not here is not signed in. So a cookie saved before a logout, or older than
    ``max_age_s``, opens nothing even though it still decrypts; a logout ends all of that user's sessions, in
    every browser. In memory, per process: a restart ends every session (as the new cookie key does anyway),
    and two hosts behind one name would not share them (state across hosts is issue 13)."""

    MAX_PER_USER = 20  # a user who never logs out keeps the newest this many

    def __init__(self, max_age_s: float = SESSION_MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self._live: dict[tuple[str, str], dict[str, float]] = {}  # (role key, login id) -> sid -> opened at

    def open(self, role_key: str, login_id: str, now: float) -> str:
        sessions = self._live.setdefault((role_key, login_id), {})
        for sid, opened in list(sessions.items()):
            if now - opened > self.max_age_s:
                del sessions[sid]
        while len(sessions) >= self.MAX_PER_USER:
            del sessions[next(iter(sessions))]  # the oldest: dicts keep insertion order
        sid = secrets.token_urlsafe(32)
        sessions[sid] = now
        return sid

    def live(self, role_key: str, login_id: str, sid: object, now: float) -> bool:
        sessions = self._live.get((role_key, login_id))
        if sessions is None or not isinstance(sid, str):
            return False
        opened = sessions.get(sid)
        if opened is None:
            return False
        if now - opened > self.max_age_s:
            del sessions[sid]
            return False
        return True

    def end_all(self, role_key: str, login_id: str) -> int:
        """End every session of this user; how many there were."""
        return len(self._live.pop((role_key, login_id), {}))


SESSION_REGISTRY = web.AppKey("session_registry", SessionRegistry)


def install_sessions(app: web.Application, *, secure_cookies: bool = False) -> None:
    """The one encrypted session cookie of the console and the agency page; installed once per application."""
    if app.get(SESSIONS_INSTALLED):
        return
    storage = EncryptedCookieStorage(
        os.urandom(32), cookie_name=SESSION_COOKIE, max_age=SESSION_MAX_AGE_S, httponly=True, samesite="Strict",
        secure=secure_cookies, path="/")
    app.middlewares.append(session_middleware(storage))
    app[SESSION_REGISTRY] = SessionRegistry()
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
        """The login id this role keeps in the session, if any and still live. A session that has ended (a
        logout anywhere, max age, a restart) is emptied, whichever role it held, so the cookie is cleared too."""
        session = await get_session(request)
        registry = request.app[SESSION_REGISTRY]
        now = time.monotonic()
        for key in ROLE_HOMES:
            login_id = session.get(key)
            if login_id is not None and not (isinstance(login_id, str)
                                             and registry.live(key, login_id, session.get("sid"), now)):
                session.clear()
                break
        login_id = session.get(self.session_key)
        return (login_id if isinstance(login_id, str) else None), session

    async def live_check(self, request: web.Request) -> Callable[[], bool]:
        """For a response that lasts (an event stream): whether the session it was opened on is still live,
        asked as it goes. It does not touch the session: an already sent response cannot carry a new cookie."""
        session = await get_session(request)
        login_id, sid = session.get(self.session_key), session.get("sid")
        registry = request.app[SESSION_REGISTRY]
        return lambda: isinstance(login_id, str) and registry.live(self.session_key, login_id, sid, time.monotonic())

    def not_signed_in(self, session: Session) -> web.HTTPSeeOther:
        """Where a page sends a visitor who is not logged in as this role: the home page of the role the
        session does hold (live: ``signed_in`` empties an ended one), else this role's login form."""
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
        if request.content_length is not None and request.content_length > JSON_BODY_MAX_BYTES:
            raise page_error(web.HTTPRequestEntityTooLarge, "too_large", max_size=JSON_BODY_MAX_BYTES,
                             actual_size=request.content_length)
        raw = await request.read()  # aiohttp caps it at client_max_size (1 MiB) whatever the header says
        if len(raw) > JSON_BODY_MAX_BYTES:
            raise page_error(web.HTTPRequestEntityTooLarge, "too_large", max_size=JSON_BODY_MAX_BYTES,
                             actual_size=len(raw))
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
            raise page_error(web.HTTPBadRequest, "bad_request") from None
        except RecursionError:
            # [[[[...]]]] a few thousand deep exhausts the parser's recursion limit: the client's fault, not ours.
            raise page_error(web.HTTPBadRequest, "too_deep") from None
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
        source = self.source(request)
        # Only known ids are logged (people type passwords into the id field too); never a password.
        shown = repr(login_id) if self.known(login_id) else "an unknown id"
        # Counted before the awaited password check, in the same step as the check of the limit: concurrent
        # attempts each see the others, so no more than the limit are ever tried.
        attempt = self.throttle.begin(login_id, source, now)
        if attempt is None:
            log.warning("%s login throttled for %s from %s", self.role, shown, source)
            return self.login_form(session, 429, PAGE_ERRORS["login_throttled"], login_id)
        # scrypt takes tens of milliseconds: keep it off the event loop.
        verified = bool(login_id) and await asyncio.to_thread(self.verify, login_id, password)
        if not verified:
            attempt.failed()
            log.info("%s login failed for %s from %s", self.role, shown, source)
            return self.login_form(session, 401, PAGE_ERRORS["login_failed"], login_id)
        attempt.succeeded()
        session = await new_session(request)  # a fresh session: no fixation of a pre-login cookie
        session[self.session_key] = login_id
        session["sid"] = request.app[SESSION_REGISTRY].open(self.session_key, login_id, now)
        session["csrf"] = secrets.token_urlsafe(32)
        log.info("%s login: %s from %s", self.role, login_id, source)
        raise web.HTTPSeeOther(self.landing(login_id))

    @staticmethod
    def source(request: web.Request) -> str:
        """Where a login comes from, for the throttle: the peer address. Behind a reverse proxy that is the
        proxy for everyone (so the per-source limit then counts all users together); X-Forwarded-For is not
        read, as any client can write it."""
        return request.remote or "unknown"

    async def logout(self, request: web.Request) -> web.Response:
        login_id, session = await self.signed_in(request)
        form = await request.post()
        expected = session.get("csrf")
        if login_id is not None and isinstance(expected, str) and hmac.compare_digest(str(form.get("csrf", "")),
                                                                                     expected):
            await self.logged_out(login_id)
            # Every session of this user ends, in every browser: a cookie copied before now opens nothing.
            ended = request.app[SESSION_REGISTRY].end_all(self.session_key, login_id)
            log.info("%s logout: %s (%d sessions ended)", self.role, login_id, ended)
            session.invalidate()
        raise web.HTTPSeeOther(self.login_path)
