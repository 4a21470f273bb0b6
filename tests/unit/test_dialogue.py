"""Every dialogue path of the IVR, through its real channel code and a scripted worker, on virtual time.

The flow (``ivr/call_flow.py`` and the steps it calls) talks to a real
``softswitch.control.calls.ControlCall``; a ``tests.fakes.scripted_worker`` plays the
media worker and the caller: prompts last as long as they would, keys arrive
when the caller presses them, recordings end by the tape's rules. The IVR's
real timers apply (6 s menu timeouts, 15 s of no input), at no wall time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ivr.call_flow import CallbackTurn, CallFlow, FollowUp, IvrState, Live, Session
from ivr.follow_up import CASE_FAILURE_FACTOR, CaseStatus, FailureThrottle
from ivr.live import CallbackBooking, CallbackRequest, LiveService, Transfer
from ivr.survey import Survey, SurveyTopic
from ivr.sms_offer import SmsOffer
from softswitch import protocol
from softswitch.config import (AgentAccount, AgentsConfig, FollowUpConfig, IvrConfig, OfficeHoursConfig,
                               QueueConfig, SurveyConfig)
from softswitch.domain.acd import Acd, QueueEntry
from softswitch.domain.national_id import is_valid_national_id
from softswitch.domain.office_hours import OfficeHours
from softswitch.domain.tracking_code import is_tracking_code, verhoeff_check_digit
from storage.errors import NotFound, StoreError
from storage.models import CallRecord, PersonId
from tests.fakes.counters import FakeCounts
from tests.fakes.ivr_parts import (FakeCases, FakeDesk, FakeFollowUpCases, FakeLanguagePrompts, FakePrompts,
                                   FakeRatings, FakeRecognizer)
from tests.fakes.scripted_worker import AgentPhone, Played, Script, ScriptedWorker
from tests.fakes.virtual_time import run_virtual

pytestmark = pytest.mark.unit

NATIONAL_ID = "0499370899"
OTHER_ID = "0067749828"  # the person a caller calls about
BAD_ID = "0499370898"  # wrong check digit
# How long the fake prompts last (seconds); any other prompt lasts 1 s, a digit 1 s.
PROMPTS = {"greeting": 4.0, "ask_national_id": 3.0, "your_national_id_is": 1.5, "confirm_national_id": 2.0,
           "menu_main_closed": 3.0, "ask_about_whom": 3.0, "record_after_tone": 2.0, "beep": 0.5}
READ_BACK_S = 1.5 + 10 + 2.0  # "your ID is", ten digits, "1 to confirm, 2 to re-enter"


def test_ids_are_what_the_tests_say() -> None:
    assert is_valid_national_id(NATIONAL_ID) and is_valid_national_id(OTHER_ID)
    assert not is_valid_national_id(BAD_ID)


def call(script: Script, recognizer: FakeRecognizer | None = None, *, known: FakeFollowUpCases | None = None,
         throttle: FailureThrottle | None = None, caller_number: str = "02188776655",
         survey: Survey | None = None, sms: SmsOffer | None = None, languages: Mapping[str, Any] | None = None,
         **ivr: Any) -> tuple[Session, ScriptedWorker, FakeCases]:
    """One call through the flow: out of office hours (menu: 2 a message, 3 follow-up)."""
    worker = ScriptedWorker(script, PROMPTS)
    cases = FakeCases()
    follow = FollowUp(known or FakeFollowUpCases(), FollowUpConfig(),
                      throttle or FailureThrottle(FakeCounts(), 5, 3600.0, clock=lambda: asyncio.get_running_loop().time()))

    async def run() -> Session:
        channel = worker.answer()
        prompts = next(iter(languages.values())) if languages else FakePrompts()
        flow = CallFlow(channel, prompts, cases, IvrConfig(**ivr), "test-call", recognizer=recognizer,
                        caller_number=caller_number, follow_up=follow, survey=survey, sms=sms, languages=languages)
        return await flow.run()
    return run_virtual(run()), worker, cases


def read_back(worker: ScriptedWorker) -> Played:
    """The first read-back of an ID the caller was played."""
    return next(p for p in worker.played if any("your_national_id_is" in f for f in p.files))


def after_ask() -> float:
    """When the first ID prompt has ended (greeting, ask), if the caller keyed nothing before it."""
    return 4.0 + 3.0


def test_keyed_id_confirmed_then_a_message_becomes_a_case() -> None:
    t = after_ask() + 1.0
    script = (Script().key(t, NATIONAL_ID)
              .key(t + 2.5 + READ_BACK_S + 0.5, "1")       # confirms after the read-back
              .key(t + 2.5 + READ_BACK_S + 5.0, "2")       # menu: a recorded message
              .key(t + 2.5 + READ_BACK_S + 9.0, "1")       # about me
              .say(t + 2.5 + READ_BACK_S + 14.0, 6.0))     # the message after the tone
    session, worker, cases = call(script)
    assert session.path == ["greeting", "national_id:keypad:verified", "menu:message", "about:self",
                            "message:silence", "tracking_code", "goodbye"]
    assert [c.subject.national_id for c in cases.cases] == [NATIONAL_ID]
    assert cases.cases[0].complete and cases.cases[0].subject.status == "verified"
    message = [r for r in cases.recordings if r.kind == "message"]
    assert len(message) == 1 and message[0].reason == "silence" and message[0].speech_s == pytest.approx(6.0)
    # The code is read back twice, digit by digit, then goodbye, then the IVR hangs up.
    heard = worker.prompts_heard()
    code_digits = [f"digit_{d}" for d in cases.cases[0].tracking_code]
    at = heard.index("tracking_code_intro")
    assert heard[at + 1:at + 1 + len(code_digits)] == code_digits and heard[-1] == "goodbye"
    assert isinstance(worker.commands[-1], protocol.HangupCall)


def test_an_id_keyed_during_the_greeting_barges_in_and_counts() -> None:
    script = Script().key(1.0, NATIONAL_ID).key(1.0 + 2.5 + READ_BACK_S + 0.5, "1").hang_up(40.0)
    session, worker, _ = call(script)
    assert session.path[:2] == ["greeting", "national_id:keypad:verified"]
    greeting = worker.played[0]
    assert greeting.completed is False and greeting.end == pytest.approx(1.0)  # cut at the first key
    assert "ask_national_id" not in worker.prompts_heard()  # typed ahead: never asked


@pytest.mark.parametrize("stray_key, after_ten_digits_s", [
    # The prompt allows "#" after the ID; it lands once the ten digits ended the
    # capture, as the read-back starts (the case a caller found: the read-back
    # was cut, the confirmation timed out while they waited, their "1" began a new ID).
    ("#", 0.25),
    ("5", 3.0),  # a key that is no answer, mid-read-back
])
def test_a_key_that_may_not_cut_the_read_back_waits_and_the_1_after_it_confirms(
        stray_key: str, after_ten_digits_s: float) -> None:
    t = after_ask() + 1.0
    end_of_keys = t + 9 * 0.25
    script = (Script().key(t, NATIONAL_ID).key(end_of_keys + after_ten_digits_s, stray_key)
              .key(end_of_keys + 0.25 + READ_BACK_S + 0.5, "1").hang_up(60.0))
    session, worker, _ = call(script)
    assert session.path[1] == "national_id:keypad:verified"
    assert read_back(worker).completed is True


def test_a_confirmation_keyed_ahead_of_the_read_back_is_the_answer() -> None:
    t = after_ask() + 1.0
    script = Script().key(t, NATIONAL_ID + "1").hang_up(40.0)
    session, _, _ = call(script)
    assert session.path[1] == "national_id:keypad:verified"


def test_an_invalid_id_is_asked_again_and_a_valid_one_then_taken() -> None:
    t = after_ask() + 1.0
    second = t + 2.5 + 1.0 + 3.0 + 3.0 + 1.0  # "invalid", "again", the ask, then keys
    script = (Script().key(t, BAD_ID).key(second, NATIONAL_ID)
              .key(second + 2.5 + READ_BACK_S + 0.5, "1").hang_up(second + 30))
    session, worker, cases = call(script)
    assert session.path[1:3] == ["national_id:keypad:invalid", "national_id:keypad:verified"]
    assert "national_id_invalid" in worker.prompts_heard()
    assert [r.kind for r in cases.recordings] == ["national_id_utterance"] * 2  # each attempt its own tape


def test_three_rejected_read_backs_go_on_unverified() -> None:
    script = Script()
    t = after_ask() + 1.0
    for _ in range(3):
        script.key(t, NATIONAL_ID).key(t + 2.5 + READ_BACK_S + 0.5, "2")
        t += 2.5 + READ_BACK_S + 0.5 + 0.3 + 1.0 + 3.0 + 1.0  # "again", the ask
    script.hang_up(t + 5)
    session, _, _ = call(script)
    assert session.path[1:5] == ["national_id:keypad:not_confirmed"] * 3 + ["national_id:unverified"]
    assert session.caller is not None and (session.caller.national_id, session.caller.status) == (
        NATIONAL_ID, "unverified")


def test_no_answer_to_the_read_back_asks_again() -> None:
    t = after_ask() + 1.0
    script = Script().key(t, NATIONAL_ID).hang_up(t + 2.5 + READ_BACK_S + 6.0 + 3.0)
    session, _, _ = call(script)
    assert session.path[1] == "national_id:keypad:not_confirmed"  # 6 s of silence after the read-back


def test_a_spoken_id_is_recognised_and_confirmed() -> None:
    t = after_ask() + 0.5
    script = Script().say(t, 4.0).key(t + 4.0 + 1.5 + READ_BACK_S + 0.5, "1").hang_up(60.0)
    session, worker, cases = call(script, recognizer=FakeRecognizer([NATIONAL_ID]))
    assert session.path[1] == "national_id:speech:verified"
    utterance = [r for r in cases.recordings if r.kind == "national_id_utterance"]
    assert len(utterance) == 1 and utterance[0].reason == "silence" and utterance[0].speech_s == pytest.approx(4.0)


def test_a_spoken_id_without_a_recogniser_is_kept_for_the_back_office() -> None:
    script = Script().say(after_ask() + 0.5, 4.0).hang_up(30.0)
    session, _, cases = call(script)
    assert session.path[1] == "national_id:speech:to_transcribe"
    assert session.caller is not None and session.caller.status == "to_transcribe"
    assert [r.kind for r in cases.recordings] == ["national_id_utterance"]


def test_silence_three_times_goes_on_without_an_id() -> None:
    session, _, _ = call(Script().hang_up(200.0))
    assert session.path[1:5] == ["national_id:no_input"] * 3 + ["national_id:none"]
    assert "menu:message" in session.path  # the caller is never dropped for it


def test_the_menu_reprompts_on_a_wrong_key_and_defaults_to_a_message() -> None:
    t = after_ask() + 1.0
    menu_at = t + 2.5 + READ_BACK_S + 0.5
    script = (Script().key(t, NATIONAL_ID).key(menu_at, "1")
              .key(menu_at + 4.0, "9")                      # not an option here
              .hang_up(menu_at + 60))
    session, worker, _ = call(script)
    heard = worker.prompts_heard()
    assert "invalid_choice" in heard and heard.count("menu_main_closed") == 3
    assert "menu:message" in session.path  # three attempts, then the default


def test_a_request_about_someone_else_is_filed_under_them() -> None:
    t = after_ask() + 1.0
    t2 = t + 2.5 + READ_BACK_S + 0.5
    script = (Script().key(t, NATIONAL_ID).key(t2, "1")
              .key(t2 + 4.0, "2")                    # menu: a message
              .key(t2 + 8.0, "2")                    # about someone else
              .key(t2 + 12.0, OTHER_ID).key(t2 + 12.0 + 2.5 + READ_BACK_S + 0.5, "1")
              .say(t2 + 40.0, 5.0))
    session, _, cases = call(script)
    assert "about:other" in session.path and "subject_id:keypad:verified" in session.path
    (case,) = cases.cases
    assert case.subject.national_id == OTHER_ID
    assert case.caller is not None and case.caller.national_id == NATIONAL_ID


def test_a_caller_who_hangs_up_mid_message_still_gets_a_case() -> None:
    t = after_ask() + 1.0
    t2 = t + 2.5 + READ_BACK_S + 0.5
    script = (Script().key(t, NATIONAL_ID).key(t2, "1").key(t2 + 4.0, "2").key(t2 + 8.0, "1")
              .say(t2 + 14.0, 20.0).hang_up(t2 + 24.0))
    session, _, cases = call(script)
    assert session.path[-2:] == ["message:hangup", "ended:message"]
    (case,) = cases.cases
    assert not case.complete  # a partial message, filed as such
    message = [r for r in cases.recordings if r.kind == "message"]
    assert message[0].reason == "hangup" and message[0].speech_s == pytest.approx(10.0, abs=1.0)


def test_hash_ends_the_message_early() -> None:
    t = after_ask() + 1.0
    t2 = t + 2.5 + READ_BACK_S + 0.5
    script = (Script().key(t, NATIONAL_ID).key(t2, "1").key(t2 + 4.0, "2").key(t2 + 8.0, "1")
              .say(t2 + 14.0, 20.0).key(t2 + 20.0, "#"))
    session, _, cases = call(script)
    assert "message:digit" in session.path and "tracking_code" in session.path
    assert cases.cases[0].complete


def test_a_silent_message_makes_no_case_and_says_so() -> None:
    t = after_ask() + 1.0
    t2 = t + 2.5 + READ_BACK_S + 0.5
    script = Script().key(t, NATIONAL_ID).key(t2, "1").key(t2 + 4.0, "2").key(t2 + 8.0, "1")
    session, worker, cases = call(script)
    assert "message:no_input" in session.path and "no_message" in session.path
    assert cases.cases == [] and "no_message" in worker.prompts_heard()


def test_hanging_up_during_the_greeting_leaves_nothing_half_done() -> None:
    session, worker, cases = call(Script().hang_up(2.0))
    assert session.path == ["greeting", "ended:national_id"] and cases.cases == []
    assert session.ended_by == "caller hung up"


# -- keys at step boundaries ------------------------------------------------------------------


def test_keys_typed_ahead_through_the_confirmation_reach_the_menu_and_about_whom() -> None:
    # ID, "1" (confirm), "2" (a message), "1" (about me), all in one burst during the ask.
    t = 4.0 + 0.5
    script = Script().key(t, NATIONAL_ID + "121").say(t + 20.0, 5.0)
    session, worker, cases = call(script)
    assert session.path[:4] == ["greeting", "national_id:keypad:verified", "menu:message", "about:self"]
    assert cases.cases and "menu_main_closed" not in worker.prompts_heard(completed_only=True)


def test_an_answer_keyed_during_the_read_back_cuts_it_short() -> None:
    t = after_ask() + 1.0
    script = Script().key(t, NATIONAL_ID).key(t + 2.5 + 4.0, "1").hang_up(60.0)
    session, worker, _ = call(script)
    assert session.path[1] == "national_id:keypad:verified"
    cut = read_back(worker)
    assert cut.completed is False and cut.end == pytest.approx(t + 2.5 + 4.0 - 0.25, abs=0.3)


# -- follow-up (menu option 3) -------------------------------------------------------------------

KNOWN_CODE = "12345678" + verhoeff_check_digit("12345678")
UNKNOWN_CODE = "98765432" + verhoeff_check_digit("98765432")


def known_cases() -> FakeFollowUpCases:
    return FakeFollowUpCases({KNOWN_CODE: ({NATIONAL_ID}, CaseStatus("referred", "tax", None))})


def follow_up_script(code: str, national_id: str = NATIONAL_ID) -> Script:
    t = after_ask() + 1.0
    t2 = t + 2.5 + READ_BACK_S + 0.5
    return (Script().key(t, national_id).key(t2, "1")
            .key(t2 + 4.0, "3")                 # menu: follow up on a case
            .key(t2 + 7.0, code))


def test_follow_up_with_the_right_code_and_id_hears_the_status() -> None:
    assert is_tracking_code(KNOWN_CODE)
    session, worker, _ = call(follow_up_script(KNOWN_CODE), known=known_cases())
    assert session.path[-3:] == ["menu:follow_up", "follow_up:told:referred", "goodbye"]
    heard = worker.prompts_heard()
    assert heard[heard.index("follow_up_status_referred") + 1] == "agency_tax"


def test_follow_up_with_someone_elses_id_hears_what_an_unknown_code_hears() -> None:
    other, unknown = call(follow_up_script(KNOWN_CODE, OTHER_ID), known=known_cases()), call(
        follow_up_script(UNKNOWN_CODE), known=known_cases())
    for session, worker, _ in (other, unknown):
        assert session.path[-2:] == ["follow_up:not_found", "goodbye"]
        assert worker.prompts_heard().count("follow_up_not_found") == 1  # then two attempts without a key
        assert "follow_up_status_referred" not in worker.prompts_heard()


def test_a_mistyped_code_is_caught_by_its_check_digit_before_any_lookup() -> None:
    known = known_cases()
    session, worker, _ = call(follow_up_script("123456789"), known=known)
    assert "follow_up_code_invalid" in worker.prompts_heard() and known.asked == []


def test_wrong_codes_from_one_number_are_throttled_across_calls() -> None:
    throttle = FailureThrottle(FakeCounts(), 2, 3600.0, clock=lambda: 0.0)
    first, _, _ = call(follow_up_script(UNKNOWN_CODE), known=known_cases(), throttle=throttle)
    assert first.path[-2:] == ["follow_up:not_found", "goodbye"]  # one failure
    second, worker, _ = call(follow_up_script(UNKNOWN_CODE), known=known_cases(), throttle=throttle)
    assert second.path[-2:] == ["follow_up:throttled", "goodbye"]  # the second blocks the number
    assert worker.prompts_heard()[-2:] == ["follow_up_blocked", "goodbye"]
    third, _, _ = call(follow_up_script(KNOWN_CODE), known=known_cases(), throttle=throttle)
    assert "follow_up:throttled" in third.path  # even the right code, until the window passes
    other_number, _, _ = call(follow_up_script(KNOWN_CODE), known=known_cases(), throttle=throttle,
                              caller_number="09120000000")
    assert "follow_up:told:referred" in other_number.path


def test_follow_up_without_a_confirmed_id_is_refused() -> None:
    # Silence through the ID step (three attempts of 3 s ask + 10 s no input), then "3" at the menu.
    script = Script().key(4.0 + 3 * 13.0 + 2 * 2.0 + 1.0, "3")
    session, worker, _ = call(script, known=known_cases())
    assert "national_id:none" in session.path
    assert session.path[-2:] == ["follow_up:no_id", "goodbye"]
    assert "follow_up_need_id" in worker.prompts_heard()


# -- live mode: the queue and agents -------------------------------------------------------------

ALWAYS_OPEN = {day: ("00:00-24:00",) for day in
               ("saturday", "sunday", "monday", "tuesday", "wednesday", "thursday", "friday")}


@dataclass
class LiveRun:
    session: Session
    worker: ScriptedWorker
    cases: FakeCases
    desk: FakeDesk
    acd: dict[str, Any]  # the ACD's snapshot after the call
    agent_states: dict[str, str]


def live_call(script: Script, agents: dict[str, AgentPhone], *, busy: int = 0,
              weekly: Mapping[str, tuple[str, ...]] = ALWAYS_OPEN, survey: Survey | None = None,
              caller_number: str = "02188776655", sms: SmsOffer | None = None,
              languages: Mapping[str, Any] | None = None, skills: Mapping[str, set[str]] | None = None,
              open_case: Any = None, transfers: tuple[str | Transfer, ...] = (), consult_then: str | None = None,
              numbers: Mapping[str, AgentPhone] | None = None,
              callbacks: Callable[[Acd], CallbackBooking] | None = None,
              turn: Callable[[Acd], Awaitable[CallbackTurn]] | None = None, **queue: Any) -> LiveRun:
    """One call with the given agents logged in (``busy`` of them on other calls first); open all week.
    ``transfers``: what the agent who answers asks of the call 5 s in (``consult_then`` 3 s into a
    consultation); ``numbers``: phones that are not agents' (an agency's line); ``callbacks``: the
    callbacks' booking over the call's queue; ``turn``: the call is a callback's, its entry and agent made
    ready in that queue."""
    worker = ScriptedWorker(script, PROMPTS, agents={**agents, **(numbers or {})})
    cases, desk = FakeCases(), FakeDesk(transfers=list(transfers), consult_then=consult_then)
    accounts = tuple(AgentAccount(id=a, name=f"Agent {a}", sip_ha1="0" * 32, console_password="scrypt$x")
                     for a in agents)
    outcome: dict[str, Any] = {}

    async def run() -> Session:
        loop = asyncio.get_running_loop()
        acd = Acd(AgentsConfig(accounts=accounts, wrap_up_s=10.0), QueueConfig(**queue), clock=loop.time,
                  skills=skills)
        for agent_id in agents:
            acd.login(agent_id)
        for n in range(busy):  # other callers already talking to the first agents
            entry = acd.join(f"other{n}", "09000000000")
            acd.connected(entry, (await acd.next_agent(entry)).id)
        service = LiveService(acd, desk, QueueConfig(**queue), ring_timeout_s=15.0,
                              agent_uri=lambda a: f"sip:{a}@front", callbacks=callbacks(acd) if callbacks else None)
        live = Live(service, OfficeHours.from_config(OfficeHoursConfig(weekly=dict(weekly), holidays=())),
                    open_case=open_case)
        prompts = next(iter(languages.values())) if languages else FakePrompts()
        flow = CallFlow(worker.answer(), prompts, cases, IvrConfig(), "test-call", live=live,
                        caller_number=caller_number, survey=survey, sms=sms, languages=languages,
                        callback=await turn(acd) if turn else None)
        session = await flow.run()
        outcome["acd"] = acd.snapshot()
        outcome["states"] = {a["id"]: a["state"] for a in outcome["acd"]["agents"]}
        acd.close()
        return session
    session = run_virtual(run())
    return LiveRun(session, worker, cases, desk, outcome["acd"], outcome["states"])


def to_the_queue(t: float = after_ask() + 1.0) -> tuple[Script, float]:
    """Keys the ID, confirms, 1 (an agent), 1 (about me); returns the script and when the queue starts."""
    t2 = t + 2.5 + READ_BACK_S + 0.5
    return Script().key(t, NATIONAL_ID).key(t2, "1").key(t2 + 4.0, "1").key(t2 + 8.0, "1"), t2 + 9.0


def test_a_caller_reaches_a_free_agent_and_the_conversation_is_taped() -> None:
    script, queued = to_the_queue()
    script.hang_up(queued + 60.0)
    run = live_call(script, {"1001": AgentPhone(answer_after_s=3.0)})
    assert run.session.path[-1] == "queue:handled"
    assert run.worker.dialled == ["sip:1001@front"]
    (leg,) = [c.call for c in run.worker.commands if isinstance(c, protocol.Dial)]
    assert run.worker.bridged == [("caller", leg)]
    assert [e[0] for e in run.desk.events] == ["offer", "connected", "finished"]
    (tape,) = [r.done for r in run.worker.recordings if r.kind == "conversation"]
    assert tape.reason == "hangup" and tape.duration_s > 40
    assert run.desk.conversations[0] is not None and run.desk.conversations[0].reason == "hangup"
    assert run.agent_states["1001"] == "wrap_up" and run.acd["today"]["answered"] == 1


def test_a_waiting_caller_hears_their_position_and_hold_music() -> None:
    script, queued = to_the_queue()
    script.hang_up(queued + 100.0)
    run = live_call(script, {"1001": AgentPhone()}, busy=1, announce_every_s=30.0)
    heard = run.worker.prompts_heard()
    announcements = heard.count("queue_position")
    assert 3 <= announcements <= 4  # every 30 s over 100 s
    at = heard.index("queue_position")
    assert heard[at + 1:at + 3] == ["cardinal_1", "queue_in_line"] and "hold_music" in heard
    assert run.session.path[-1] == "ended:queue" and run.acd["today"]["abandoned"] == 1


def test_a_long_wait_offers_a_message_and_2_takes_it_with_the_id_kept() -> None:
    script, queued = to_the_queue()
    script.key(queued + 45.0, "2").say(queued + 52.0, 5.0)
    run = live_call(script, {"1001": AgentPhone()}, busy=1, announce_every_s=30.0, max_wait_s=20.0)
    assert "queue_offer_message" in run.worker.prompts_heard()
    assert "queue:to_message" in run.session.path and "message:silence" in run.session.path
    (case,) = run.cases.cases
    assert case.subject.national_id == NATIONAL_ID and run.acd["today"]["to_message"] == 1


def test_an_agent_who_does_not_answer_is_paused_and_the_next_one_is_rung() -> None:
    script, queued = to_the_queue()
    script.hang_up(queued + 60.0)
    run = live_call(script, {"1001": AgentPhone(answer_after_s=None), "1002": AgentPhone(answer_after_s=2.0)})
    assert run.worker.dialled == ["sip:1001@front", "sip:1002@front"]
    assert ("withdraw", "1001") in run.desk.events and ("connected", "1002") in run.desk.events
    assert run.agent_states["1001"] == "paused"


def test_a_caller_who_hangs_up_while_the_agent_rings_frees_the_agent() -> None:
    script, queued = to_the_queue()
    script.hang_up(queued + 5.0)
    run = live_call(script, {"1001": AgentPhone(answer_after_s=None)})
    assert run.session.path[-1] == "ended:queue"
    leg = next(c.call for c in run.worker.commands if isinstance(c, protocol.Dial))
    assert protocol.HangupCall(leg) in run.worker.commands  # the agent's phone stops ringing
    assert run.agent_states["1001"] == "ready" and run.acd["today"]["abandoned"] == 1
    assert run.desk.events == [("offer", "1001"), ("withdraw", "1001")]


def test_an_agent_lost_mid_call_leaves_the_caller_with_the_case_code() -> None:
    script, queued = to_the_queue()
    run = live_call(script, {"1001": AgentPhone(answer_after_s=1.0, talk_s=20.0, ends_with=408)})
    assert "queue:agent_lost" in run.session.path and run.session.path[-2:] == ["tracking_code", "goodbye"]
    heard = run.worker.prompts_heard()
    assert heard.index("agent_lost") < heard.index("tracking_code_intro")
    assert run.agent_states["1001"] == "paused"


def test_out_of_hours_the_caller_hears_when_service_resumes_and_no_agent_is_rung() -> None:
    t = after_ask() + 1.0
    t2 = t + 2.5 + READ_BACK_S + 0.5
    script = Script().key(t, NATIONAL_ID).key(t2, "1").key(t2 + 12.0, "1").hang_up(t2 + 30.0)
    run = live_call(script, {"1001": AgentPhone()}, weekly={"saturday": ("08:00-16:00",)})
    heard = run.worker.prompts_heard()
    assert heard[heard.index("live_closed") + 1] == "live_resumes" and "live_resumes_end" in heard
    assert "menu_main" not in heard  # option 1 is never offered (with no other option, no menu at all)
    assert "menu:message" in run.session.path and run.worker.dialled == []


# -- the post-call survey ----------------------------------------------------------------------------

TALK_S = 10.0  # the agent hangs up this long after answering


def survey(**cfg: Any) -> tuple[Survey, FakeRatings]:
    ratings = FakeRatings()
    return Survey(SurveyConfig(**cfg), ratings), ratings


def after_the_agent(**cfg: Any) -> tuple[Script, float, Survey, FakeRatings]:
    """A caller put through to agent 1001, who hangs up first; when the survey's question has ended."""
    script, queued = to_the_queue()
    # "please wait" (1 s), the ring (1 s), the talk, then the question (1 s).
    return (script, queued + 1.0 + 1.0 + TALK_S + 1.0, *survey(**cfg))


