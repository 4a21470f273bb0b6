"""Control process: the web console for agents and the supervisor view (aiohttp, Jinja2, Server-Sent Events).

The console reaches the rest of the control process only through a ``Desk``.
Everything the agent reads is Persian, right to left, with Jalali dates and
Persian digits; the national ID is shown in full only on the agent's own
screen-pop (never on the supervisor view, never in a log). Logins, sessions and
CSRF are ``softswitch.web.sessions``'.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

from aiohttp import web

from softswitch.config import Agency, AgentAccount
from softswitch.domain.acd import Acd
from softswitch.domain.cases import STATUS_LABELS, FiledCase
from softswitch.domain.persian import jalali_datetime, normalize_digits
from softswitch.domain.tracking_code import is_tracking_code
from softswitch.domain.transfers import AGENCY_PREFIX, TO_QUEUE, agency_line
from softswitch.web.relay import HostRelay
from softswitch.web.responses import json_error
from softswitch.web.sessions import PAGE_ERRORS, STATIC_DIR, SessionPages, page_error
from storage.web_sessions import WebSession
from storage.reports import RatingSummary, all_ratings

log = logging.getLogger("softswitch.console")

SUPERVISOR_COALESCE_S = 0.25  # a burst of ACD events becomes one snapshot
# Once an agent's call at another host is over here, its desk's last events (the call's end, its case)
# are still relayed for this long.
RELAY_GRACE_S = 3.0
# A supervisor's monitor request returns once their phone answers: relayed, it may take the ring's time.
MONITOR_RELAY_TIMEOUT_S = 120.0
SUMMARY_MAX_CHARS = 4000
OVERRIDE_REASON_MAX_CHARS = 500
AGENT_FIELDS = ("id", "name", "state", "seconds_in_state", "pause_reason", "pause_requested", "answered_today",
                "registered")

T = TypeVar("T")


class ReasonRequired(PermissionError):
    """The case is neither the caller's nor the subject's: attaching the call to it needs a reason."""


class Desk(Protocol):
    """What the console needs from the control process; the control process implements it."""

    @property
    def agencies(self) -> Sequence[Agency]: ...

    @property
    def categories(self) -> Sequence[str]: ...

    @property
    def acd(self) -> Acd: ...

    @property
    def skill_labels(self) -> Mapping[str, str]:
        """What a queue entry's skills are called on the supervisor's board (a language: its name)."""

    def verify_agent(self, agent_id: str, password: str) -> bool: ...

    def agent_account(self, agent_id: str) -> AgentAccount | None: ...

    def desk_host(self, agent_id: str) -> str | None:
        """The other host whose desk holds the call this agent rings for, talks on or wraps up (its console
        requests for that call go there: ``softswitch.web.relay``); None: this host's, or no call."""

    def call_desk_host(self, call_key: str) -> str | None:
        """The other host whose desk holds this call (with an agent), or None: this host's, or unknown."""

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

    async def attach_case(self, agent_id: str, call_key: str, tracking_code: str, reason: str | None = None) -> str:
        """Attach the call to an existing case; LookupError if there is no such case. A case that neither
        the caller nor the subject owns needs ``reason`` (kept in its history), else ReasonRequired."""

    async def give_tracking_code(self, agent_id: str, call_key: str) -> str:
        """The IVR reads the code to the caller; LookupError if no case is filed or attached yet."""

    async def transfer(self, agent_id: str, call_key: str, to: str, consult: bool = False) -> None:
        """Hand the agent's connected call to another agent, the queue (``TO_QUEUE``), or an agency's line
        (``agency_line``), rung while the caller stays; ``consult``: the agent talks with them first while the
        caller holds. LookupError for an unknown agent or an agency without a phone, ValueError (Persian
        message) when it cannot be done now."""

    async def end_consultation(self, agent_id: str, call_key: str, complete: bool) -> None:
        """Put the caller through to the party being consulted (``complete``), or go back to the caller;
        ValueError (Persian message) when no consultation is going on."""

    async def recording_path(self, agent_id: str, recording_id: int) -> Path | None:
        """A recording of this agent's current call, else None."""

    async def ratings_today(self) -> Sequence[RatingSummary]:
        """Today's post-call survey results (the hotline's date) per agent id; those after a follow-up
        (no agent) under the key None."""

    def monitoring(self, supervisor_id: str) -> dict[str, Any] | None:
        """The live call this supervisor is on: ``call_key``, ``agent_id``, ``mode``, ``state``; or None."""

    async def monitor(self, supervisor_id: str, call_key: str, mode: str) -> dict[str, Any]:
        """Ring the supervisor's phone and join it to the call in ``mode`` (listen | whisper | barge), or switch
        the mode of the call they are on; returns ``monitoring`` once joined. PermissionError if not a
        supervisor, LookupError if the call is not in conversation, ValueError (a Persian message) otherwise."""

    async def stop_monitor(self, supervisor_id: str) -> None:
        """Hang up the supervisor's leg; LookupError if they monitor no call."""


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
    "case_status": STATUS_LABELS,
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
        "ratings_count": "امروز، از {n} نظر", "agent_rating": "رضایت امروز: {avg} از {n} نظر",
        "no_ratings": "امروز نظری ثبت نشده است",
        "transfer_ringing": "در حال زنگ زدن به {name}؛ تا پاسخ او، تماس با شماست.",
        "transferred": "تماس به {name} منتقل شد.",
        "consult_ringing": "در حال زنگ زدن به {name} برای مشورت؛ تا پاسخ او، تماس با شماست.",
        "consulting": "با {name} گفتگو می‌کنید؛ تماس‌گیرنده در انتظار است و صدای شما را نمی‌شنود.",
        "transfer_failed": {"no_answer": "{name} پاسخ نداد؛ تماس با شماست.",
                            "not_reached": "تلفن {name} در دسترس نبود؛ تماس با شماست.",
                            "not_ready": "{name} آماده پاسخگویی نیست؛ تماس با شماست.",
                            "cancelled": "گفتگو با {name} پایان یافت؛ تماس با شماست."},
        "transferred_from": "منتقل‌شده از {name}",
        "to_queue": "تماس‌گیرنده به ابتدای صف برگشت؛ کارشناس بعدی پاسخ می‌دهد.",
    },
    "queue_ringing": "در حال زنگ برای",
    "queue_callback": "تماس برگشتی",
}
PAUSE_CHOICES = ("break", "prayer", "training", "admin")

