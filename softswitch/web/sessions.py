"""What every page behind a login shares: the session cookie, login and its throttle, CSRF, Persian errors.

Sessions live in the store (``storage.web_sessions``), so a session opened on
one host works on every other and across restarts: the cookie holds only a
random token (SameSite=Strict, HttpOnly, Secure when the pages are served over
HTTPS: ``http.tls_cert_file`` or ``http.secure_cookies``), the store its hash,
the user, the role and the session's CSRF secret. A session ends after
``http.session_idle_s`` without a request and ``http.session_lifetime_s``
after its login; a logout ends all of that user's sessions on every host, and
their open event streams at their next event or heartbeat. Login attempts are
throttled per source and per (login id, source) (``LoginThrottle``), counted in
the store too. State-changing JSON calls carry the session's CSRF token in the
``X-CSRF-Token`` header; the login form's own token is checked against a
cookie of its own. One cookie holds one role (``ROLE_HOMES``): the agents'
console and the agency page are two subclasses of ``SessionPages``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jdatetime
import jinja2
from aiohttp import web

from softswitch.domain.persian import persian_digits
from softswitch.web.responses import SECURITY_HEADERS, json_error
from storage.counters import WindowCounters
from storage.store import Store
from storage.web_sessions import WebSession, WebSessions

log = logging.getLogger("softswitch.web")

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"

SESSION_COOKIE = "softswitch_console"
LOGIN_COOKIE = "softswitch_login"  # the login form's token, before there is a session
LOGIN_FORM_MAX_AGE_S = 3600.0
# The role each session holds, and that role's home page: an agent's session opens nothing of the agency
# page, an agency user's session nothing of the console.
ROLE_HOMES = {"agent_id": "/console", "agency_user": "/agency"}
SESSION_IDLE_S = 8 * 3600.0
SESSION_LIFETIME_S = 12 * 3600.0  # one shift; the cookie cannot be replayed after that
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
    password check says otherwise: concurrent attempts, on any host, cannot get past the limit while scrypt runs."""

    def __init__(self, throttle: LoginThrottle, pair_key: str, counted: tuple[int, ...]) -> None:
        self._throttle = throttle
        self._pair_key = pair_key
        self._counted = counted

    async def succeeded(self) -> None:
        """The right password: this attempt and the earlier failures of this id from this source are forgotten
        (not the source's failures at other ids, which a source holding one account could otherwise reset)."""
        await self._throttle.counters.forget(self._counted)
        await self._throttle.counters.clear(self._pair_key)


class LoginThrottle:
    """Failed logins counted per source and per (login id, source), so a guesser is stopped without locking the
    rightful user out of a login id from where they have not failed.

    In ``window_s``: a source with ``per_source`` failures (at any ids, unknown ones too) is blocked; a source
    with ``per_id_source`` failures at one id is blocked for that id. Guessing one id from many sources is
    capped by ``per_id``: past it, every source that has already failed at that id is blocked for it, so each
    fresh source gets one guess while a source that has not failed keeps logging in. An attempt counts from
    the moment it starts (``begin``), before the awaited password check. Ids are compared case-insensitively.
    The counts are in the store (``storage.counters``), shared by every host and kept across restarts;
    ``scope`` keeps the console's apart from the agency page's.
    """

    def __init__(self, counters: WindowCounters, scope: str, per_id_source: int = LOGIN_FAILURES_ALLOWED,
                 window_s: float = LOGIN_WINDOW_S, *, per_source: int = LOGIN_FAILURES_PER_SOURCE,
                 per_id: int = LOGIN_FAILURES_PER_ID) -> None:
        self.counters = counters
        self.scope = scope
        self.per_id_source = per_id_source
        self.per_source = per_source
        self.per_id = per_id
        self.window_s = window_s

    def _keys(self, login_id: str, source: str) -> tuple[str, str, str]:
        """(the source's, the pair's, the id's) counter keys."""
        login_id = login_id.casefold()
        return (f"login {self.scope} source {source}", f"login {self.scope} pair {login_id}\0{source}",
                f"login {self.scope} id {login_id}")

    def _refused(self, keys: tuple[str, str, str], counts: Mapping[str, int]) -> bool:
        by_source, pair, by_id = (counts.get(key, 0) for key in keys)
        return by_source >= self.per_source or pair >= self.per_id_source or (pair > 0 and by_id >= self.per_id)

    async def blocked(self, login_id: str, source: str, now: float) -> bool:
        keys = self._keys(login_id, source)
        return self._refused(keys, await self.counters.counts(keys, now))

    async def begin(self, login_id: str, source: str, now: float) -> LoginAttempt | None:
        """None if the attempt is refused; else the attempt, already counted as a failure. The check and the
        count are one step in the store, so concurrent attempts on every host see each other."""
        keys = self._keys(login_id, source)
        counted = await self.counters.attempt(keys, now=now, window_s=self.window_s,
                                              refuse=lambda counts: self._refused(keys, counts))
        return None if counted is None else LoginAttempt(self, keys[1], counted)