def agent_phone() -> dict[str, AgentPhone]:
    return {"1001": AgentPhone(answer_after_s=1.0, talk_s=TALK_S)}


def test_after_the_agent_hangs_up_the_caller_rates_4_and_it_is_kept_with_the_agent_and_case() -> None:
    script, asked, rules, ratings = after_the_agent()
    run = live_call(script.key(asked + 1.0, "4"), agent_phone(), survey=rules)
    assert run.session.path[-2:] == ["queue:handled", "survey:rated"]
    # The case the conversation became (FakeDesk.finished's code) and the agent who took the call.
    assert ratings.kept == [(SurveyTopic("agent", "100000009", "1001"), 4)]
    heard = run.worker.prompts_heard()
    assert heard[-2:] == ["survey_ask", "survey_thanks"] and "goodbye" not in heard  # the thanks say goodbye
    ask = next(p for p in run.worker.played if p.files[0].endswith("survey_ask.wav"))
    assert ask.start >= TALK_S and run.session.ended_by is None
    # The thanks are heard to their end; the control process hangs up after the flow (as after any agent call).
    assert run.worker.played[-1].completed is True


def test_an_invalid_key_is_asked_once_more_and_the_5_after_it_is_kept() -> None:
    script, asked, rules, ratings = after_the_agent()
    run = live_call(script.key(asked + 1.0, "8").key(asked + 5.0, "5"), agent_phone(), survey=rules)
    assert [score for _, score in ratings.kept] == [5]
    assert run.worker.prompts_heard()[-4:] == ["survey_ask", "survey_invalid", "survey_ask", "survey_thanks"]
    assert run.session.path[-1] == "survey:rated"


