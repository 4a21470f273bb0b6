"""IVR layer: one call from greeting to goodbye, as a state machine.

When more than one language is offered the call starts at the language menu
(ivr/language.py): the rest of it speaks the chosen language, and its queue
entry asks for an agent who does. Greeting -> the caller's national ID
(ivr/identify.py) -> menu: 1 talk to an agent (offered only in office hours
with agents logged in; out of hours the caller hears when live service
resumes), 2 record a message, 3 follow up on a tracking code
(ivr/follow_up.py, then goodbye) -> about whom (the caller, or someone else
whose ID is then taken the same way) -> either the live queue (ivr/live.py;
first the topic menu, ivr/topic.py, when queue.topics lists agencies), or the
message after the tone, tracking code read back, the offer of its SMS
(ivr/sms_offer.py, once, to a mobile number), goodbye. A caller who leaves
the queue for a recorded message keeps the IDs already captured; one who
books a callback (queue.callback) hears it booked and is let go. The
callback's own call, placed by the control process when its turn comes,
runs this same flow from the queue on (``CallFlow(callback=...)``), with the
IDs and choices the booking kept. Whatever
point the call ends at, what was recorded is kept and attached to the call,
and a message (even a partial one) always becomes a case, filed under the
person it concerns. After an agent's call, or an agency's answer heard in a
follow-up, the caller may be asked to rate the service (ivr/survey.py).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ivr.announcements import resume_prompts
from ivr.channel import ANY_KEY, CallChannel, CallEnded, LiveChannel, RecordingResult
from ivr.follow_up import FailureThrottle, FollowUpCases, follow_up
from ivr.identify import SpeechDigits, Whose, ask_about_whom, identify
from ivr.language import choose_language
from ivr.live import CallbackRequest, LiveCall, LiveService
from ivr.menu import choose
from ivr.recorded_message import CaseSink, read_tracking_code, record_message
from ivr.sms_offer import SmsOffer, offer_sms
from ivr.steps import took
from ivr.survey import Survey, SurveyTopic, ask_rating
from ivr.topic import choose_topic
from softswitch.domain.tracking_code import code_tail
from softswitch.config import FollowUpConfig, IvrConfig, agency_skill, language_skill
from softswitch.domain.acd import AgentStatus, QueueEntry
from softswitch.domain.office_hours import OfficeHours
from storage.models import PersonId

log = logging.getLogger("ivr.call_flow")


class IvrState(enum.Enum):
    LANGUAGE = "language"
    GREETING = "greeting"
    CALLER_ID = "national_id"
    MENU = "menu"
    ABOUT_WHOM = "about_whom"
    SUBJECT_ID = "subject_id"
    ROUTE = "route"
    TOPIC = "topic"
    QUEUE = "queue"
    FOLLOW_UP = "follow_up"
    SURVEY = "survey"
    MESSAGE = "message"
    TRACKING_CODE = "tracking_code"
    SMS_OFFER = "sms"
    GOODBYE = "goodbye"
    DONE = "done"


# (state, outcome of its step) -> next state; None is the only outcome of most steps.
TRANSITIONS: dict[tuple[IvrState, str | None], IvrState] = {
    (IvrState.LANGUAGE, None): IvrState.GREETING,
    (IvrState.GREETING, None): IvrState.CALLER_ID,
    (IvrState.CALLER_ID, None): IvrState.MENU,
    (IvrState.MENU, "live"): IvrState.ABOUT_WHOM,
    (IvrState.MENU, "message"): IvrState.ABOUT_WHOM,
    (IvrState.MENU, "follow_up"): IvrState.FOLLOW_UP,
    (IvrState.FOLLOW_UP, None): IvrState.GOODBYE,
    # The survey, after an agency's answer or once the agent has left; its thanks say goodbye.
    (IvrState.FOLLOW_UP, "survey"): IvrState.SURVEY,
    (IvrState.QUEUE, "survey"): IvrState.SURVEY,
    (IvrState.SURVEY, "rated"): IvrState.DONE,
    (IvrState.SURVEY, "no_key"): IvrState.GOODBYE,
    (IvrState.SURVEY, "invalid"): IvrState.GOODBYE,
    (IvrState.SURVEY, "hangup"): IvrState.DONE,
    (IvrState.ABOUT_WHOM, "self"): IvrState.ROUTE,
    (IvrState.ABOUT_WHOM, "other"): IvrState.SUBJECT_ID,
    (IvrState.SUBJECT_ID, None): IvrState.ROUTE,
    (IvrState.ROUTE, "live"): IvrState.TOPIC,
    (IvrState.TOPIC, None): IvrState.QUEUE,
    (IvrState.ROUTE, "message"): IvrState.MESSAGE,
    (IvrState.QUEUE, "to_message"): IvrState.MESSAGE,
    (IvrState.QUEUE, "handled"): IvrState.DONE,
    (IvrState.QUEUE, "callback"): IvrState.DONE,
    (IvrState.QUEUE, "agent_lost"): IvrState.TRACKING_CODE,
    (IvrState.MESSAGE, None): IvrState.TRACKING_CODE,
    (IvrState.TRACKING_CODE, None): IvrState.SMS_OFFER,
    (IvrState.SMS_OFFER, None): IvrState.GOODBYE,
    (IvrState.GOODBYE, None): IvrState.DONE,
}


@dataclass
class Session:
    """What one call's pass through the flow produced; ``path`` is the CDR's IVR path."""

    state: IvrState = IvrState.GREETING
    path: list[str] = field(default_factory=list)
    mode: str = "message"  # message | live
    caller: PersonId | None = None
    subject: PersonId | None = None  # set only when the request concerns someone else
    message: RecordingResult | None = None
    tracking_code: str | None = None
    agent_id: str | None = None
    survey: SurveyTopic | None = None  # what the caller is asked to rate, once it is offered
    ended_by: str | None = None
    sms_offered: bool = False  # a caller is asked at most once a call
    language: str | None = None  # the language the caller chose, when there was a choice
    topic: str | None = None  # the agency the caller chose at the topic menu, if any
    callback: bool = False  # this is a callback's call: the softswitch called the caller back

    def parties(self) -> tuple[PersonId, PersonId | None]:
        """(the person a case is filed under, the caller when they called for someone else)."""
        caller = self.caller or PersonId(None, "none", "none")
        return (self.subject, caller) if self.subject is not None else (caller, None)


@dataclass
class FollowUp:
    """Follow-up as one call sees it: the cases, the rules, the throttle shared by every call."""

    cases: FollowUpCases
    cfg: FollowUpConfig
    throttle: FailureThrottle


@dataclass
class Live:
    """Live mode as one call sees it: the shared queue, the office hours, and whether a national ID has a
    case still open since a time (a repeat caller's priority; None: no priorities)."""

    service: LiveService
    hours: OfficeHours
    open_case: Callable[[str, float], Awaitable[bool]] | None = None


@dataclass(frozen=True)
class CallbackTurn:
    """A callback's call, answered: its queue entry, the agent reserved for it, and the session its booking
    kept (the IDs, the language, the topic)."""

    entry: QueueEntry
    agent: AgentStatus
    session: Session


class CallFlow:
    def __init__(self, channel: CallChannel, prompts: Any, cases: CaseSink, cfg: IvrConfig,
                 label: str, recognizer: SpeechDigits | None = None, live: Live | None = None,
                 caller_number: str = "", follow_up: FollowUp | None = None, survey: Survey | None = None,
                 sms: SmsOffer | None = None, languages: Mapping[str, Any] | None = None,
                 callback: CallbackTurn | None = None) -> None:
        """``languages``: every language's prompts by code, the first one's being ``prompts``; with more
        than one the call starts at the language menu. ``callback``: this is a callback's call, which starts
        in the queue (the intro said) with the agent it was offered."""
        self.channel = channel
        self.recognizer = recognizer
        self.prompts = prompts
        self.languages = languages or {}
        self.cases = cases
        self.cfg = cfg
        self.label = label
        self.live = live
        self.caller_number = caller_number
        self.follow_up = follow_up
        self.survey = survey
        self.sms = sms
        self.session = Session(state=IvrState.LANGUAGE if len(self.languages) > 1 else IvrState.GREETING)
        self.callback = callback
        if callback is not None:
            self.session = callback.session
            self.session.state, self.session.callback = IvrState.QUEUE, True
            language = callback.session.language
            if language is not None and language in self.languages:
                self.prompts = self.languages[language]

    def _set_state(self, new: IvrState) -> None:
        log.debug("%s: %s -> %s", self.label, self.session.state.value, new.value)
        self.session.state = new

    async def run(self) -> Session:
        s = self.session
        try:
            while s.state is not IvrState.DONE:
                outcome = await self._enter(s.state)
                self._set_state(TRANSITIONS[(s.state, outcome)])
        except CallEnded as ended:
            s.ended_by = ended.reason
            took(s.path, f"ended:{s.state.value}")
        finally:
            await self._file()
        return s

    async def _enter(self, state: IvrState) -> str | None:
        s = self.session
        match state:
            case IvrState.LANGUAGE:
                s.language = await choose_language(self.channel, self.languages, self.cfg)
                self.prompts = self.languages[s.language]
                took(s.path, f"language:{s.language}")
            case IvrState.GREETING:
                took(s.path, "greeting")
                await self.channel.play([self.prompts.path("greeting")], interrupt=ANY_KEY)
            case IvrState.CALLER_ID:
                # Digits keyed during the greeting already count: they are the ID.
                found = await identify(self.channel, self.prompts, self.cases, self.cfg, self.recognizer,
                                       Whose.CALLER, s.path)
                s.caller = found.person
            case IvrState.MENU:
                s.mode = await self._menu()
                took(s.path, f"menu:{s.mode}")
                return s.mode
            case IvrState.FOLLOW_UP:
                assert self.follow_up is not None
                f = self.follow_up
                caller = s.caller if s.caller is not None and s.caller.status == "verified" else None
                told = await follow_up(self.channel, self.prompts, f.cases, f.cfg, self.cfg, f.throttle,
                                       self.caller_number, caller.national_id if caller else None)
                took(s.path, f"follow_up:{told.outcome}")
                if told.answered_code is not None:
                    return self._offer_survey(SurveyTopic("follow_up", told.answered_code))
            case IvrState.ABOUT_WHOM:
                other = await ask_about_whom(self.channel, self.prompts, self.cfg)
                took(s.path, "about:" + ("other" if other else "self"))
                return "other" if other else "self"
            case IvrState.SUBJECT_ID:
                found = await identify(self.channel, self.prompts, self.cases, self.cfg, self.recognizer,
                                       Whose.SUBJECT, s.path)
                s.subject = found.person
            case IvrState.ROUTE:
                return s.mode
            case IvrState.TOPIC:
                assert self.live is not None
                topics = self.live.service.queue.topics
                if topics:
                    s.topic = await choose_topic(self.channel, self.prompts, topics, self.cfg)
                    took(s.path, f"topic:{s.topic or 'none'}")
            case IvrState.QUEUE:
                assert self.live is not None
                channel: LiveChannel = self.channel  # type: ignore[assignment]
                live_call = LiveCall(channel, self.prompts, self.live.service, self.label)
                if self.callback is not None:
                    turn, self.callback = self.callback, None
                    took(s.path, "callback")
                    await self.channel.play([self.prompts.path("callback_intro")])
                    result = await live_call.call_back(turn.entry, turn.agent)
                else:
                    skills = ([language_skill(s.language)] if s.language is not None else []) + (
                        [agency_skill(s.topic)] if s.topic is not None else [])
                    priority = await self._priority()
                    result = await live_call.run(self.caller_number, skills, priority, CallbackRequest(
                        self.caller_number, priority, tuple(skills), s.language, s.topic, s.caller, s.subject))
                s.agent_id = result.agent_id
                took(s.path, f"queue:{result.outcome}")
                if result.outcome == "callback":
                    await self.channel.play([self.prompts.path("callback_booked")])
                    await self.channel.hangup()
                elif result.outcome == "to_message":
                    await self.channel.play([self.prompts.path("queue_to_message")])
                elif result.outcome == "agent_lost":
                    # The conversation is a case already: the caller is told its code.
                    s.tracking_code = result.tracking_code
                    await self.channel.play([self.prompts.path("agent_lost")])
                else:
                    return self._offer_survey(SurveyTopic("agent", result.tracking_code, result.agent_id),
                                              otherwise=result.outcome)
                return result.outcome
            case IvrState.SURVEY:
                assert self.survey is not None and s.survey is not None
                rating = await ask_rating(self.channel, self.prompts, self.survey, s.survey)
                took(s.path, f"survey:{rating.outcome}")
                return rating.outcome
            case IvrState.MESSAGE:
                s.message = await record_message(self.channel, self.prompts, self.cfg)
                await self.cases.keep_recording(s.message)
                took(s.path, f"message:{s.message.reason}")
                await self._open_case()
                if s.tracking_code is None and not self.channel.ended:
                    took(s.path, "no_message")
                    await self.channel.play([self.prompts.path("no_message")])
                if self.channel.ended:
                    raise CallEnded("caller hung up")
            case IvrState.TRACKING_CODE:
                if s.tracking_code is not None:
                    took(s.path, "tracking_code")
                    await read_tracking_code(self.channel, self.prompts, s.tracking_code,
                                             self.cfg.tracking_code_repeats)
            case IvrState.SMS_OFFER:
                if self.sms is not None and s.tracking_code is not None and not s.sms_offered:
                    s.sms_offered = True
                    took(s.path, "sms:" + await offer_sms(self.channel, self.prompts, self.sms, s.tracking_code,
                                                          self.caller_number))
            case IvrState.GOODBYE:
                await self.channel.play([self.prompts.path("goodbye")])
                took(s.path, "goodbye")
                await self.channel.hangup()
        return None

    def _offer_survey(self, topic: SurveyTopic, otherwise: str | None = None) -> str | None:
        """The outcome "survey" when the survey follows this topic and the caller is still on the line."""
        if self.survey is None or not self.survey.offered_after(topic.kind) or self.channel.ended:
            return otherwise
        self.session.survey = topic
        return "survey"

    async def _priority(self) -> int:
        """A repeat caller's priority in the queue: the person the call is about (verified) has a case still
        being handled, opened within queue.repeat_caller_days."""
        assert self.live is not None
        queue, s = self.live.service.queue, self.session
        person = s.subject or s.caller
        if (not queue.repeat_caller_priority or self.live.open_case is None or person is None
                or person.status != "verified" or person.national_id is None):
            return 0
        since = time.time() - queue.repeat_caller_days * 86400
        if not await self.live.open_case(person.national_id, since):
            return 0
        took(s.path, "priority:repeat")
        return queue.repeat_caller_priority

    async def _menu(self) -> str:
        """1: an agent (in office hours, with agents on duty), 2: a recorded message, 3: follow-up.

        When live service is not offered the caller hears why (out of hours:
        when it resumes) and the menu without option 1. No choice: a recorded message.
        """
        live = self.live
        keys = {"1": "live", "2": "message", "3": "follow_up"}
        if self.follow_up is None:
            del keys["3"]
        notice: list[Path] = []
        if live is None:
            del keys["1"]
        else:
            now = datetime.now(timezone.utc)
            if not live.hours.is_open(now):
                notice = resume_prompts(self.prompts, now, live.hours.next_opening(now))
                del keys["1"]
            elif not live.service.acd.available():
                notice = [self.prompts.path("live_unavailable")]
                del keys["1"]
        if len(keys) == 1:
            if notice:
                await self.channel.play(notice)
            return "message"
        menu = "menu_main" if "1" in keys else "menu_main_closed"
        if notice:
            await self.channel.play(notice, interrupt=ANY_KEY)
        choice = await choose(self.channel, self.prompts, [self.prompts.path(menu)], "".join(keys), self.cfg,
                              default="2")
        return keys.get(choice or "2", "message")

    async def _open_case(self) -> None:
        s = self.session
        message = s.message
        if s.tracking_code is not None or message is None:
            return
        if not message.heard_speech and message.reason == "no_input":
            return
        # Filed under the person the request concerns; the caller is kept beside them.
        subject, on_behalf_of = s.parties()
        complete = message.complete and message.reason not in ("hangup", "lost")
        s.tracking_code = await self.cases.open_case(subject=subject, caller=on_behalf_of, complete=complete)
        log.info("case %s opened for the message%s", code_tail(s.tracking_code), "" if complete else " (incomplete)",
                 extra={"event": "case", "tracking_code_tail": code_tail(s.tracking_code)})

    async def _file(self) -> None:
        """After the call ends at any point: a message, even a partial one, becomes a case."""
        try:
            await self._open_case()
        except Exception:
            log.exception("%s: could not file the case", self.label)
            raise
