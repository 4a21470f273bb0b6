"""Control process: the agents' desk, between live calls (ivr/live.py) and the web console.

Live mode tells the desk when an agent is offered a call, connected, and done
(``ivr.live.LiveDesk``); the console asks it for the screen-pop and files cases
through it (``softswitch.web.console.Desk``). It keeps, per agent, the call they are
handling (and, through wrap-up, the one they just handled) so that only that
agent sees the caller's full national ID and spoken-ID audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from ivr.call_flow import Session
from ivr.channel import Leg, LiveChannel, RecordingResult
from ivr.live import Transfer
from ivr.recorded_message import read_tracking_code
from softswitch import logs
from softswitch.config import Agency, AgentAccount, Config, agency_skill, language_skill
from softswitch.domain.acd import Acd, AgentState
from softswitch.domain.cases import UNFILED_STATUSES, FiledCase, duplicate_window_s
from softswitch.domain.fanout import Fanout
from softswitch.domain.text import clean_text
from softswitch.domain.tracking_code import code_tail
from softswitch.domain.transfers import TO_QUEUE, agency_of
from softswitch.protocol import MONITOR_MODES
from softswitch.web.console import ReasonRequired
from softswitch.web.credentials import verify_password
from storage.errors import NotFound
from storage.models import Case, PersonId, Recording
from storage.reports import RatingSummary, rating_day, rating_summaries
from storage.store import Store

log = logging.getLogger("softswitch.desk")

SUBSCRIBER_QUEUE = 100
ID_AUDIO_KINDS = {"national_id_utterance": "caller", "subject_id_utterance": "subject"}


@dataclass
class DeskCall:
    """A caller known to the desk: tracked from answer to the end of the agent's handling."""

    key: str
    call_id: int
    caller_number: str
    session: Session
    agent_id: str | None = None
    state: str = "queued"  # queued | ringing | connected | ended
    queued_s: float = 0.0
    channel: LiveChannel | None = None
    case: Case | None = None
    # The case is an earlier one this call was linked to as a duplicate (the call has no case of its
    # own); the call's recordings join it when the call ends, so that an override can still take them.
    linked: bool = False
    reading: asyncio.Task[None] | None = None
    id_audio: dict[str, list[int]] = field(default_factory=dict)
    pop: dict[str, Any] | None = None  # the screen-pop as last sent
    # The call's log fields, for what the console does to it (from requests, not the call's task).
    log_context: logs.CallContext | None = None
    agent_leg: Leg | None = None  # while connected: the agent's leg, for a supervisor to join
    # What happened to the call before it had a case (supervision, transfers): (actor, kind, details),
    # written into its history once it has one.
    notes: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    transfer: Callable[[Transfer], None] | None = None  # while connected: hands the call on
    transferring_to: str | None = None  # the agent (or "agency:<id>") being rung for it, or consulted
    consulting: bool = False  # transferring_to answered a consultation: complete or cancel it

    def current_pop(self) -> dict[str, Any] | None:
        if self.pop is None:
            return None
        return {**self.pop, "state": self.state, "case": self.case_view(), "transferring": self.transferring_to,
                "consulting": self.consulting}

    def case_view(self) -> dict[str, Any] | None:
        return {"tracking_code": self.case.tracking_code, "duplicate": self.linked} if self.case else None


@dataclass
class DeskMonitor:
    """A supervisor on a live call: their phone rung from the caller's worker, then joined in ``mode``."""

    supervisor_id: str
    call: DeskCall
    mode: str
    leg: Leg
    state: str = "ringing"  # ringing | joined
    watch: asyncio.Future[None] | None = None

    def view(self) -> dict[str, Any]:
        return {"call_key": self.call.key, "agent_id": self.call.agent_id, "mode": self.mode, "state": self.state}