def test_two_invalid_keys_leave_no_rating_and_the_caller_hears_goodbye() -> None:
    script, asked, rules, ratings = after_the_agent()
    run = live_call(script.key(asked + 1.0, "9").key(asked + 5.0, "0"), agent_phone(), survey=rules)
    assert ratings.kept == [] and run.session.path[-2:] == ["survey:invalid", "goodbye"]
    assert run.worker.prompts_heard().count("survey_invalid") == 1


def test_silence_leaves_no_rating_after_the_bounded_wait() -> None:
    script, _, rules, ratings = after_the_agent(wait_s=6.0)
    run = live_call(script, agent_phone(), survey=rules)
    assert ratings.kept == [] and run.session.path[-2:] == ["survey:no_key", "goodbye"]
    ask = next(p for p in run.worker.played if p.files[0].endswith("survey_ask.wav"))
    goodbye = next(p for p in run.worker.played if p.files[0].endswith("goodbye.wav"))
    assert ask.end is not None and goodbye.start - ask.end == pytest.approx(6.0, abs=0.01)
    assert run.worker.prompts_heard().count("survey_ask") == 1  # silence is an answer: no second question


def test_a_hang_up_during_the_question_is_no_rating_and_no_error() -> None:
    script, asked, rules, ratings = after_the_agent()
    run = live_call(script.hang_up(asked - 0.5), agent_phone(), survey=rules)
    assert ratings.kept == [] and run.session.path[-2:] == ["queue:handled", "survey:hangup"]
    assert run.session.ended_by is None  # the call ended as it should: "completed", as before the survey
    assert "goodbye" not in run.worker.prompts_heard()