# -- server-side sessions --------------------------------------------------------


@dataclass(frozen=True)
class SessionState:
    """Where the sessions and the login counts are (the store), and how long a session lasts."""

    sessions: WebSessions
    counters: WindowCounters
    idle_s: float = SESSION_IDLE_S
    lifetime_s: float = SESSION_LIFETIME_S
    secure_cookies: bool = False

    def set_cookie(self, response: web.StreamResponse, name: str, value: str, max_age_s: float) -> None:
        response.set_cookie(name, value, max_age=int(max_age_s), httponly=True, samesite="Strict",
                            secure=self.secure_cookies, path="/")


SESSION_STATE = web.AppKey("session_state", SessionState)
# Set on a request whose cookie named a session that has ended: the answer deletes the cookie.
_ENDED = web.RequestKey("session_ended", bool)


@dataclass(frozen=True)
class _Lookup:
    session: WebSession | None


_FOUND = web.RequestKey("session", _Lookup)


def install_sessions(app: web.Application, store: Store, *, secure_cookies: bool = False,
                     idle_s: float = SESSION_IDLE_S, lifetime_s: float = SESSION_LIFETIME_S) -> None:
    """The sessions of the console and the agency page, in ``store``; install once, before their routes."""
    if SESSION_STATE in app:
        raise RuntimeError("sessions are installed already")
    app[SESSION_STATE] = SessionState(store.sessions, store.counters, idle_s, lifetime_s, secure_cookies)
    app.middlewares.append(_drop_ended_cookie)


