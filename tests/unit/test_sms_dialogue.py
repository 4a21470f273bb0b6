"""The SMS offer after the tracking code, through the real channel code and a scripted worker, on virtual time.

Only a mobile caller is asked, once; 1 queues the SMS of the code just read
back, anything else or silence goes on to goodbye after a bounded wait.
"""

from __future__ import annotations

import pytest

from ivr.call_flow import CallFlow, IvrState, Session
from ivr.sms_offer import SmsOffer
from softswitch.config import IvrConfig
from tests.fakes.ivr_parts import FakeCases, FakePrompts, FakeSmsRequests
from tests.fakes.scripted_worker import AgentPhone, Played, Script, ScriptedWorker
from tests.fakes.virtual_time import run_virtual
from tests.unit.test_dialogue import NATIONAL_ID, PROMPTS, READ_BACK_S, after_ask, call, live_call, to_the_queue

pytestmark = pytest.mark.unit

MOBILE = "09121234567"
WAIT_S = 5.0


def message_script() -> Script:
    """Keys the ID, confirms, 2 (a message), 1 (about me), then speaks the message: the code is read back."""
    t = after_ask() + 1.0
    return (Script().key(t, NATIONAL_ID).key(t + 2.5 + READ_BACK_S + 0.5, "1").key(t + 2.5 + READ_BACK_S + 5.0, "2")
            .key(t + 2.5 + READ_BACK_S + 9.0, "1").say(t + 2.5 + READ_BACK_S + 14.0, 6.0))


def offered(worker: ScriptedWorker) -> Played:
    return next(p for p in worker.played if any("sms_offer" in f for f in p.files))


def offer_starts() -> float:
    """When the offer starts in a message call (found by a call that leaves it unanswered)."""
    _, worker, _ = call(message_script(), caller_number=MOBILE, sms=SmsOffer(FakeSmsRequests(), WAIT_S))
    return offered(worker).start


def test_pressing_1_queues_the_sms_of_the_code_read_back_once() -> None:
    requests = FakeSmsRequests()
    script = message_script().key(offer_starts() + 0.5, "1")
    session, worker, cases = call(script, caller_number=MOBILE, sms=SmsOffer(requests, WAIT_S))
    (case,) = cases.cases
    assert requests.requested == [(case.tracking_code, "+989121234567")]
    assert session.path[-3:] == ["tracking_code", "sms:queued", "goodbye"]
    heard = worker.prompts_heard()
    assert heard.index("tracking_code_intro") < heard.index("sms_offer") < heard.index("sms_queued")
    assert heard[-1] == "goodbye" and heard.count("sms_offer") == 1
    assert offered(worker).completed is False  # the 1 cut the offer short


def test_silence_goes_on_to_goodbye_after_the_wait_without_an_sms() -> None:
    requests = FakeSmsRequests()
    session, worker, _ = call(message_script(), caller_number=MOBILE, sms=SmsOffer(requests, WAIT_S))
    assert requests.requested == [] and session.path[-2:] == ["sms:declined", "goodbye"]
    offer = offered(worker)
    goodbye = next(p for p in worker.played if any("goodbye" in f for f in p.files))
    assert offer.end is not None and goodbye.start == pytest.approx(offer.end + WAIT_S)


def test_another_key_declines_and_a_1_pressed_during_the_read_back_is_no_answer() -> None:
    starts = offer_starts()
    for script in (message_script().key(starts + 0.5, "2"), message_script().key(starts - 3.0, "1")):
        requests = FakeSmsRequests()
        session, worker, _ = call(script, caller_number=MOBILE, sms=SmsOffer(requests, WAIT_S))
        assert requests.requested == [] and "sms:declined" in session.path
        assert worker.prompts_heard().count("sms_offer") == 1


@pytest.mark.parametrize("number", ["02188776655", "", "+442071234567", "111"])
def test_a_caller_whose_number_is_not_a_mobile_is_not_asked(number: str) -> None:
    requests = FakeSmsRequests()
    session, worker, _ = call(message_script(), caller_number=number, sms=SmsOffer(requests, WAIT_S))
    assert "sms_offer" not in worker.prompts_heard() and requests.requested == []
    assert session.path[-2:] == ["sms:not_mobile", "goodbye"]


def test_without_a_gateway_nothing_is_offered_and_the_path_is_as_before() -> None:
    session, worker, _ = call(message_script(), caller_number=MOBILE)
    assert "sms_offer" not in worker.prompts_heard() and session.path[-2:] == ["tracking_code", "goodbye"]


def test_a_store_that_cannot_queue_says_so_and_the_call_ends_normally() -> None:
    requests = FakeSmsRequests(failing=True)
    session, worker, _ = call(message_script().key(offer_starts() + 0.5, "1"), caller_number=MOBILE,
                              sms=SmsOffer(requests, WAIT_S))
    assert session.path[-2:] == ["sms:error", "goodbye"] and session.ended_by is None
    heard = worker.prompts_heard()
    assert "sms_failed" in heard and "sms_queued" not in heard


def test_the_case_of_an_agent_call_cut_short_is_offered_too() -> None:
    requests = FakeSmsRequests()
    script, _ = to_the_queue()
    # The agent's phone dies 20 s into the talk (a second after the answer): the caller hears the code, then the offer.
    agent = AgentPhone(answer_after_s=1.0, talk_s=20.0, ends_with=408)
    dry = live_call(Script(keys=list(script.keys)), {"1001": agent}, caller_number=MOBILE,
                    sms=SmsOffer(FakeSmsRequests(), WAIT_S))
    script.key(offered(dry.worker).start + 0.5, "1")
    run = live_call(script, {"1001": agent}, caller_number=MOBILE, sms=SmsOffer(requests, WAIT_S))
    assert "queue:agent_lost" in run.session.path and run.session.path[-3:] == [
        "tracking_code", "sms:queued", "goodbye"]
    assert requests.requested == [("100000009", "+989121234567")]  # the conversation's case (FakeDesk)


def test_a_caller_already_asked_is_never_asked_again_in_the_call() -> None:
    requests = FakeSmsRequests()
    worker = ScriptedWorker(Script().key(0.5, "1"), PROMPTS)

    async def run() -> Session:
        flow = CallFlow(worker.answer(), FakePrompts(), FakeCases(), IvrConfig(), "test-call",
                        caller_number=MOBILE, sms=SmsOffer(requests, WAIT_S))
        flow.session.tracking_code = "123456782"
        await flow._enter(IvrState.SMS_OFFER)
        await flow._enter(IvrState.SMS_OFFER)  # the step again, as a second pass through it would take it
        return flow.session
    session = run_virtual(run())
    assert worker.prompts_heard() == ["sms_offer", "sms_queued"] and session.path == ["sms:queued"]
    assert requests.requested == [("123456782", "+989121234567")]