def test_a_caller_who_hangs_up_on_the_agent_is_not_asked() -> None:
    script, queued = to_the_queue()
    rules, ratings = survey()
    run = live_call(script.hang_up(queued + 8.0), {"1001": AgentPhone(answer_after_s=1.0)}, survey=rules)
    assert run.session.path[-1] == "queue:handled" and "survey_ask" not in run.worker.prompts_heard()
    assert ratings.kept == []


@pytest.mark.parametrize("cfg", [{"enabled": False}, {"offer_after": ("follow_up",)}])
def test_a_survey_switched_off_or_not_offered_after_agents_asks_nothing(cfg: dict[str, Any]) -> None:
    script, asked, rules, ratings = after_the_agent(**cfg)
    run = live_call(script.key(asked + 1.0, "4"), agent_phone(), survey=rules)
    assert run.session.path[-1] == "queue:handled" and "survey_ask" not in run.worker.prompts_heard()
    assert ratings.kept == []


class FailingRatings:
    """A store that cannot take the rating (a fake: the real store's failures are StoreError too)."""

    async def keep_rating(self, topic: SurveyTopic, score: int) -> None:
        raise StoreError("the database is gone")


def test_a_rating_the_store_cannot_take_is_still_thanked_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    script, asked, _, _ = after_the_agent()
    rules = Survey(SurveyConfig(), FailingRatings())
    run = live_call(script.key(asked + 1.0, "3"), agent_phone(), survey=rules)
    assert run.session.path[-1] == "survey:rated" and run.session.ended_by is None
    assert run.worker.prompts_heard()[-1] == "survey_thanks"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [getattr(r, "event", None) for r in errors] == ["survey_rating_lost"]