ERRORS = {
    **PAGE_ERRORS,
    "not_supervisor": "این صفحه فقط برای سرپرستان است.",
    "unknown_agent": "این کارشناس در سامانه توزیع تماس تعریف نشده است.",
    "transition": "این تغییر وضعیت اکنون ممکن نیست.",
    "monitoring_not_ready": "تا وقتی شنود می‌کنید نمی‌توانید آماده پاسخ‌گویی شوید؛ ابتدا شنود را پایان دهید.",
    "pause_reason": "علت مکث نامعتبر است.",
    "not_your_call": "این تماس به شما مربوط نیست.",
    "no_such_case": "پرونده‌ای با این کد پیگیری پیدا نشد.",
    "bad_tracking_code": "کد پیگیری نادرست است؛ ۹ رقم آن را دوباره بررسی کنید.",
    "no_case_yet": "هنوز پرونده‌ای برای این تماس ثبت یا پیوست نشده است.",
    "empty_summary": "خلاصه درخواست را بنویسید.",
    "empty_reason": "دلیل ثبت جداگانه را بنویسید.",
    "not_your_case": "این پرونده در میز شما نیست.",
    "attach_reason": "این پرونده به تماس‌گیرنده یا شخص موضوع درخواست تعلق ندارد؛ برای پیوست، دلیل آن را بنویسید.",
    "no_live_call": "این تماس در جریان نیست.",
    "unknown_colleague": "مقصد انتقال شناخته نیست.",
    "no_monitor": "شنودی در جریان نیست.",
}
# Supervision: the modes as the supervisor's buttons name them, and the state of their leg.
MONITOR_LABELS = {
    "modes": {"listen": "شنود", "whisper": "نجوا", "barge": "ورود به مکالمه"},
    "stop": "پایان", "ringing": "در حال زنگ زدن به تلفن شما…", "current": "حالت فعلی",
}


