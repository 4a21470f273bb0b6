"""What real phones and trunks do beyond a plain call: hold, transfer, dying, NAT, several registrations.

One softswitch for the module (Kamailio, 2 workers, control) on ports
18060/18611 with short timers; every test uses agents of its own, so their
states do not meet. Callers and agents are PJSUA2 softphones; audio is
asserted by tone markers.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import pytest

from media.wavfile import read_pcm
from tests.sip.conftest import NATIONAL_ID, RunningSoftswitch, agent_accounts, running_softswitch
from tests.sip.console_client import ConsoleClient
from tests.sip.softphones import Phones, Softphone, phones_at
from tests.sip.test_live import (AGENT_TONE_HZ, ALWAYS_OPEN, CALLER_TONE_HZ, caller_through_ivr, dominant_hz,
                                 tone_share, tone_wav)
from tests.support.sipp import refused_scenario

pytestmark = [pytest.mark.sip, pytest.mark.timeout(180)]

SIP_PORT, HTTP_PORT, WORKER_PORT, RTP_PORT = 18060, 18611, 18070, 38000
PHONE_PORT, PHONE_RTP = 18200, 38400
PHONE_NUMBERS = itertools.count()  # across the module: the front may still hold a stopped phone's registration
PASSWORD = "agent-pass-2"
SUPERVISOR = "9002"
AGENTS = ["2001", "2002", "2003", "2004", "2005", "2006", "2007"]
RTP_TIMEOUT_S = 3.0
CONFIG = {
    "office_hours": {"weekly": ALWAYS_OPEN},
    "sip": {"rtp_timeout_s": RTP_TIMEOUT_S},
    "agents": {"ring_timeout_s": 5.0, "wrap_up_s": 0.5, "registration_poll_s": 0.5,
               "keepalive_interval_s": 1, "keepalive_timeout_s": 3,
               "accounts": [*agent_accounts([(a, f"کارشناس {a}", PASSWORD) for a in AGENTS], "softswitch-111"),
                            {**agent_accounts([(SUPERVISOR, "ناظر", PASSWORD)], "softswitch-111")[0],
                             "supervisor": True}]},
    "queue": {"announce_every_s": 2.0, "max_wait_s": 20.0},
}


@pytest.fixture(scope="module")
def switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSoftswitch]:
    with running_softswitch(tmp_path_factory.mktemp("phones-switch"), sip_port=SIP_PORT, http_port=HTTP_PORT,
                            workers=2, worker_base_port=WORKER_PORT, rtp_base_port=RTP_PORT,
                            config_overrides=CONFIG) as running:
        yield running


@pytest.fixture
def phones(tmp_path: Path) -> Iterator[Phones]:
    with phones_at(SIP_PORT, tmp_path / "phones", password=PASSWORD, sip_port=PHONE_PORT, rtp_port=PHONE_RTP,
                   numbers=PHONE_NUMBERS) as phones:
        yield phones


def agent_states(switch: RunningSoftswitch) -> dict[str, dict[str, Any]]:
    status, body = ConsoleClient(switch.http, SUPERVISOR, PASSWORD).login(as_agent=False).get_json(
        "/supervisor/api/snapshot")
    assert status == 200, body
    return {a["id"]: a for a in body["agents"]}


def logged_in_and_reachable(switch: RunningSoftswitch, agent_id: str) -> None:
    ConsoleClient(switch.http, agent_id, PASSWORD).login()
    switch.wait_for(lambda: agent_states(switch)[agent_id]["registered"] is True
                    and agent_states(switch)[agent_id]["state"] == "ready", 10, f"agent {agent_id} ready")


class LiveCall(NamedTuple):
    agent: Softphone
    caller: Softphone
    call: str  # the caller's call
    leg: str  # the agent's


def on_a_call(switch: RunningSoftswitch, phones: Phones, agent_id: str, tmp_path: Path,
              nat_host: str | None = None) -> LiveCall:
    """A registered, logged-in agent talking to a caller who came through the IVR; each plays a tone."""
    agent = phones.agent(agent_id, 0.3, nat_host=nat_host)
    logged_in_and_reachable(switch, agent_id)
    caller = phones.new(f"caller-of-{agent_id}")
    call = caller_through_ivr(caller, SIP_PORT)
    caller.play(call, tone_wav(tmp_path / "caller-tone.wav", CALLER_TONE_HZ, seconds=60))
    leg = agent.wait_for("incoming", timeout_s=20)["call"]
    agent.wait_for("state", call=leg, state="CONFIRMED", timeout_s=5)
    agent.play(leg, tone_wav(tmp_path / "agent-tone.wav", AGENT_TONE_HZ, seconds=60))
    return LiveCall(agent, caller, call, leg)


def last_seconds(pcm: bytes, seconds: float, skip_end_s: float = 0.3) -> bytes:
    end = len(pcm) - int(16000 * skip_end_s)
    return pcm[max(0, end - int(16000 * seconds)):end]


def each_hears_the_other(caller: Softphone, call: str, agent: Softphone, leg: str, tmp_path: Path) -> None:
    """Over 2.5 s, the caller hears the agent's tone and the agent the caller's."""
    caller.record(call, tmp_path / "caller-heard.wav")
    agent.record(leg, tmp_path / "agent-heard.wav")
    time.sleep(2.5)
    caller_heard = read_pcm(Path(caller.stop_record(call)["wav"]))
    agent_heard = read_pcm(Path(agent.stop_record(leg)["wav"]))
    assert abs(dominant_hz(last_seconds(caller_heard, 1.5)) - AGENT_TONE_HZ) < 15
    assert abs(dominant_hz(last_seconds(agent_heard, 1.5)) - CALLER_TONE_HZ) < 15


def test_hold_and_resume_by_the_agent_keep_the_bridge_and_the_tape(switch: RunningSoftswitch, phones: Phones,
                                                                    tmp_path: Path) -> None:
    agent, caller, call, leg = on_a_call(switch, phones, "2001", tmp_path)
    time.sleep(1.5)
    agent.hold(leg)
    time.sleep(1.5)
    agent.unhold(leg)
    time.sleep(1.0)
    each_hears_the_other(caller, call, agent, leg, tmp_path)  # after the resume, again
    caller.hangup(call)
    agent.wait_for("ended", call=leg, timeout_s=10)
    body = switch.call_record(call)
    tape = [r for r in body["recordings"] if r["kind"] == "conversation"]
    assert len(tape) == 1 and tape[0]["duration_s"] > 6 and tape[0]["complete"]
    conversation = read_pcm(switch.recording_file(tape[0]["sha256"]))
    # The tape goes on through the hold and has both parties after the resume.
    assert tone_share(last_seconds(conversation, 2.0), AGENT_TONE_HZ) > 0.1
    assert tone_share(last_seconds(conversation, 2.0), CALLER_TONE_HZ) > 0.1


def test_caller_hold_and_resume_in_the_ivr_lets_the_dialogue_go_on(switch: RunningSoftswitch, phones: Phones,
                                                                    speech: Path) -> None:
    caller = phones.new("caller-ivr-hold")
    call = caller.dial(f"sip:111@127.0.0.1:{SIP_PORT}")
    caller.wait_for("state", call=call, state="CONFIRMED", timeout_s=10)
    time.sleep(0.3)
    caller.hold(call)  # during the greeting
    time.sleep(1.0)
    caller.unhold(call)
    time.sleep(1.0)
    caller.dtmf(call, NATIONAL_ID)
    time.sleep(3.0 + 0.5)
    caller.dtmf(call, "1")  # confirm
    time.sleep(1.0)
    caller.dtmf(call, "2")  # a recorded message
    time.sleep(1.0)
    caller.dtmf(call, "1")  # about me
    time.sleep(1.5)  # "after the tone", beep
    caller.play(call, speech, loop=False)
    caller.wait_for("play_done", call=call, timeout_s=30)
    caller.dtmf(call, "#")
    caller.wait_for("ended", call=call, timeout_s=30)
    body, case = switch.case_of(call)
    assert "national_id:keypad:verified" in body["call"]["ivr_path"]
    message = [r for r in case["recordings"] if r["kind"] == "message"]
    # The recorder heard the caller after the resume: the speech is on the tape.
    assert len(message) == 1 and message[0]["duration_s"] > 2 and message[0]["complete"]


def test_a_transfer_from_the_agents_phone_to_no_one_it_may_is_refused_and_the_call_goes_on(
        switch: RunningSoftswitch, phones: Phones, tmp_path: Path) -> None:
    workers_before = {w["id"]: w["pid"] for w in switch.get("/api/health")[1]["workers"]}
    agent, caller, call, leg = on_a_call(switch, phones, "2002", tmp_path)
    time.sleep(1.0)
    # Not an agent, or not at the front: refused at once.
    for uri in (f"sip:09120000000@127.0.0.1:{SIP_PORT}", "sip:2003@127.0.0.2:5060"):
        agent.transfer(leg, uri)
        status = agent.wait_for("transfer_status", call=leg, timeout_s=10)
        assert status["code"] == 403, uri
    # The caller's side (a trunk) may not move its caller, even to an agent.
    caller.transfer(call, f"sip:2003@127.0.0.1:{SIP_PORT}")
    assert caller.wait_for("transfer_status", call=call, timeout_s=10)["code"] == 403
    # An agent who is not logged in: accepted by the worker, then given up (the final NOTIFY says so).
    agent.transfer(leg, f"sip:2003@127.0.0.1:{SIP_PORT}")
    status = agent.wait_for("transfer_status", call=leg, timeout_s=10)
    while not status["final"]:
        status = agent.wait_for("transfer_status", call=leg, timeout_s=10)
    assert status["code"] >= 300
    caller.record(call, tmp_path / "after-refer.wav")
    time.sleep(2.0)
    heard = read_pcm(Path(caller.stop_record(call)["wav"]))
    assert abs(dominant_hz(last_seconds(heard, 1.5)) - AGENT_TONE_HZ) < 15  # still talking to the agent
    caller.hangup(call)
    agent.wait_for("ended", call=leg, timeout_s=10)
    assert {w["id"]: w["pid"] for w in switch.get("/api/health")[1]["workers"]} == workers_before


def test_an_agents_phone_that_dies_mid_call_is_noticed(switch: RunningSoftswitch, phones: Phones,
                                                       tmp_path: Path) -> None:
    agent, caller, call, leg = on_a_call(switch, phones, "2004", tmp_path)
    time.sleep(1.5)
    agent.kill()  # no BYE, no more RTP, no unregistration
    killed = time.monotonic()
    # The caller is told, hears the code of the case the call became, and is hung up on.
    ended = caller.wait_for("ended", call=call, timeout_s=40)
    assert ended["t"] - killed > RTP_TIMEOUT_S - 0.5
    body = switch.call_record(call)
    assert "queue:agent_lost" in body["call"]["ivr_path"] and "tracking_code" in body["call"]["ivr_path"]
    assert body["tracking_code"]
    assert [r["kind"] for r in body["recordings"]].count("conversation") == 1
    # The agent is paused, and its dead phone is dropped from the registrations.
    switch.wait_for(lambda: agent_states(switch)["2004"]["registered"] is False, 15, "the dead phone dropped")
    state = agent_states(switch)["2004"]
    assert state["state"] == "paused" and state["pause_reason"] in ("agent_lost", "not_registered")


def test_an_agent_behind_nat_is_rung_at_its_source_and_heard(switch: RunningSoftswitch, phones: Phones,
                                                              tmp_path: Path) -> None:
    # Its Contact and SDP name 127.0.0.9 and a port nothing listens on; its packets come from 127.0.0.1.
    agent, caller, call, leg = on_a_call(switch, phones, "2005", tmp_path, nat_host="127.0.0.9")
    each_hears_the_other(caller, call, agent, leg, tmp_path)
    # The caller's hang-up reaches the agent's phone: in-dialog requests go to the source too.
    caller.hangup(call)
    assert agent.wait_for("ended", call=leg, timeout_s=10)["code"] == 200


def test_two_phones_of_one_agent_both_ring_and_the_first_to_answer_takes_the_call(
        switch: RunningSoftswitch, phones: Phones, tmp_path: Path) -> None:
    desk = phones.agent("2006", answer_after_s=None, name="agent2006-desk")
    mobile = phones.agent("2006", answer_after_s=None, name="agent2006-mobile")
    logged_in_and_reachable(switch, "2006")
    caller = phones.new("caller-fork")
    call = caller_through_ivr(caller, SIP_PORT)
    ringing_desk = desk.wait_for("incoming", timeout_s=20)["call"]
    ringing_mobile = mobile.wait_for("incoming", timeout_s=5)["call"]
    mobile.answer(ringing_mobile)
    mobile.wait_for("state", call=ringing_mobile, state="CONFIRMED", timeout_s=5)
    # The other phone stops ringing.
    assert desk.wait_for("ended", call=ringing_desk, timeout_s=5)["code"] in (487, 200)
    caller.hangup(call)
    mobile.wait_for("ended", call=ringing_mobile, timeout_s=10)


def test_keys_sent_as_sip_info_application_dtmf_are_taken(switch: RunningSoftswitch, phones: Phones) -> None:
    caller = phones.new("caller-info")
    call = caller_through_ivr(caller, SIP_PORT, send=lambda call, digit: caller.info(call, "application/dtmf", digit))
    time.sleep(1.0)
    caller.hangup(call)
    body = switch.call_record(call)
    assert "national_id:keypad:verified" in body["call"]["ivr_path"]
    assert not caller.events("error")


def test_a_call_refused_for_its_codecs_still_leaves_a_cdr(switch: RunningSoftswitch) -> None:
    # G.729 only: no codec in common, refused with 488 by the worker's library itself.
    scenario = refused_scenario(488).replace("RTP/AVP 8 0 101", "RTP/AVP 18").replace(
        "a=rtpmap:8 PCMA/8000\na=rtpmap:0 PCMU/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\n",
        "a=rtpmap:18 G729/8000\n")
    assert "G729" in scenario
    run = switch.sipp("g729-only", scenario, call_id="g729-only@test", timeout_s=20)
    result = run.run(switch.work / "g729-only")
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    body = switch.call_record("g729-only@test")
    assert body["call"]["disposition"] == "rejected_488"


def test_an_id_ended_with_hash_is_confirmed_after_the_whole_read_back(switch: RunningSoftswitch,
                                                                       phones: Phones) -> None:
    # The "#" the prompt allows after the ID arrives once the ten digits ended the
    # capture; it must neither cut the read-back short nor spoil the "1" after it.
    caller = phones.new("caller-hash")
    call = caller.dial(f"sip:111@127.0.0.1:{SIP_PORT}")
    caller.wait_for("state", call=call, state="CONFIRMED", timeout_s=10)
    time.sleep(1.0)
    for digit in NATIONAL_ID + "#":
        caller.dtmf(call, digit)
        time.sleep(0.25)
    # The caller waits for the whole read-back (12 prompts of 0.3 s here) and answers
    # well inside the 6 s confirmation time after it; a read-back cut short by the
    # "#" would have run that time out 6.25 s after the "#".
    time.sleep(7.5)
    caller.dtmf(call, "1")
    time.sleep(1.5)
    caller.hangup(call)
    path = switch.call_record(call)["call"]["ivr_path"]
    assert "national_id:keypad:verified" in path and "national_id:keypad:not_confirmed" not in path