ANSWER = Path("/answers/case-1.wav")


def test_after_an_agencys_answer_in_a_follow_up_the_caller_rates_it() -> None:
    known = FakeFollowUpCases({KNOWN_CODE: ({NATIONAL_ID}, CaseStatus("answered", "tax", ANSWER))})
    rules, ratings = survey()
    # The code's keys end at about 7.0 + 8 x 0.25 after the menu key; the status and the answer (1 s each).
    t = after_ask() + 1.0 + 2.5 + READ_BACK_S + 0.5 + 7.0 + 2.0 + 3.5
    session, worker, _ = call(follow_up_script(KNOWN_CODE).key(t, "2"), known=known, survey=rules)
    assert session.path[-2:] == ["follow_up:told:answered", "survey:rated"]
    assert ratings.kept == [(SurveyTopic("follow_up", KNOWN_CODE), 2)]
    heard = worker.prompts_heard()
    assert heard.index("case-1") < heard.index("survey_ask")


@pytest.mark.parametrize("status", [CaseStatus("referred", "tax", None), CaseStatus("closed", None, None)])
def test_a_follow_up_without_an_answer_heard_has_no_survey(status: CaseStatus) -> None:
    known = FakeFollowUpCases({KNOWN_CODE: ({NATIONAL_ID}, status)})
    rules, ratings = survey()
    session, worker, _ = call(follow_up_script(KNOWN_CODE), known=known, survey=rules)
    assert session.path[-1] == "goodbye" and "survey_ask" not in worker.prompts_heard()
    assert ratings.kept == []


# -- the follow-up throttle counts by trunk source and by case, not only by the chosen From user --------

class CallSources:
    """The control process's view of each call's CDR: here, the source the next call comes from."""

    def __init__(self, source: str = "192.0.2.10") -> None:
        self.source = source

    async def cdr_of(self, channel: object) -> CallRecord:
        return CallRecord(1, "x@trunk", "sip:@trunk", "sip:111@sw", self.source, 0, 0.0, None, None, None, ())


def test_an_empty_from_user_is_still_throttled_by_its_source() -> None:
    sources = CallSources()
    throttle = FailureThrottle(FakeCounts(), 2, 3600.0, clock=lambda: 0.0, cdr_of=sources.cdr_of, source_max_failures=2)
    first, _, _ = call(follow_up_script(UNKNOWN_CODE), known=known_cases(), throttle=throttle, caller_number="")
    assert first.path[-2:] == ["follow_up:not_found", "goodbye"]
    second, worker, _ = call(follow_up_script(UNKNOWN_CODE), known=known_cases(), throttle=throttle,
                             caller_number="")
    assert second.path[-2:] == ["follow_up:throttled", "goodbye"]
    # A new From user on the same trunk source changes nothing; another source is not held up.
    third, _, _ = call(follow_up_script(KNOWN_CODE), known=known_cases(), throttle=throttle,
                       caller_number="09129999999")
    assert "follow_up:throttled" in third.path
    sources.source = "198.51.100.7"
    other_trunk, _, _ = call(follow_up_script(KNOWN_CODE), known=known_cases(), throttle=throttle, caller_number="")
    assert "follow_up:told:referred" in other_trunk.path


def test_a_trunk_carries_more_failures_than_one_number_before_it_is_refused() -> None:
    sources = CallSources()
    throttle = FailureThrottle(FakeCounts(), 2, 3600.0, clock=lambda: 0.0, cdr_of=sources.cdr_of)
    assert throttle.source_max_failures == 2 * 10
    codes = ["1111111" + f"{n:01d}" for n in range(10)]
    for n, body in enumerate(codes):  # ten numbers, one wrong code each: no number, no case over its limit
        session, _, _ = call(follow_up_script(body + verhoeff_check_digit(body)), known=known_cases(),
                             throttle=throttle, caller_number=f"0912000000{n}")
        assert session.path[-2:] == ["follow_up:not_found", "goodbye"], n
    assert not run_virtual(throttle.blocked("09121111111", sources.source))
    for n in range(10):
        assert run_virtual(throttle.attempt(f"0913000000{n}", sources.source,
                                                codes[n] + verhoeff_check_digit(codes[n]))) is not None
    assert run_virtual(throttle.blocked("09121111111", sources.source))  # the 20th failure from the trunk
    assert not run_virtual(throttle.blocked("09121111111", "198.51.100.7"))


def test_one_case_is_not_guessed_at_from_many_numbers_and_sources() -> None:
    sources = CallSources()
    throttle = FailureThrottle(FakeCounts(), 2, 3600.0, clock=lambda: 0.0, cdr_of=sources.cdr_of)
    known = known_cases()
    # Someone tries IDs against one code, each call from a new number and trunk: a few misses
    # (a stranger who has the code) still leave it to its owner, more do not.
    for n in range(2 * CASE_FAILURE_FACTOR):
        sources.source = f"203.0.113.{n}"
        session, _, _ = call(follow_up_script(KNOWN_CODE, OTHER_ID), known=known, throttle=throttle,
                             caller_number=f"0912000000{n}")
        assert session.path[-2:] == ["follow_up:not_found", "goodbye"]
    asked = len(known.asked)
    sources.source = "203.0.113.99"
    session, worker, _ = call(follow_up_script(KNOWN_CODE, NATIONAL_ID), known=known, throttle=throttle,
                              caller_number="09127777777")
    assert session.path[-2:] == ["follow_up:throttled", "goodbye"]
    assert len(known.asked) == asked  # the code was not even looked up
    # Another code from that number and source is still answered.
    other = "87654321" + verhoeff_check_digit("87654321")
    known.known[other] = ({NATIONAL_ID}, CaseStatus("received", None, None))
    session, _, _ = call(follow_up_script(other), known=known, throttle=throttle, caller_number="09127777777")
    assert "follow_up:told:received" in session.path