@web.middleware
async def _drop_ended_cookie(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                             ) -> web.StreamResponse:
    """A cookie whose session has ended (a logout anywhere, idle, lifetime) is deleted by the answer."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if request.get(_ENDED) and not exc.prepared:
            exc.del_cookie(SESSION_COOKIE, path="/")
        raise
    if request.get(_ENDED) and not response.prepared:
        response.del_cookie(SESSION_COOKIE, path="/")
    return response


def session_state(request: web.Request) -> SessionState:
    try:
        return request.app[SESSION_STATE]
    except KeyError:
        raise RuntimeError("install_sessions(app, store) must come before the console's or agency's routes") from None


async def current_session(request: web.Request) -> WebSession | None:
    """The live session the request's cookie names, read once per request (one indexed read)."""
    if _FOUND in request:
        return request[_FOUND].session
    token = request.cookies.get(SESSION_COOKIE)
    session = None
    if token:
        state = session_state(request)
        session = await state.sessions.find(token, now=time.time(), idle_s=state.idle_s)
        if session is None:
            request[_ENDED] = True
    request[_FOUND] = _Lookup(session)
    return session


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

    def throttle(self, request: web.Request) -> LoginThrottle:
        """This role's login throttle, on the store's counts."""
        return LoginThrottle(session_state(request).counters, self.session_key)

    async def signed_in(self, request: web.Request) -> tuple[str | None, WebSession | None]:
        """The login id of this role's live session, if the cookie names one; and the live session, whatever
        its role. A cookie whose session has ended (a logout anywhere, idle, lifetime) is deleted."""
        session = await current_session(request)
        return (session.login_id if session is not None and session.role == self.session_key else None), session

    async def live_check(self, request: web.Request) -> Callable[[], Awaitable[bool]]:
        """For a response that lasts (an event stream): whether the session it was opened on is still live, asked
        of the store as it goes, so a logout on any host ends the stream at its next event or heartbeat."""
        token = request.cookies.get(SESSION_COOKIE, "")
        state = session_state(request)

        async def live() -> bool:
            session = await state.sessions.find(token, now=time.time(), idle_s=state.idle_s)
            return session is not None and session.role == self.session_key
        return live

    def not_signed_in(self, session: WebSession | None) -> web.HTTPSeeOther:
        """Where a page sends a visitor who is not logged in as this role: the home page of the role their
        live session holds, else this role's login form."""
        if session is not None and session.role != self.session_key and session.role in ROLE_HOMES:
            return web.HTTPSeeOther(ROLE_HOMES[session.role])
        return web.HTTPSeeOther(self.login_path)

    @staticmethod
    def check_csrf(request: web.Request, session: WebSession) -> None:
        """State-changing calls carry the session's CSRF token in a header that a cross-site form cannot set."""
        token = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(token, session.csrf):
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
        login_id, _ = await self.signed_in(request)
        if login_id is not None and self.known(login_id):
            raise web.HTTPSeeOther(self.landing(login_id))
        return self.login_form(request)

    def login_form(self, request: web.Request, status: int = 200, error: str | None = None,
                   login_id: str = "") -> web.Response:
        """The form, with a fresh token both in it and in a cookie of its own (checked against each other: a
        cross-site form has neither, and any host can check them)."""
        token = secrets.token_urlsafe(32)
        response = self.render(self.login_template, status=status, csrf=token, error=error,
                               **self.login_fields(login_id))
        session_state(request).set_cookie(response, LOGIN_COOKIE, token, LOGIN_FORM_MAX_AGE_S)
        return response

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        login_id = self.login_id(form)
        password = str(form.get("password", ""))[:256]
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(str(form.get("csrf", "")), expected):
            return self.login_form(request, 400, PAGE_ERRORS["login_expired"], login_id)
        state = session_state(request)
        now = time.time()
        source = self.source(request)
        # Only known ids are logged (people type passwords into the id field too); never a password.
        shown = repr(login_id) if self.known(login_id) else "an unknown id"
        # Counted before the awaited password check, in the same step as the check of the limit: concurrent
        # attempts on every host each see the others, so no more than the limit are ever tried.
        attempt = await self.throttle(request).begin(login_id, source, now)
        if attempt is None:
            log.warning("%s login throttled for %s from %s", self.role, shown, source)
            return self.login_form(request, 429, PAGE_ERRORS["login_throttled"], login_id)
        # scrypt takes tens of milliseconds: keep it off the event loop.
        verified = bool(login_id) and await asyncio.to_thread(self.verify, login_id, password)
        if not verified:
            log.info("%s login failed for %s from %s", self.role, shown, source)
            return self.login_form(request, 401, PAGE_ERRORS["login_failed"], login_id)
        await attempt.succeeded()
        # A fresh session whatever the cookie held before: no fixation.
        token, _ = await state.sessions.open(self.session_key, login_id, now=now, lifetime_s=state.lifetime_s,
                                             idle_s=state.idle_s)
        log.info("%s login: %s from %s", self.role, login_id, source)
        redirect = web.HTTPSeeOther(self.landing(login_id))
        state.set_cookie(redirect, SESSION_COOKIE, token, state.lifetime_s)
        redirect.del_cookie(LOGIN_COOKIE, path="/")
        raise redirect

    @staticmethod
    def source(request: web.Request) -> str:
        """Where a login comes from, for the throttle: the peer address. Behind a reverse proxy that is the
        proxy for everyone (so the per-source limit then counts all users together); X-Forwarded-For is not
        read, as any client can write it."""
        return request.remote or "unknown"

    async def logout(self, request: web.Request) -> web.Response:
        login_id, session = await self.signed_in(request)
        form = await request.post()
        redirect = web.HTTPSeeOther(self.login_path)
        if login_id is not None and session is not None and hmac.compare_digest(str(form.get("csrf", "")),
                                                                                session.csrf):
            await self.logged_out(login_id)
            # Every session of this user ends, in every browser and on every host: a copied cookie opens nothing.
            ended = await session_state(request).sessions.end_all(self.session_key, login_id)
            log.info("%s logout: %s (%d sessions ended)", self.role, login_id, ended)
            redirect.del_cookie(SESSION_COOKIE, path="/")
        raise redirect