class _Console(SessionPages):
    session_key = "agent_id"
    login_path = "/console/login"
    login_template = "login.html"
    role = "console"

    def __init__(self, desk: Desk, tz: ZoneInfo, heartbeat_s: float, relay: HostRelay | None) -> None:
        super().__init__(tz)
        self.desk = desk
        self.heartbeat_s = heartbeat_s
        self.relay = relay  # several hosts: to the desk of an agent's call at another host
        self.remote_monitors: dict[str, str] = {}  # supervisor id -> the host of the call they monitor
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
            await self.desk.acd.submit("logout", agent_id=login_id)

    async def account(self, request: web.Request) -> tuple[AgentAccount | None, WebSession | None]:
        agent_id, session = await self.signed_in(request)
        return (None if agent_id is None else self.desk.agent_account(agent_id)), session

    async def page_account(self, request: web.Request) -> tuple[AgentAccount, WebSession]:
        account, session = await self.account(request)
        if account is None or session is None:
            raise self.not_signed_in(session)
        return account, session

    async def api_account(self, request: web.Request, *, writes: bool) -> AgentAccount:
        account, session = await self.account(request)
        if account is None or session is None:
            raise page_error(web.HTTPUnauthorized, "not_logged_in", ERRORS)
        if writes:
            self.check_csrf(request, session)
        return account

    async def supervisor_api(self, request: web.Request, *, writes: bool = False) -> AgentAccount:
        account = await self.api_account(request, writes=writes)
        if not account.supervisor:
            raise page_error(web.HTTPForbidden, "not_supervisor", ERRORS)
        return account

    def remote_desk(self, request: web.Request, agent_id: str) -> str | None:
        """The other host to relay this agent's request for their call to; None: answer it here."""
        if self.relay is None or self.relay.relayed(request):
            return None
        return self.desk.desk_host(agent_id)

    async def relayed_or(self, request: web.Request, account: AgentAccount) -> web.StreamResponse | None:
        """The answer of the host whose desk holds this agent's call, if that is another host."""
        host = self.remote_desk(request, account.id)
        if host is None or self.relay is None:
            return None
        return await self.relay.forward(request, host)

    async def offer_of(self, request: web.Request, agent_id: str) -> dict[str, Any] | None:
        """The agent's screen-pop as the console shows it, from the desk that holds their call."""
        host = self.remote_desk(request, agent_id)
        if host is None or self.relay is None:
            return self.offer_view(self.desk.current_offer(agent_id))
        answer = await self.relay.get_json(request, host, "/console/api/offer")
        return answer.get("offer") if isinstance(answer, dict) else None

    async def monitoring_of(self, request: web.Request, supervisor_id: str) -> dict[str, Any] | None:
        """The call this supervisor monitors, as the desk of its host has it."""
        host = self.remote_monitors.get(supervisor_id)
        if host is None or self.relay is None:
            return self.desk.monitoring(supervisor_id)
        answer = await self.relay.get_json(request, host, "/supervisor/api/monitor")
        monitor = answer.get("monitor") if isinstance(answer, dict) else None
        if isinstance(answer, dict) and monitor is None:
            self.remote_monitors.pop(supervisor_id, None)  # over there: the call ended, or they hung up
        return monitor if isinstance(monitor, dict) else None

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
            case "relayed":  # from the desk of another host: shown there already
                return dict(event["event"])
            case _:
                return dict(event)

    async def snapshot_view(self) -> dict[str, Any]:
        """The ACD's snapshot (caller numbers already masked, no national IDs), the local hour for the chart,
        and today's survey results: per agent, and all of them together."""
        snapshot = self.desk.acd.snapshot()
        labels = self.desk.skill_labels
        for entry in snapshot["queue"]:
            entry["needs"] = [labels.get(skill, skill) for skill in entry["skills"]]
        wall = snapshot.get("wall")
        local = datetime.fromtimestamp(wall if isinstance(wall, (int, float)) else time.time(), self.tz)
        ratings = await self.desk.ratings_today()
        return {**snapshot, "local_hour": local.hour, "ratings": {
            "agents": {s.key: _rating_view(s) for s in ratings if s.key is not None},
            "all": _rating_view(all_ratings(ratings))}}

    def page_context(self, account: AgentAccount, session: WebSession) -> dict[str, Any]:
        return {"account": account, "csrf": session.csrf, "today": self.today()}

    # -- the agent's page ------------------------------------------------------------

    async def agent_page(self, request: web.Request) -> web.Response:
        account, session = await self.page_account(request)
        data = {"agent": self.agent_view(account.id), "offer": await self.offer_of(request, account.id),
                "labels": LABELS}
        colleagues = [(a.id, a.name) for a in self.desk.acd.agents() if a.id != account.id]
        # Agencies with a line of their own, which a call may be handed to.
        lines = [(agency_line(a.id), a.name) for a in self.desk.agencies if a.phone is not None]
        data["names"] = {target: name for target, name in [*colleagues, *lines]}
        data["transfer"] = {"queue": TO_QUEUE, "agency_prefix": AGENCY_PREFIX}
        return self.render("agent.html", **self.page_context(account, session), data=data, colleagues=colleagues,
                           agency_lines=lines, to_queue=TO_QUEUE,
                           agencies=self.desk.agencies, categories=self.desk.categories,
                           pause_choices=[(reason, LABELS["pause_reasons"][reason]) for reason in PAUSE_CHOICES])

    async def agent_offer(self, request: web.Request) -> web.StreamResponse:
        """The screen-pop alone (``offer_of`` asks it of the host of the agent's call)."""
        account = await self.api_account(request, writes=False)
        if (relayed := await self.relayed_or(request, account)) is not None:
            return relayed
        return web.json_response({"offer": self.offer_view(self.desk.current_offer(account.id))},
                                 dumps=lambda v: json.dumps(v, ensure_ascii=False))

    async def agent_events(self, request: web.Request) -> web.StreamResponse:
        account = await self.api_account(request, writes=False)
        live = await self.live_check(request)
        response = await self.open_stream(request)
        events = self.desk.subscribe(account.id)
        remote = _RelayedDesk(self, request, account.id, events)
        try:
            # Subscribed first, so nothing between this state and the next event is lost.
            remote.follow()
            await self.send(response, {"type": "state", "agent": self.agent_view(account.id),
                                       "offer": None if remote.host else self.offer_view(
                                           self.desk.current_offer(account.id))})
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), self.heartbeat_s)
                except TimeoutError:
                    event = None
                # A logout in any browser, or the max age, ends the stream too: no screen-pop after it.
                if not await live():
                    break
                if event is None:
                    await response.write(b": heartbeat\n\n")
                    continue
                if event.get("type") == "agent":
                    remote.follow()  # rung for a call of another host, or done with it
                await self.send(response, self.agent_event_view(account.id, event))
        except ConnectionResetError:
            log.debug("console events: %s disconnected", account.id)
        finally:
            remote.close()
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
                    await acd.submit("login", agent_id=account.id)
                case "logout":
                    await acd.submit("logout", agent_id=account.id)
                case "ready":
                    if self.desk.monitoring(account.id) is not None:
                        # The queue would ring the phone that is listening in on another call.
                        raise page_error(web.HTTPConflict, "monitoring_not_ready", ERRORS)
                    await acd.submit("set_ready", agent_id=account.id)
                case "pause":
                    reason = body.get("reason", "break")
                    if reason not in PAUSE_CHOICES:
                        raise page_error(web.HTTPBadRequest, "pause_reason", ERRORS)
                    await acd.submit("pause", agent_id=account.id, reason=reason)
                case _:
                    raise page_error(web.HTTPNotFound, "bad_request", ERRORS)
        except KeyError:
            raise page_error(web.HTTPNotFound, "unknown_agent", ERRORS) from None
        except ValueError:
            raise page_error(web.HTTPConflict, "transition", ERRORS) from None
        log.info("console: %s %s", account.id, action)
        return web.json_response({"agent": self.agent_view(account.id)})

    async def file_case(self, request: web.Request) -> web.StreamResponse:
        account = await self.api_account(request, writes=True)
        if (relayed := await self.relayed_or(request, account)) is not None:
            return relayed
        body = await self.json_body(request)
        call_key = self.text_field(body, "call_key")
        agency_id = self.text_field(body, "agency_id")
        category = self.text_field(body, "category")
        summary = self.text_field(body, "summary", SUMMARY_MAX_CHARS)
        if not summary:
            raise page_error(web.HTTPBadRequest, "empty_summary", ERRORS)
        override_reason = None
        if body.get("override_reason") is not None:
            override_reason = self.text_field(body, "override_reason", OVERRIDE_REASON_MAX_CHARS)
            if not override_reason:
                raise page_error(web.HTTPBadRequest, "empty_reason", ERRORS)
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
            raise page_error(web.HTTPBadRequest, "bad_tracking_code", ERRORS)
        return code

    async def attach_case(self, request: web.Request) -> web.StreamResponse:
        account = await self.api_account(request, writes=True)
        if (relayed := await self.relayed_or(request, account)) is not None:
            return relayed
        body = await self.json_body(request)
        call_key = self.text_field(body, "call_key")
        code = self.tracking_code_field(body)
        reason = self.text_field(body, "reason", OVERRIDE_REASON_MAX_CHARS) if body.get("reason") is not None else ""

        async def attach() -> str:
            try:
                return await self.desk.attach_case(account.id, call_key, code, reason or None)
            except ReasonRequired:
                # Its own code, so the console asks the agent for the reason and sends it again.
                raise page_error(web.HTTPForbidden, "attach_reason", ERRORS) from None
        response = await self.tracking_code_answer(attach(), (web.HTTPNotFound, "no_such_case"))
        log.info("console: %s attached call %s to case %s%s", account.id, call_key, code,
                 " (with a reason)" if reason else "")
        return response

    async def refer_case(self, request: web.Request) -> web.StreamResponse:
        account = await self.api_account(request, writes=True)
        if (relayed := await self.relayed_or(request, account)) is not None:
            return relayed
        body = await self.json_body(request)
        code = self.tracking_code_field(body)
        agency_id = self.text_field(body, "agency_id")
        response = await self.tracking_code_answer(self.desk.refer_case(account.id, code, agency_id),
                                                   (web.HTTPNotFound, "no_such_case"), desk_messages=True,
                                                   forbidden="not_your_case")
        log.info("console: %s referred case %s to %s", account.id, code, agency_id)
        return response

    async def give_tracking_code(self, request: web.Request) -> web.StreamResponse:
        account = await self.api_account(request, writes=True)
        if (relayed := await self.relayed_or(request, account)) is not None:
            return relayed
        call_key = self.text_field(await self.json_body(request), "call_key")
        return await self.tracking_code_answer(self.desk.give_tracking_code(account.id, call_key),
                                               (web.HTTPConflict, "no_case_yet"))

    async def transfer_call(self, request: web.Request) -> web.StreamResponse:
        account = await self.api_account(request, writes=True)
        if (relayed := await self.relayed_or(request, account)) is not None:
            return relayed
        body = await self.json_body(request)
        call_key = self.text_field(body, "call_key")
        # To a colleague (or the queue), or to an agency's line.
        to = (agency_line(self.text_field(body, "agency_id")) if "agency_id" in body
              else self.text_field(body, "agent_id"))
        consult = body.get("consult", False)
        if not isinstance(consult, bool) or (consult and to == TO_QUEUE):
            raise page_error(web.HTTPBadRequest, "bad_request", ERRORS)
        await self.desk_result(self.desk.transfer(account.id, call_key, to, consult),
                               (web.HTTPNotFound, "unknown_colleague"), desk_messages=True)
        log.info("console: %s %s a call to %s", account.id, "consults about" if consult else "hands", to)
        return web.json_response({"transferring_to": to, "consult": consult})

    async def end_consultation(self, request: web.Request) -> web.StreamResponse:
        """POST /console/api/transfer/complete or /cancel: the agent's consultation ends."""
        account = await self.api_account(request, writes=True)
        if (relayed := await self.relayed_or(request, account)) is not None:
            return relayed
        call_key = self.text_field(await self.json_body(request), "call_key")
        complete = request.match_info["end"] == "complete"
        await self.desk_result(self.desk.end_consultation(account.id, call_key, complete),
                               (web.HTTPNotFound, "no_live_call"), desk_messages=True)
        return web.json_response({"consultation": "completing" if complete else "cancelled"})

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
            raise page_error(web.HTTPForbidden, forbidden, ERRORS) from None
        except LookupError:
            raise page_error(*not_found, ERRORS) from None
        except ValueError as exc:
            message = str(exc) if desk_messages else ERRORS["bad_request"]
            raise json_error(web.HTTPBadRequest, message, code="bad_request") from None

    async def recording(self, request: web.Request) -> web.StreamResponse:
        account = await self.api_account(request, writes=False)
        if (relayed := await self.relayed_or(request, account)) is not None:
            return relayed
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
        data = {"snapshot": await self.snapshot_view(), "labels": LABELS, "monitor_labels": MONITOR_LABELS,
                "monitor": await self.monitoring_of(request, account.id)}
        return self.render("supervisor.html", **context, data=data)

    async def supervisor_snapshot(self, request: web.Request) -> web.Response:
        await self.supervisor_api(request)
        return web.json_response(await self.snapshot_view(), dumps=lambda v: json.dumps(v, ensure_ascii=False))

    async def supervisor_events(self, request: web.Request) -> web.StreamResponse:
        account = await self.supervisor_api(request)
        live = await self.live_check(request)
        acd = self.desk.acd
        response = await self.open_stream(request)
        events = acd.subscribe()
        own = self.desk.subscribe(account.id)  # the supervisor's own monitor leg changes too
        try:
            while await live():  # a logout in any browser, or the max age, ends the stream too
                await self.send(response, {"type": "snapshot", "snapshot": await self.snapshot_view(),
                                           "monitor": await self.monitoring_of(request, account.id)})
                # Every event, or the heartbeat, brings a fresh snapshot; a burst brings one.
                waits = [asyncio.ensure_future(events.get()), asyncio.ensure_future(own.get())]
                try:
                    done, _ = await asyncio.wait(waits, timeout=self.heartbeat_s,
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for wait in waits:
                        wait.cancel()
                if done:
                    await asyncio.sleep(SUPERVISOR_COALESCE_S)
                for queue in (events, own):
                    while not queue.empty():
                        queue.get_nowait()
        except ConnectionResetError:
            log.debug("supervisor events: client disconnected")
        finally:
            acd.unsubscribe(events)
            self.desk.unsubscribe(account.id, own)
            self.forget_stream()
        return response

    async def supervisor_monitoring(self, request: web.Request) -> web.Response:
        """GET: the call this supervisor monitors from this host's desk (``monitoring_of`` at another host)."""
        account = await self.supervisor_api(request)
        return web.json_response({"monitor": self.desk.monitoring(account.id)})

    async def supervisor_monitor(self, request: web.Request) -> web.StreamResponse:
        """POST {call_key, mode}: join (or switch) the supervisor's phone; DELETE: leave the call. A call of
        another host is monitored from that host's desk, where its media is."""
        account = await self.supervisor_api(request, writes=True)
        if self.relay is not None and not self.relay.relayed(request):
            if request.method == "DELETE":
                host = self.remote_monitors.pop(account.id, None)
            else:
                call_key = str((await self.json_body(request)).get("call_key", ""))
                host = self.remote_monitors.get(account.id) or self.desk.call_desk_host(call_key)
            if host is not None:
                response = await self.relay.forward(request, host, MONITOR_RELAY_TIMEOUT_S)
                if request.method == "POST" and response.status == 200:
                    self.remote_monitors[account.id] = host
                return response
        if request.method == "DELETE":
            await self.desk_result(self.desk.stop_monitor(account.id), (web.HTTPNotFound, "no_monitor"))
            log.info("console: supervisor %s left the call they monitored", account.id)
            return web.json_response({"monitor": None})
        body = await self.json_body(request)
        call_key = self.text_field(body, "call_key")
        mode = self.text_field(body, "mode")
        if mode not in MONITOR_LABELS["modes"]:
            raise page_error(web.HTTPBadRequest, "bad_request", ERRORS)
        monitor = await self.desk_result(self.desk.monitor(account.id, call_key, mode),
                                         (web.HTTPNotFound, "no_live_call"), desk_messages=True,
                                         forbidden="not_supervisor")
        return web.json_response({"monitor": monitor}, dumps=lambda v: json.dumps(v, ensure_ascii=False))

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


def _rating_view(summary: RatingSummary) -> dict[str, Any]:
    return {"count": summary.count, "average": None if summary.average is None else round(summary.average, 2)}


def add_console_routes(app: web.Application, desk: Desk, *, timezone: str = "Asia/Tehran",
                       heartbeat_s: float = 15.0, relay: HostRelay | None = None) -> None:
    """Serve the agents' console under /console and the supervisor view under /supervisor (``install_sessions``
    first); with ``relay``, an agent's requests for a call of another host are answered by that host."""
    console = _Console(desk, ZoneInfo(timezone), heartbeat_s, relay)
    app.on_shutdown.append(console.close_streams)
    router = app.router
    router.add_get("/console/login", console.login_page)
    router.add_post("/console/login", console.login)
    router.add_post("/console/logout", console.logout)
    router.add_get("/console", console.agent_page)
    router.add_get("/console/events", console.agent_events)
    router.add_get("/console/api/offer", console.agent_offer)
    router.add_get(r"/console/recordings/{recording_id:\d{1,18}}", console.recording)
    router.add_post("/console/api/agent/{action}", console.agent_action)
    router.add_post("/console/api/cases", console.file_case)
    router.add_post("/console/api/cases/attach", console.attach_case)
    router.add_post("/console/api/cases/refer", console.refer_case)
    router.add_post("/console/api/tracking-code", console.give_tracking_code)
    router.add_post("/console/api/transfer", console.transfer_call)
    router.add_post("/console/api/transfer/{end:complete|cancel}", console.end_consultation)
    router.add_static("/console/static", STATIC_DIR)
    router.add_get("/supervisor", console.supervisor_page)
    router.add_get("/supervisor/api/snapshot", console.supervisor_snapshot)
    router.add_get("/supervisor/events", console.supervisor_events)
    router.add_post("/supervisor/api/monitor", console.supervisor_monitor)
    router.add_delete("/supervisor/api/monitor", console.supervisor_monitor)
    router.add_get("/supervisor/api/monitor", console.supervisor_monitoring)


class _RelayedDesk:
    """For one agent's event stream: while their call is at another host, that host's desk events (the
    screen-pop, the call's end, its case) join this stream's queue. The agent's own state is not taken
    from there: this host's replica of the queue publishes it."""

    def __init__(self, console: _Console, request: web.Request, agent_id: str,
                 events: asyncio.Queue[dict[str, Any]]) -> None:
        self._console = console
        self._request = request
        self._agent_id = agent_id
        self._events = events
        self.host: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # the current host's, and those still in their grace

    def follow(self) -> None:
        host = self._console.remote_desk(self._request, self._agent_id)
        if host == self.host:
            return
        for task in self._tasks:
            asyncio.get_running_loop().call_later(RELAY_GRACE_S, task.cancel)
        self.host = host
        if host is not None:
            task = asyncio.ensure_future(self._relay(host))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _relay(self, host: str) -> None:
        relay = self._console.relay
        assert relay is not None
        try:
            async for event in relay.events(self._request, host, "/console/events"):
                kind = event.get("type")
                if kind == "state":  # the desk's state when the stream opened: its screen-pop, if any
                    if event.get("offer") is None:
                        continue
                    event = {"type": "offer", "offer": event["offer"]}
                elif kind == "agent":
                    continue
                with contextlib.suppress(asyncio.QueueFull):
                    self._events.put_nowait({"type": "relayed", "event": event})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the stream goes on; its state still comes from here
            log.warning("console events of %s: the desk at host %s cannot be followed: %s",
                        self._agent_id, host, exc)