def test_an_unknown_source_is_counted_without_it() -> None:
    async def no_cdr(channel: object) -> CallRecord:
        raise NotFound("no call")
    throttle = FailureThrottle(FakeCounts(), 2, 3600.0, clock=lambda: 0.0, cdr_of=no_cdr)
    first, _, _ = call(follow_up_script(UNKNOWN_CODE), known=known_cases(), throttle=throttle)
    assert first.path[-2:] == ["follow_up:not_found", "goodbye"]
    second, _, _ = call(follow_up_script(UNKNOWN_CODE), known=known_cases(), throttle=throttle)
    assert second.path[-2:] == ["follow_up:throttled", "goodbye"]  # still by its number


# -- languages -------------------------------------------------------------------------------------

LANGUAGES = {"fa": FakeLanguagePrompts("fa"), "en": FakeLanguagePrompts("en", has_end=False)}


def test_the_language_menu_comes_first_each_language_in_its_own_voice_and_2_speaks_english() -> None:
    session, worker, _ = call(Script().key(2.0, "2").hang_up(30.0), languages=LANGUAGES)
    assert session.path[:2] == ["language:en", "greeting"] and session.language == "en"
    menu = worker.played[0]
    assert menu.files == ["/prompts/fa/language_choice.wav", "/prompts/fa/digit_1.wav",
                          "/prompts/fa/language_choice_end.wav", "/prompts/en/language_choice.wav",
                          "/prompts/en/digit_2.wav"]
    assert menu.completed is False and menu.end == pytest.approx(2.0)  # cut at the key
    # From the greeting on, every prompt is English.
    assert all(f.startswith("/prompts/en/") for p in worker.played[1:] for f in p.files)


def test_no_key_at_the_language_menu_is_the_first_language() -> None:
    session, worker, _ = call(Script().hang_up(40.0), languages=LANGUAGES)
    assert session.path[:2] == ["language:fa", "greeting"]
    assert worker.prompts_heard().count("language_choice") == 2 * IvrConfig().menu_attempts
    assert all(f.startswith("/prompts/fa/") for p in worker.played[IvrConfig().menu_attempts:] for f in p.files)


def test_one_language_plays_no_menu() -> None:
    session, worker, _ = call(Script().hang_up(10.0), languages={"fa": LANGUAGES["fa"]})
    assert session.path[0] == "greeting" and session.language is None
    assert "language_choice" not in worker.prompts_heard()


def test_an_english_caller_is_given_the_english_agent_before_a_persian_one_idle_longer() -> None:
    t = 0.5  # "2" for English cuts the language menu; the greeting starts then
    script, queued = to_the_queue(t + after_ask() + 1.0)
    script.key(t, "2").hang_up(queued + 30.0)
    agents = {"fa1": AgentPhone(answer_after_s=1.0), "en1": AgentPhone(answer_after_s=1.0)}
    run = live_call(script, agents, languages=LANGUAGES,
                    skills={"fa1": {"lang:fa"}, "en1": {"lang:en", "lang:fa"}})
    assert run.session.path[0] == "language:en" and run.session.path[-1] == "queue:handled"
    assert run.worker.dialled == ["sip:en1@front"]


# -- priorities ------------------------------------------------------------------------------------

@pytest.mark.parametrize("open_cases, priority, path_has_it", [
    ({NATIONAL_ID}, 2, True),   # a case still being handled: a repeat caller
    (set(), 2, False),          # none open
    ({NATIONAL_ID}, 0, False),  # priorities off: not even asked
])
def test_a_repeat_caller_is_queued_with_the_configured_priority(open_cases: set[str], priority: int,
                                                                 path_has_it: bool) -> None:
    asked: list[tuple[str, float]] = []

    async def open_case(national_id: str, since: float) -> bool:
        asked.append((national_id, since))
        return national_id in open_cases
    script, queued = to_the_queue()
    script.hang_up(queued + 20.0)
    run = live_call(script, {"1001": AgentPhone(answer_after_s=3.0)}, open_case=open_case,
                    repeat_caller_priority=priority, repeat_caller_days=7)
    assert ("priority:repeat" in run.session.path) is path_has_it
    assert run.session.path[-1] == "queue:handled"
    if priority:
        ((national_id, since),) = asked
        assert national_id == NATIONAL_ID and time.time() - since == pytest.approx(7 * 86400, abs=60)
    else:
        assert asked == []


# -- topics ----------------------------------------------------------------------------------------

def test_a_caller_for_an_agent_chooses_a_topic_and_gets_an_agent_of_that_agency() -> None:
    script, queued = to_the_queue()
    script.key(queued + 1.0, "2").hang_up(queued + 30.0)
    agents = {"roads1": AgentPhone(answer_after_s=1.0), "health1": AgentPhone(answer_after_s=1.0)}
    run = live_call(script, agents, topics=("roads", "health"),
                    skills={"roads1": {"agency:roads"}, "health1": {"agency:health"}})
    assert "topic:health" in run.session.path and run.session.topic == "health"
    assert run.worker.dialled == ["sip:health1@front"]  # not roads1, idle longer
    menu = next(p for p in run.worker.played if "/prompts/topic_for.wav" in p.files)
    assert menu.files[:5] == ["/prompts/topic_for.wav", "/prompts/agency_roads.wav", "/prompts/topic_press.wav",
                              "/prompts/digit_1.wav", "/prompts/topic_press_end.wav"]


def test_no_topic_chosen_takes_any_agent() -> None:
    script, queued = to_the_queue()
    script.hang_up(queued + 60.0)
    agents = {"roads1": AgentPhone(answer_after_s=1.0)}
    run = live_call(script, agents, topics=("health",), skills={"roads1": {"agency:roads"}})
    assert "topic:none" in run.session.path and run.session.topic is None
    assert run.worker.dialled == ["sip:roads1@front"]


# -- transfers -------------------------------------------------------------------------------------

def handed_over(to: str | Transfer, first: AgentPhone, second: AgentPhone,
                **kwargs: Any) -> tuple[LiveRun, str, str]:
    """A caller answered by agent 1001, who hands the call to ``to`` 5 s in (1002 is ready too); the run
    and the two agents' legs, the first agent's first."""
    script, queued = to_the_queue()
    script.hang_up(queued + 60.0)
    run = live_call(script, {"1001": first, "1002": second}, transfers=(to,), **kwargs)
    assert run.worker.dialled == ["sip:1001@front", "sip:1002@front"]
    first_leg, second_leg = [c.call for c in run.worker.commands if isinstance(c, protocol.Dial)]
    return run, first_leg, second_leg