class ControlDesk:
    def __init__(self, config: Config, store: Store, acd: Acd, prompts: Any,
                 on_filed: Callable[[str, bool], None] = lambda channel, duplicate: None,
                 kept: Callable[[Recording], None] = lambda recording: None,
                 agent_uri: Callable[[str], str] = lambda agent_id: f"sip:{agent_id}@front", host: str = "",
                 languages: Mapping[str, Any] | None = None) -> None:
        """``prompts``: the first language's; ``languages``: every offered language's, by code."""
        self.config = config
        self.host = host  # this host's name: a call of another host has its desk there
        self.agent_uri = agent_uri  # where an agent's (or a supervisor's) phone is rung
        self.on_filed = on_filed  # (channel, duplicate) of each filing through the duplicate rule, for the metrics
        self.kept = kept  # told of each recording stored (the conversation's tape): the shared copy
        self.store = store
        self.acd = acd
        self.prompts = prompts
        self.languages = languages or {}
        self._language_labels = {language.code: language.label for language in config.prompts.languages}
        self.skill_labels = {language_skill(code): label for code, label in self._language_labels.items()} | {
            agency_skill(agency.id): agency.name for agency in config.agencies}
        self.agencies: Sequence[Agency] = config.agencies
        self._agency_numbers = {a.id: a.phone for a in config.agencies if a.phone is not None}
        self.categories: Sequence[str] = config.categories
        self._accounts = {a.id: a for a in config.agents.accounts}
        self._tz = ZoneInfo(config.office_hours.timezone)
        self._calls: dict[str, DeskCall] = {}
        self._by_agent: dict[str, DeskCall] = {}
        self._monitors: dict[str, DeskMonitor] = {}  # by supervisor
        self._listeners: dict[str, Fanout] = {}
        self._acd_events = acd.subscribe()
        self._forwarder = asyncio.ensure_future(self._forward_agent_events())

    async def close(self) -> None:
        self._forwarder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._forwarder
        self.acd.unsubscribe(self._acd_events)

    # -- calls (from the control process) ------------------------------------
    def track(self, key: str, call_id: int, caller_number: str, session: Session) -> None:
        self._calls[key] = DeskCall(key, call_id, caller_number, session, log_context=logs.current_call())

    def call_id_of(self, key: str) -> int | None:
        """The CDR id of a tracked call."""
        call = self._calls.get(key)
        return None if call is None else call.call_id

    def agent_of(self, key: str) -> dict[str, str] | None:
        """The agent a tracked call is ringing or talking to (``state``: ringing | connected), or None."""
        call = self._calls.get(key)
        if call is None or call.agent_id is None:
            return None
        return {"id": call.agent_id, "state": call.state}

    def untrack(self, key: str) -> None:
        call = self._calls.pop(key, None)
        if call is not None:
            call.state = "ended"  # its agent may still hold it through wrap-up

    # -- ivr.live.LiveDesk ---------------------------------------------------
    async def offer(self, key: str, agent_id: str, queued_s: float) -> None:
        call = self._calls[key]
        if call.agent_id is not None and self._by_agent.get(call.agent_id) is call:
            del self._by_agent[call.agent_id]  # sent back to the queue by that agent: the call is the next one's
        call.agent_id, call.state, call.queued_s, call.transferring_to = agent_id, "ringing", queued_s, None
        self._by_agent[agent_id] = call
        recordings = await self.store.recordings_for_call(call.call_id)
        call.id_audio = {whose: [r.id for r in recordings if ID_AUDIO_KINDS.get(r.kind) == whose]
                         for whose in ID_AUDIO_KINDS.values()}
        self._publish(agent_id, {"type": "offer", **await self.screen_pop(call)})

    def withdraw(self, key: str, agent_id: str) -> None:
        call = self._calls.get(key)
        if call is not None and self._by_agent.get(agent_id) is call:
            del self._by_agent[agent_id]
            call.agent_id, call.state = None, "queued"
        self._publish(agent_id, {"type": "call_ended", "call_key": key, "reason": "not_answered"})

    def connected(self, key: str, agent_id: str, channel: LiveChannel, leg: Leg,
                  transfer: Callable[[Transfer], None]) -> None:
        call = self._calls[key]
        call.state, call.channel, call.agent_leg, call.transfer = "connected", channel, leg, transfer
        asyncio.ensure_future(self.store.set_call_agent(call.call_id, agent_id))
        self._publish(agent_id, {"type": "connected", "call_key": key})

    async def transfer_ringing(self, key: str, from_agent: str, to: str, consult: bool) -> None:
        call = self._calls[key]
        call.transferring_to = to  # asked on the console, or by the agent's phone (REFER)
        self._publish(from_agent, {"type": "transfer", "call_key": key, "state": "ringing", "to": to,
                                   "consult": consult})
        if agency_of(to) is None:
            # The other agent sees the call as it is: the caller, the IDs, the case if one is filed.
            self._publish(to, {"type": "offer", **(call.current_pop() or await self.screen_pop(call)),
                               "state": "ringing", "transferred_from": from_agent, "consult": consult,
                               "transferring": None, "consulting": False})

    def consulting(self, key: str, from_agent: str, to: str) -> None:
        call = self._calls.get(key)
        if call is not None:
            call.consulting = True
        self._publish(from_agent, {"type": "transfer", "call_key": key, "state": "consulting", "to": to})

    async def transfer_done(self, key: str, from_agent: str, to: str, leg: Leg) -> None:
        call = self._calls[key]
        for monitor in [m for m in self._monitors.values() if m.call is call]:
            await self._end_monitor(monitor, "transferred")  # on the first agent's leg, which ends
        agency = agency_of(to)
        call.transferring_to, call.consulting = None, False
        if agency is None:
            self._by_agent.pop(from_agent, None)  # the call is the colleague's now, wrap-up included
            call.agent_id, call.agent_leg = to, leg
            self._by_agent[to] = call
            await self.store.set_call_agent(call.call_id, to)
            details: dict[str, Any] = {"from_agent": from_agent, "to_agent": to}
        else:
            # Out of the centre: no agent talks on the call now, and the matter is a case at once, which the
            # first agent completes in its wrap-up (the call stays its own on the console for that; its
            # tape, still running, joins the case when the call ends).
            call.agent_id, call.agent_leg, call.transfer = None, None, None
            if call.case is None:
                call.case = await self._new_case(call, f"agent:{from_agent}")
                await self._write_notes(call)
            details = {"from_agent": from_agent, "to_agency": agency}
        await self._note(call, f"agent:{from_agent}", "transferred", {**details, "call_id": call.call_id,
                                                                       "at": time.time()})
        with logs.call_context(call.log_context):
            log.info("agent %s handed the call to %s", from_agent, to,
                     extra={"event": "transfer", "agent": None if agency else to, "from_agent": from_agent,
                            "to_agency": agency})
        self._publish(from_agent, {"type": "call_ended", "call_key": key, "reason": "transferred", "to": to,
                                   "tracking_code": call.case.tracking_code if call.case else None})
        if agency is None:
            self._publish(to, {"type": "connected", "call_key": key})

    def transfer_failed(self, key: str, from_agent: str, to: str, reason: str) -> None:
        call = self._calls.get(key)
        if call is not None:
            call.transferring_to, call.consulting = None, False
        self._publish(from_agent, {"type": "transfer", "call_key": key, "state": "failed", "to": to,
                                   "reason": reason})
        if reason != "not_ready" and agency_of(to) is None:
            self._publish(to, {"type": "call_ended", "call_key": key, "reason": "not_answered"})

    async def transfer(self, agent_id: str, call_key: str, to: str, consult: bool = False) -> None:
        """The agent hands the call it is talking on to another agent or to an agency's number (``agency_line``
        of its id), which is rung while the caller stays with the first; with ``consult`` the two talk first
        while the caller holds (then ``end_consultation``). The outcome comes as events (transfer ringing /
        consulting / failed, call_ended transferred). ``TO_QUEUE`` sends the caller back to the head of the
        queue instead."""
        call = self._agents_call(agent_id, call_key)
        if call.state != "connected" or call.transfer is None:
            raise ValueError("تماس برقرار نیست.")
        if call.transferring_to is not None:
            raise ValueError("انتقال این تماس در جریان است.")
        if to == TO_QUEUE:
            # Back to the queue, at its head: this conversation ends (its case is filed), the next agent takes it.
            await self._note(call, f"agent:{agent_id}", "transferred",
                             {"from_agent": agent_id, "to_agent": TO_QUEUE, "call_id": call.call_id, "at": time.time()})
            self._publish(agent_id, {"type": "transfer", "call_key": call_key, "state": "to_queue", "to": TO_QUEUE})
            call.transferring_to = TO_QUEUE
            call.transfer(Transfer("hand", TO_QUEUE))
            return
        action: Literal["consult", "hand"] = "consult" if consult else "hand"
        agency = agency_of(to)
        if agency is not None:
            number = self._agency_numbers.get(agency)
            if number is None:
                raise LookupError("برای این دستگاه شماره‌ای برای انتقال تعریف نشده است.")
            call.transferring_to = to
            call.transfer(Transfer(action, to, number))
            return
        if to == agent_id or to not in self._accounts:
            raise LookupError("کارشناس مقصد شناخته نیست.")
        if self.acd.agent(to).state is not AgentState.READY:
            raise ValueError("کارشناس مقصد اکنون آماده پاسخگویی نیست.")
        call.transferring_to = to
        call.transfer(Transfer(action, to))

    async def end_consultation(self, agent_id: str, call_key: str, complete: bool) -> None:
        """The agent consulting someone about its call puts the caller through to them (``complete``), or
        goes back to the caller; the outcome comes as events (call_ended transferred, transfer failed)."""
        call = self._agents_call(agent_id, call_key)
        if not call.consulting or call.transfer is None:
            raise ValueError("مشورتی برای این تماس در جریان نیست.")
        call.consulting = False
        call.transfer(Transfer("complete" if complete else "cancel"))

    async def finished(self, key: str, agent_id: str | None, conversation: RecordingResult | None) -> str | None:
        """The conversation is over: keep the tape, and make sure the matter is a case; its tracking code."""
        call = self._calls.get(key)
        if call is None:
            return None
        call.state, call.channel, call.agent_leg = "ended", None, None
        for monitor in [m for m in self._monitors.values() if m.call is call]:
            await self._end_monitor(monitor, "call_ended")
        if conversation is not None:
            self.kept(await self.store.add_recording(call.call_id, None, conversation.kind, str(conversation.path),
                                                     conversation.duration_s, conversation.sha256,
                                                     conversation.complete))
        if call.case is None:
            # The agent filed nothing during the call: the matter still becomes a case, which
            # the agent completes during wrap-up (or the back office later).
            call.case = await self._new_case(call, "ivr")
        await self.store.attach_recordings(call.call_id, call.case.id)
        await self._write_notes(call)
        if agent_id is not None:
            self._publish(agent_id, {"type": "call_ended", "call_key": key,
                                     "tracking_code": call.case.tracking_code})
        return call.case.tracking_code

    async def _write_notes(self, call: DeskCall) -> None:
        """What happened to the call before it had a case, into the case's history now that it has one."""
        assert call.case is not None
        for actor, kind, details in call.notes:
            await self.store.add_case_event(call.case.id, actor, kind, **details)
        call.notes.clear()

    # -- softswitch.web.console.Desk -----------------------------------------
    def verify_agent(self, agent_id: str, password: str) -> bool:
        account = self._accounts.get(agent_id)
        return account is not None and verify_password(password, account.console_password)

    def agent_account(self, agent_id: str) -> AgentAccount | None:
        return self._accounts.get(agent_id)

    def desk_host(self, agent_id: str) -> str | None:
        host = self.acd.call_host(agent_id)
        return host if host and host != self.host else None

    def call_desk_host(self, call_key: str) -> str | None:
        if call_key in self._calls:
            return None
        agent = next((a for a in self.acd.agents() if a.call_key == call_key), None)
        return None if agent is None else self.desk_host(agent.id)

    def current_offer(self, agent_id: str) -> dict[str, Any] | None:
        call = self._by_agent.get(agent_id)
        if call is None:
            return None
        pop = call.current_pop()
        if pop is not None and call.agent_id != agent_id:
            pop["state"] = "ended"  # handed to an agency's line: the caller talks on, the agent's part is over
        return pop

    def subscribe(self, agent_id: str) -> asyncio.Queue[dict[str, Any]]:
        return self._listeners.setdefault(agent_id, Fanout(SUBSCRIBER_QUEUE)).subscribe()

    def unsubscribe(self, agent_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        listeners = self._listeners.get(agent_id)
        if listeners is not None:
            listeners.unsubscribe(queue)
            if not listeners:
                del self._listeners[agent_id]

    async def file_case(self, agent_id: str, call_key: str, agency_id: str, category: str, summary: str,
                        override_reason: str | None = None) -> FiledCase:
        """File the call's matter under the one duplicate rule (``Store.intake``).

        A duplicate links the call to the open case it repeats: a contact in that case's
        history, the call's recordings joining it when the call ends, and its code is the
        one "give tracking code" reads. With ``override_reason`` a new case is opened even
        so, and the reason is kept in the history of both cases. A call that already has a
        case of its own (opened when it ended unfiled) has that case completed and referred.
        """
        call = self._agents_call(agent_id, call_key)
        self._check_agency(agency_id)
        if category not in self.categories:
            raise ValueError("دسته‌بندی معتبر نیست.")
        # What the agent types is kept and shown to others: no bidi or other control characters.
        summary = clean_text(summary).strip()
        if not summary:
            raise ValueError("خلاصه درخواست را بنویسید.")
        reason = None if override_reason is None else clean_text(override_reason).strip()
        if reason == "":
            raise ValueError("دلیل ثبت جداگانه را بنویسید.")
        actor = f"agent:{agent_id}"
        if call.case is not None and not call.linked:
            case = await self.store.file_case(call.case.id, agency_id, category, summary, actor)
            if case.status in UNFILED_STATUSES:
                case = await self.store.set_case_status(case.id, "referred", actor)
            call.case = case
        elif call.case is not None and reason is None and (call.case.agency, call.case.category) == (
                agency_id, category):
            pass  # filed again as the same duplicate: its contact is in the history already
        else:
            subject, submitter = call.session.parties()
            result = await self.store.intake(
                subject, channel="phone", agency=agency_id, category=category, summary=summary, actor=actor,
                window_s=duplicate_window_s(self.config.cases.duplicate_window_days), submitter=submitter,
                call_id=call.call_id, override_reason=reason)
            call.case, call.linked = result.case, result.duplicate
            self.on_filed("phone", result.duplicate)
            if not result.duplicate:
                await self.store.attach_recordings(call.call_id, result.case.id)
                if reason is not None:
                    await self._note_override(result.case, actor, reason)
        with logs.call_context(call.log_context):
            log.info("case %s filed by agent %s%s", code_tail(call.case.tracking_code), agent_id,
                     " (linked: a duplicate)" if call.linked else "",
                     extra={"event": "case", "tracking_code_tail": code_tail(call.case.tracking_code)})
        self._publish(agent_id, {"type": "case_filed", "call_key": call_key, "tracking_code": call.case.tracking_code,
                                 "duplicate": call.linked})
        return FiledCase(call.case.tracking_code, call.linked)

    async def refer_case(self, agent_id: str, tracking_code: str, agency_id: str) -> str:
        """Refer again a case the agent can see: the current call's, or one in its screen-pop's history."""
        call = self._by_agent.get(agent_id)
        if call is None or tracking_code not in self._visible_codes(call):
            raise PermissionError("این پرونده در میز شما نیست.")
        self._check_agency(agency_id)
        try:
            case = await self.store.get_case(tracking_code)
        except NotFound:
            raise LookupError("پرونده‌ای با این کد پیگیری نیست.") from None
        if case.status == "closed":
            raise ValueError("این پرونده بسته شده است.")
        if case.agency == agency_id:
            raise ValueError("پرونده هم‌اکنون به همین دستگاه ارجاع شده است.")
        case = await self.store.refer_case(case.id, agency_id, f"agent:{agent_id}")
        if call.case is not None and call.case.id == case.id:
            call.case = case
        self._publish(agent_id, {"type": "case_referred", "tracking_code": case.tracking_code, "agency": agency_id})
        return case.tracking_code

    async def attach_case(self, agent_id: str, call_key: str, tracking_code: str, reason: str | None = None) -> str:
        """Attach the call to a case of the caller's or the subject's; any other case only with ``reason``.

        A code alone would let an agent put a call (and its recordings) into any citizen's
        case and then refer it, so a case neither person owns (``Store.person_matches``)
        needs a reason, kept in its history as ``attach_override``; without one, ReasonRequired.
        """
        call = self._agents_call(agent_id, call_key)
        if call.case is not None:
            raise ValueError("برای این تماس پرونده ثبت شده است.")
        reason = clean_text(reason).strip() if reason is not None else ""
        try:
            case = await self.store.get_case(tracking_code.strip())
        except NotFound:
            raise LookupError("پرونده‌ای با این کد پیگیری نیست.") from None
        owned = await self._owned_by_the_call(call, case)
        if not owned and not reason:
            raise ReasonRequired("این پرونده به تماس‌گیرنده یا شخص موضوع درخواست تعلق ندارد؛ دلیل پیوست را بنویسید.")
        actor = f"agent:{agent_id}"
        call.case = case
        await self.store.attach_recordings(call.call_id, case.id)
        await self.store.add_case_event(case.id, actor, "contact", call_id=call.call_id)
        if not owned:
            await self.store.add_case_event(case.id, actor, "attach_override", call_id=call.call_id, reason=reason)
        with logs.call_context(call.log_context):
            log.info("attached by agent %s to case %s%s", agent_id, code_tail(case.tracking_code),
                     "" if owned else " of another person, with a reason",
                     extra={"event": "case", "tracking_code_tail": code_tail(case.tracking_code)})
        self._publish(agent_id, {"type": "case_filed", "call_key": call_key, "tracking_code": case.tracking_code})
        return case.tracking_code

    async def give_tracking_code(self, agent_id: str, call_key: str) -> str:
        """The IVR reads the code to the caller, digit by digit, while the agent stays on the line."""
        call = self._agents_call(agent_id, call_key)
        if call.case is None:
            raise LookupError("ابتدا پرونده را ثبت کنید.")
        channel = call.channel
        if channel is None or call.state != "connected" or call.agent_id != agent_id:
            raise ValueError("تماس پایان یافته است.")  # or handed to an agency's line, which talks on it
        code = call.case.tracking_code
        if call.reading is None or call.reading.done():
            call.reading = asyncio.ensure_future(
                # A duplicate: the caller hears that the request is already registered, and its code.
                # In the caller's language.
                read_tracking_code(channel, self.languages.get(call.session.language or "", self.prompts), code,
                                   self.config.ivr.tracking_code_repeats,
                                   intro="already_registered" if call.linked else "tracking_code_intro"))
        await self.store.add_case_event(call.case.id, f"agent:{agent_id}", "tracking_code_read", call_id=call.call_id)
        self._publish(agent_id, {"type": "tracking_code_read", "call_key": call_key, "tracking_code": code})
        return code

    async def ratings_today(self) -> list[RatingSummary]:
        """Today's survey results (the hotline's date) per agent, from the store that every host shares."""
        today = rating_day(time.time(), self._tz)
        return rating_summaries(await self.store.rating_counts("agent", since_day=today, until_day=today))

    async def recording_path(self, agent_id: str, recording_id: int) -> Path | None:
        call = self._by_agent.get(agent_id)
        if call is None:
            return None
        try:
            recording = await self.store.get_recording(recording_id)
        except NotFound:
            return None
        return Path(recording.path) if recording.call_id == call.call_id else None

    # -- supervision: listen, whisper, barge -----------------------------------
    def monitoring(self, supervisor_id: str) -> dict[str, Any] | None:
        """The call this supervisor is on (``call_key``, ``mode``, ``state``: ringing | joined), or None."""
        monitor = self._monitors.get(supervisor_id)
        return None if monitor is None else monitor.view()

    async def monitor(self, supervisor_id: str, call_key: str, mode: str) -> dict[str, Any]:
        """Ring the supervisor's phone from the call's worker and join it in ``mode``; on a call already
        joined, switch the mode. Returns once joined. PermissionError for an agent who is not a
        supervisor, LookupError for a call not in conversation, ValueError (Persian) for the rest."""
        account = self._accounts.get(supervisor_id)
        if account is None or not account.supervisor:
            raise PermissionError("این کار فقط برای سرپرستان است.")
        if mode not in MONITOR_MODES:
            raise ValueError("حالت شنود نامعتبر است.")
        call = self._calls.get(call_key)
        if call is None or call.state != "connected" or call.channel is None or call.agent_leg is None:
            raise LookupError("این تماس در جریان نیست.")
        if call.agent_id == supervisor_id:
            raise ValueError("تماس خودتان را نمی‌توانید شنود کنید.")
        current = self._monitors.get(supervisor_id)
        if current is not None and current.call is not call:
            raise ValueError("ابتدا شنود تماس دیگر را پایان دهید.")
        if current is not None:
            if current.state == "joined" and mode != current.mode:
                call.channel.monitor(current.leg, call.agent_leg, mode)
                current.mode = mode
                await self._note_monitor(current, "switch")
            current.mode = mode  # still ringing: it joins in the mode asked last
            return current.view()
        own = self._by_agent.get(supervisor_id)
        if own is not None and own.agent_id == supervisor_id and own.state in ("ringing", "connected"):
            raise ValueError("شما اکنون خودتان در تماس هستید.")  # a call of theirs in wrap-up is no hindrance
        if self.acd.agent(supervisor_id).state not in (AgentState.LOGGED_OUT, AgentState.PAUSED):
            # The queue would ring the phone that is listening.
            raise ValueError("شما در صف پاسخ‌گویی هستید؛ برای شنود، ابتدا مکث کنید.")
        monitor = DeskMonitor(supervisor_id, call, mode, call.channel.dial(self.agent_uri(supervisor_id)))
        self._monitors[supervisor_id] = monitor
        self._publish(supervisor_id, {"type": "monitor", "monitor": monitor.view()})
        try:
            answered = await monitor.leg.wait_answered(self.config.agents.ring_timeout_s)
        except BaseException:
            await self._end_monitor(monitor, "cancelled")
            raise
        if self._monitors.get(supervisor_id) is not monitor:
            raise LookupError("این تماس در جریان نیست.")  # it ended while the supervisor's phone rang
        if not answered or call.channel is None or call.agent_leg is None:
            await self._end_monitor(monitor, "not_answered")
            raise ValueError("تلفن شما پاسخ نداد.")
        call.channel.monitor(monitor.leg, call.agent_leg, monitor.mode)
        monitor.state = "joined"
        monitor.watch = asyncio.ensure_future(self._watch_monitor(monitor))
        await self._note_monitor(monitor, "start")
        return monitor.view()

    async def stop_monitor(self, supervisor_id: str) -> None:
        """The supervisor leaves the call: their leg is hung up. LookupError if they are on none."""
        monitor = self._monitors.get(supervisor_id)
        if monitor is None:
            raise LookupError("شنودی در جریان نیست.")
        await self._end_monitor(monitor, "stopped")

    async def _watch_monitor(self, monitor: DeskMonitor) -> None:
        await monitor.leg.wait_ended()
        await self._end_monitor(monitor, "supervisor_hung_up")

    async def _end_monitor(self, monitor: DeskMonitor, reason: str) -> None:
        if self._monitors.get(monitor.supervisor_id) is not monitor:
            return  # ended already, by another way
        del self._monitors[monitor.supervisor_id]
        if monitor.watch is not None and monitor.watch is not asyncio.current_task():
            monitor.watch.cancel()
        if not monitor.leg.ended:
            await monitor.leg.hangup()
        if monitor.state == "joined":
            await self._note_monitor(monitor, "stop", reason)
        self._publish(monitor.supervisor_id, {"type": "monitor", "monitor": None, "reason": reason})

    async def _note_monitor(self, monitor: DeskMonitor, action: str, reason: str | None = None) -> None:
        """Every start, switch and stop: a log line under the call's Call-ID, and the case's history."""
        call = monitor.call
        note: dict[str, Any] = {"action": action, "mode": monitor.mode, "supervisor": monitor.supervisor_id,
                                "call_id": call.call_id, "at": time.time()}
        if reason is not None:
            note["reason"] = reason
        with logs.call_context(call.log_context):
            log.info("supervisor %s: %s %s on agent %s's call%s", monitor.supervisor_id, action, monitor.mode,
                     call.agent_id, f" ({reason})" if reason else "",
                     extra={"event": "monitor", "action": action, "mode": monitor.mode,
                            "supervisor": monitor.supervisor_id})
        await self._note(call, f"supervisor:{monitor.supervisor_id}", "monitored", note)
        if action != "stop":
            self._publish(monitor.supervisor_id, {"type": "monitor", "monitor": monitor.view()})

    # -- helpers -------------------------------------------------------------
    async def _note(self, call: DeskCall, actor: str, kind: str, details: dict[str, Any]) -> None:
        """Into the case's history, or kept until the call has a case."""
        if call.case is not None:
            await self.store.add_case_event(call.case.id, actor, kind, **details)
        else:
            call.notes.append((actor, kind, details))

    def _agents_call(self, agent_id: str, call_key: str) -> DeskCall:
        call = self._by_agent.get(agent_id)
        if call is None or call.key != call_key:
            raise PermissionError("این تماس به شما واگذار نشده است.")
        return call

    async def _owned_by_the_call(self, call: DeskCall, case: Case) -> bool:
        """Whether the call's caller or subject is the case's subject or the one who asked for them."""
        for person in (call.session.caller, call.session.subject):
            if person is not None and person.national_id and await self.store.person_matches(case.id,
                                                                                            person.national_id):
                return True
        return False

    def _check_agency(self, agency_id: str) -> None:
        if agency_id not in {a.id for a in self.agencies}:
            raise ValueError("نهاد مسئول معتبر نیست.")

    @staticmethod
    def _visible_codes(call: DeskCall) -> set[str]:
        codes = {case["tracking_code"] for key in ("history", "subject_history") for case in (call.pop or {}).get(key, ())}
        if call.case is not None:
            codes.add(call.case.tracking_code)
        return codes

    async def _note_override(self, case: Case, actor: str, reason: str) -> None:
        """The store notes the override in the new case; the case it duplicates gets the reason too."""
        for event in await self.store.case_events(case.id):
            if event.kind == "duplicate_override" and isinstance(event.detail.get("of"), str):
                with contextlib.suppress(NotFound):
                    earlier = await self.store.get_case(event.detail["of"])
                    await self.store.add_case_event(earlier.id, actor, "duplicate_override", case=case.tracking_code,
                                                    reason=reason)

    async def _new_case(self, call: DeskCall, actor: str) -> Case:
        subject, on_behalf_of = call.session.parties()
        return await self.store.open_call_case(call.call_id, subject, on_behalf_of, actor=actor)

    async def screen_pop(self, call: DeskCall) -> dict[str, Any]:
        s = call.session
        caller, subject = s.caller, s.subject
        pop = {
            "call_key": call.key, "state": call.state, "caller_number": call.caller_number,
            "national_id": caller.national_id if caller else None,
            "id_status": caller.status if caller else "none",
            "id_audio": call.id_audio.get("caller", []) if not caller or caller.status != "verified" else [],
            "subject_id": subject.national_id if subject else None,
            "subject_id_status": subject.status if subject else None,
            "subject_id_audio": (call.id_audio.get("subject", [])
                                 if subject is not None and subject.status != "verified" else []),
            "history": await self._history(caller),
            "subject_history": await self._history(subject),
            "queued_s": round(call.queued_s, 1),
            # The language the caller chose, when there was a choice: the agent answers in it.
            "language": self._language_labels.get(s.language or ""),
            # The agency the caller chose at the topic menu: the case form starts with it.
            "topic": s.topic,
            # A callback the caller booked: the softswitch called them, and they did not wait on the line.
            "callback": s.callback,
            "case": call.case_view(),
        }
        call.pop = pop
        return pop

    async def _history(self, person: PersonId | None) -> list[dict[str, Any]]:
        if person is None or person.national_id is None:
            return []
        names = {a.id: a.name for a in self.agencies}
        return [{"tracking_code": c.tracking_code, "created_at": c.created_at, "status": c.status,
                 "agency": names.get(c.agency or "", c.agency), "category": c.category, "summary": c.summary}
                for c in reversed(await self.store.cases_for_national_id(person.national_id))]

    def _publish(self, agent_id: str, event: dict[str, Any]) -> None:
        listeners = self._listeners.get(agent_id)
        if listeners is not None:
            listeners.publish(event)

    async def _forward_agent_events(self) -> None:
        """The ACD's agent-state changes reach that agent's console too."""
        while True:
            event = await self._acd_events.get()
            agent = event.get("agent")
            if event.get("type") == "agent" and isinstance(agent, dict) and "id" in agent:
                self._publish(str(agent["id"]), event)