def test_an_agent_hands_the_call_to_another_who_answers_and_the_tape_goes_on() -> None:
    run, first, second = handed_over("1002", AgentPhone(answer_after_s=1.0), AgentPhone(answer_after_s=2.0))
    # The caller talks to the first agent until the second answers, then to the second.
    assert run.worker.bridged == [("caller", first), ("caller", second)]
    hangups = [c.call for c in run.worker.commands if isinstance(c, protocol.HangupCall)]
    assert hangups[0] == first
    assert ("transfer_ringing", "1001", "1002") in run.desk.events and ("transfer_done", "1001", "1002") in run.desk.events
    (tape,) = [r.done for r in run.worker.recordings if r.kind == "conversation"]
    assert tape.duration_s > 40  # one tape, from the first answer to the caller's hang-up
    assert run.session.agent_id == "1002" and run.session.path[-1] == "queue:handled"
    # The first agent's wrap-up (10 s) began at the hand-over and is over by the caller's hang-up.
    assert run.agent_states == {"1001": "ready", "1002": "wrap_up"}
    assert run.acd["today"]["answered"] == 1


def test_a_transfer_not_answered_leaves_the_caller_with_the_first_agent() -> None:
    run, first, _ = handed_over("1002", AgentPhone(answer_after_s=1.0), AgentPhone(answer_after_s=None))
    assert run.worker.bridged == [("caller", first)]
    assert ("transfer_failed", "1001", "1002", "no_answer") in run.desk.events
    assert run.session.agent_id == "1001"
    assert run.agent_states == {"1001": "wrap_up", "1002": "paused"}


def test_a_first_agent_who_hangs_up_while_the_other_rings_leaves_the_caller_on_hold_for_it() -> None:
    # The transfer is asked 5 s into the call; the first agent hangs up 1 s later, the second answers at 4 s.
    run, first, second = handed_over("1002", AgentPhone(answer_after_s=1.0, talk_s=6.0),
                                     AgentPhone(answer_after_s=4.0))
    assert run.worker.bridged == [("caller", first), ("caller", second)]
    assert run.session.agent_id == "1002" and ("transfer_done", "1001", "1002") in run.desk.events
    # Hold music while the first agent rang (1 s), and again from its hang-up until the second answered (3 s).
    held = [(p.end or p.start) - p.start for p in run.worker.played if any("hold_music" in f for f in p.files)]
    assert held[0] == pytest.approx(1.0) and sum(held[1:]) == pytest.approx(3.0, abs=0.2)


def test_an_agent_sends_the_caller_back_to_the_queue_and_the_next_agent_takes_the_call() -> None:
    run, first, second = handed_over("queue", AgentPhone(answer_after_s=1.0), AgentPhone(answer_after_s=1.0))
    assert run.worker.bridged == [("caller", first), ("caller", second)]
    # Each conversation its tape, both kept through the desk (and so with the call's one case).
    tapes = [r.done for r in run.worker.recordings if r.kind == "conversation"]
    assert len(tapes) == 2 and len({t.path for t in tapes}) == 2
    assert [c.sha256 for c in run.desk.conversations if c is not None] == [t.sha256 for t in tapes]
    assert [e for e in run.desk.events if e[0] == "finished"] == [("finished", "1001"), ("finished", "1002")]
    assert run.session.agent_id == "1002" and run.session.path[-1] == "queue:handled"
    today = run.acd["today"]
    assert (today["offered"], today["answered"], today["abandoned"]) == (1, 1, 0)  # one caller, counted once


def held_s(run: LiveRun) -> list[float]:
    """How long the caller heard each stretch of hold music."""
    return [(p.end or p.start) - p.start for p in run.worker.played if any("hold_music" in f for f in p.files)]


def test_an_agent_consults_a_colleague_while_the_caller_holds_then_puts_the_caller_through() -> None:
    run, first, second = handed_over(Transfer("consult", "1002"), AgentPhone(answer_after_s=1.0),
                                     AgentPhone(answer_after_s=2.0), consult_then="complete")
    # The caller talks with the first agent while the second rings; the two agents then talk alone (the
    # caller on hold music for the 3 s consultation), and the caller is put through to the second.
    assert run.worker.bridged == [("caller", first), (first, second), ("caller", second)]
    assert sum(held_s(run)) == pytest.approx(1.0 + 3.0, abs=0.2)  # while the first agent rang, then consulted
    assert [e for e in run.desk.events if e[0] in ("transfer_ringing", "consulting", "transfer_done")] == [
        ("transfer_ringing", "1001", "1002"), ("consulting", "1001", "1002"), ("transfer_done", "1001", "1002")]
    hangups = [c.call for c in run.worker.commands if isinstance(c, protocol.HangupCall)]
    assert hangups[0] == first
    (tape,) = [r.done for r in run.worker.recordings if r.kind == "conversation"]
    assert tape.duration_s > 40
    assert run.session.agent_id == "1002" and run.session.path[-1] == "queue:handled"
    assert run.agent_states == {"1001": "ready", "1002": "wrap_up"}


def test_a_cancelled_consultation_puts_the_caller_back_with_the_first_agent() -> None:
    run, first, second = handed_over(Transfer("consult", "1002"), AgentPhone(answer_after_s=1.0),
                                     AgentPhone(answer_after_s=2.0), consult_then="cancel")
    assert run.worker.bridged == [("caller", first), (first, second), ("caller", first)]
    hangups = [c.call for c in run.worker.commands if isinstance(c, protocol.HangupCall)]
    assert hangups[0] == second
    assert ("transfer_failed", "1001", "1002", "cancelled") in run.desk.events
    assert run.session.agent_id == "1001"
    # The colleague consulted is free at once; the first agent's call goes on to the caller's hang-up.
    assert run.agent_states == {"1001": "wrap_up", "1002": "ready"}


def test_a_colleague_who_hangs_up_during_the_consultation_leaves_the_caller_with_the_first_agent() -> None:
    run, first, second = handed_over(Transfer("consult", "1002"), AgentPhone(answer_after_s=1.0),
                                     AgentPhone(answer_after_s=2.0, talk_s=2.0))
    assert run.worker.bridged == [("caller", first), (first, second), ("caller", first)]
    assert ("transfer_failed", "1001", "1002", "cancelled") in run.desk.events
    assert run.session.agent_id == "1001"


def test_an_agent_who_hangs_up_during_the_consultation_puts_the_caller_through() -> None:
    # The transfer is asked 5 s into the call, the colleague answers 2 s later, the first agent hangs up at 9 s.
    run, first, second = handed_over(Transfer("consult", "1002"), AgentPhone(answer_after_s=1.0, talk_s=9.0),
                                     AgentPhone(answer_after_s=2.0))
    assert run.worker.bridged == [("caller", first), (first, second), ("caller", second)]
    assert run.session.agent_id == "1002" and ("transfer_done", "1001", "1002") in run.desk.events


AGENCY_LINE = "02161920000"


def to_an_agency(ask: str, agency: AgentPhone, **kwargs: Any) -> tuple[LiveRun, str, str]:
    """A caller answered by agent 1001, who hands the call 5 s in to the health ministry's line."""
    script, queued = to_the_queue()
    script.hang_up(queued + 60.0)
    run = live_call(script, {"1001": AgentPhone(answer_after_s=1.0)}, numbers={AGENCY_LINE: agency},
                    transfers=(Transfer(ask, "agency:health", AGENCY_LINE),), **kwargs)  # type: ignore[arg-type]
    assert run.worker.dialled == ["sip:1001@front", f"sip:{AGENCY_LINE}@front"]
    first_leg, agency_leg = [c.call for c in run.worker.commands if isinstance(c, protocol.Dial)]
    return run, first_leg, agency_leg


def test_an_agent_hands_the_caller_to_an_agencys_line_and_the_tape_goes_on_without_an_agent() -> None:
    run, first, line = to_an_agency("hand", AgentPhone(answer_after_s=2.0))
    assert run.worker.bridged == [("caller", first), ("caller", line)]
    assert ("transfer_done", "1001", "agency:health") in run.desk.events
    # The conversation went on with the agency to the caller's hang-up, on the one tape; no agent ends it.
    (tape,) = [r.done for r in run.worker.recordings if r.kind == "conversation"]
    assert tape.duration_s > 40
    assert run.desk.events[-1] == ("finished", "None")
    # The agent's wrap-up began at the hand-over; the caller's survey (if any) is about that agent.
    assert run.agent_states == {"1001": "ready"} and run.session.agent_id == "1001"
    assert run.acd["today"]["answered"] == 1


def test_an_agent_consults_an_agency_then_cancels_and_goes_on_with_the_caller() -> None:
    run, first, line = to_an_agency("consult", AgentPhone(answer_after_s=2.0), consult_then="cancel")
    assert run.worker.bridged == [("caller", first), (first, line), ("caller", first)]
    assert ("transfer_failed", "1001", "agency:health", "cancelled") in run.desk.events
    assert run.desk.events[-1] == ("finished", "1001")


def test_an_agency_line_that_does_not_answer_leaves_the_caller_with_the_agent() -> None:
    run, first, _ = to_an_agency("hand", AgentPhone(answer_after_s=None))
    assert run.worker.bridged == [("caller", first)]
    assert ("transfer_failed", "1001", "agency:health", "no_answer") in run.desk.events
    assert run.agent_states == {"1001": "wrap_up"}


# -- callbacks --------------------------------------------------------------------

CALLBACK = {"enabled": True}
MOBILE = "09121234567"


class FakeBookings:
    """Fake of the control process's callback service: books into a list and hands the entry over in the
    call's real queue, as the service does; ``refuse`` numbers have a callback already."""

    def __init__(self, acd: Acd, refuse: tuple[str, ...] = ()) -> None:
        self.acd = acd
        self.refuse = refuse
        self.booked: list[tuple[str, CallbackRequest]] = []

    async def book(self, number: str, entry: QueueEntry, request: CallbackRequest) -> bool:
        if number in self.refuse:
            return False
        self.booked.append((number, request))
        await self.acd.submit("to_callback", key=entry.key, callback_key=f"callback-{len(self.booked)}")
        return True


def booking_run(script: Script, refuse: tuple[str, ...] = (), **kwargs: Any) -> tuple[LiveRun, FakeBookings]:
    made: list[FakeBookings] = []

    def bookings(acd: Acd) -> FakeBookings:
        made.append(FakeBookings(acd, refuse))
        return made[0]
    run = live_call(script, {"1001": AgentPhone()}, busy=1, announce_every_s=30.0, max_wait_s=20.0,
                    callback=CALLBACK, callbacks=bookings, **kwargs)
    return run, made[0]


def test_a_busy_queue_offers_a_callback_and_3_then_1_books_it_on_the_callers_own_number() -> None:
    script, queued = to_the_queue()
    # The second announcement (30 s in, waited past 20 s) offers it; 3, then 1 confirms the number read.
    script.key(queued + 45.0, "3").key(queued + 49.0, "1")
    run, bookings = booking_run(script, caller_number=MOBILE)
    heard = run.worker.prompts_heard()
    assert heard.index("queue_offer_message") < heard.index("queue_offer_callback")
    # Its last four digits are read back before the confirmation.
    at = heard.index("callback_number_is")
    assert heard[at + 1:at + 6] == ["digit_4", "digit_5", "digit_6", "digit_7", "callback_confirm"]
    assert "queue:callback" in run.session.path and heard[-1] == "callback_booked"
    ((number, request),) = bookings.booked
    assert number == MOBILE and request.caller is not None and request.caller.national_id == NATIONAL_ID
    # The caller's entry is the callback's, in its place; nobody abandoned the queue.
    (entry,) = [e for e in run.acd["queue"] if e["callback"]]
    assert entry["key"] == "callback-1" and run.acd["today"]["abandoned"] == 0
    assert protocol.HangupCall("caller") in run.worker.commands  # the softswitch let the caller go


def test_a_caller_keys_another_number_after_a_wrong_one() -> None:
    script, queued = to_the_queue()
    script.key(queued + 45.0, "3").key(queued + 49.0, "2").key(queued + 52.0, "12345#")
    script.key(queued + 60.0, "02155551234#")
    run, bookings = booking_run(script, caller_number=MOBILE)
    assert "callback_invalid_number" in run.worker.prompts_heard()
    assert [number for number, _ in bookings.booked] == ["02155551234"]


def test_a_withheld_number_is_asked_for_at_once() -> None:
    script, queued = to_the_queue()
    script.key(queued + 45.0, "3").key(queued + 48.0, MOBILE + "#")
    run, bookings = booking_run(script, caller_number="anonymous")
    assert "callback_number_is" not in run.worker.prompts_heard()
    assert [number for number, _ in bookings.booked] == [MOBILE]


def test_a_number_with_a_callback_already_stays_in_the_queue() -> None:
    script, queued = to_the_queue()
    script.key(queued + 45.0, "3").key(queued + 49.0, "1").hang_up(queued + 70.0)
    run, bookings = booking_run(script, refuse=(MOBILE,), caller_number=MOBILE)
    heard = run.worker.prompts_heard()
    assert "callback_already_booked" in heard and "callback_booked" not in heard
    assert not bookings.booked and run.session.path[-1] == "ended:queue"
    assert run.acd["today"]["abandoned"] == 1


def test_the_callback_key_does_nothing_before_the_queue_is_busy() -> None:
    script, queued = to_the_queue()
    script.key(queued + 5.0, "3").hang_up(queued + 15.0)
    run, bookings = booking_run(script, caller_number=MOBILE)
    heard = run.worker.prompts_heard()
    assert "queue_offer_callback" not in heard and "callback_number_is" not in heard and not bookings.booked


def callback_turn(session: Session) -> Callable[[Acd], Awaitable[CallbackTurn]]:
    """A callback's entry at the head of the queue with agent 1001 offered to it, as the service has it."""
    async def turn(acd: Acd) -> CallbackTurn:
        entry = acd.join("callback-7", "*******4567", callback=True)
        return CallbackTurn(entry, await acd.next_agent(entry), session)
    return turn


def test_a_callback_answered_hears_who_calls_and_talks_with_the_agent_it_was_offered() -> None:
    caller = PersonId(NATIONAL_ID, "keypad", "verified")
    session = Session(mode="live", caller=caller)
    script = Script().hang_up(60.0)
    run = live_call(script, {"1001": AgentPhone(answer_after_s=2.0), "1002": AgentPhone()},
                    turn=callback_turn(session), callback=CALLBACK)
    heard = run.worker.prompts_heard()
    assert heard[0] == "callback_intro" and "greeting" not in heard and "ask_national_id" not in heard
    assert run.worker.dialled == ["sip:1001@front"]
    assert run.session is session and run.session.path[:2] == ["callback", "queue:handled"] and session.callback
    assert [e[0] for e in run.desk.events] == ["offer", "connected", "finished"]
    assert run.acd["today"]["answered"] == 1 and not run.acd["queue"]


def test_a_callback_whose_agent_does_not_answer_waits_in_its_place_for_the_next() -> None:
    session = Session(mode="live", caller=PersonId(NATIONAL_ID, "keypad", "verified"))
    script = Script().hang_up(90.0)
    run = live_call(script, {"1001": AgentPhone(answer_after_s=None), "1002": AgentPhone(answer_after_s=1.0)},
                    turn=callback_turn(session), callback=CALLBACK)
    assert run.worker.dialled == ["sip:1001@front", "sip:1002@front"]
    assert "queue_please_wait" in run.worker.prompts_heard() and "queue:handled" in run.session.path
    assert run.agent_states["1001"] == "paused"
