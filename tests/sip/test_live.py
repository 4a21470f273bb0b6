"""Live mode over real SIP: callers and agents are PJSUA2 softphones; agents register with digest auth.

Each test runs its own softswitch (Kamailio, 2 workers, control) on ports
19060/19111 with short timers, agents logged in through the console's HTTP API.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from media.wavfile import read_pcm
from softswitch.config import CONFIG_DIR, load_prompt_texts
from storage.crypto import IdProtector
from tests.sip.conftest import (NATIONAL_ID, RunningSoftswitch, agent_accounts, prompt_tone_hz, running_softswitch,
                                tone_overrides)
from tests.sip.console_client import ConsoleClient
from tests.sip.softphones import Phones, Softphone, phones_at

pytestmark = pytest.mark.sip

SIP_PORT, HTTP_PORT, WORKER_PORT, RTP_PORT = 19060, 19111, 19070, 29000
PHONE_PORT, PHONE_RTP = 19200, 29400
PASSWORD = "agent-pass-1"
SUPERVISOR = "9001"
ACCOUNTS = [*agent_accounts([("1001", "مریم احمدی", PASSWORD), ("1002", "علی رضایی", PASSWORD)], "softswitch-111"),
            {**agent_accounts([(SUPERVISOR, "زهرا کریمی", PASSWORD)], "softswitch-111")[0], "supervisor": True}]
ALWAYS_OPEN = {day: ["00:00-24:00"] for day in
               ("saturday", "sunday", "monday", "tuesday", "wednesday", "thursday", "friday")}
CALLER_TONE_HZ, AGENT_TONE_HZ = 440.0, 1800.0
LIVE: dict[str, Any] = {
    "office_hours": {"weekly": ALWAYS_OPEN},
    "agents": {"ring_timeout_s": 2.5, "wrap_up_s": 2.0, "accounts": ACCOUNTS},
    "queue": {"announce_every_s": 2.0, "max_wait_s": 4.0},
    # These tests hear how a conversation ends; the survey after it has its own (tests/sip/test_survey.py).
    "survey": {"enabled": False},
}


@contextlib.contextmanager
def live_softswitch(tmp_path: Path, **overrides: Any) -> Iterator[RunningSoftswitch]:
    config = {**LIVE, **overrides}
    with running_softswitch(tmp_path, sip_port=SIP_PORT, http_port=HTTP_PORT, workers=2,
                            worker_base_port=WORKER_PORT, rtp_base_port=RTP_PORT,
                            config_overrides=config) as running:
        yield running


@pytest.fixture
def phones(tmp_path: Path) -> Iterator[Phones]:
    with phones_at(SIP_PORT, tmp_path / "phones", password=PASSWORD, sip_port=PHONE_PORT,
                   rtp_port=PHONE_RTP) as phones:
        yield phones


def tone_wav(path: Path, hz: float, seconds: float = 30) -> Path:
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer", str(path),
                    "synth", str(seconds), "sine", str(hz), "vol", "0.5"], check=True)
    return path


def dominant_hz(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / 8000)[int(np.argmax(spectrum))])


def tone_share(pcm: bytes, hz: float, within_hz: float = 30) -> float:
    """Share of the signal's energy within ``within_hz`` of ``hz``."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / 8000)
    total = spectrum.sum()
    return float(spectrum[np.abs(freqs - hz) <= within_hz].sum() / total) if total else 0.0


def caller_through_ivr(caller: Softphone, front_port: int = SIP_PORT,
                       send: Callable[[str, str], None] | None = None, front_host: str = "127.0.0.1",
                       language_key: str | None = None, heard: Path | None = None) -> str:
    """Dial 111, [key ``language_key`` at the language menu,] key and confirm the national ID, choose 1
    (an agent), say it is about oneself. ``heard``: record what the caller hears there from the start.

    Keys go as RFC 4733 unless ``send(call, digit)`` sends each one otherwise (e.g. SIP INFO).
    """
    call = caller.dial(f"sip:111@{front_host}:{front_port}")
    caller.wait_for("state", call=call, state="CONFIRMED", timeout_s=10)
    if heard is not None:
        caller.record(call, heard)
    if language_key is not None:
        time.sleep(0.5)  # into the language menu (five 0.3 s tones): the key cuts it
        (send or caller.dtmf)(call, language_key)
    time.sleep(1.0)  # greeting and the ID prompt (0.3 s tones each)
    for digit in NATIONAL_ID:
        (send or caller.dtmf)(call, digit)
        time.sleep(0.25)
    time.sleep(3.0)  # the read-back
    for digit in "111":  # confirm, an agent, about myself
        (send or caller.dtmf)(call, digit)
        time.sleep(1.0)
    return call


def test_caller_is_bridged_to_agent_with_audio_both_ways(tmp_path: Path, phones: Phones) -> None:
    with live_softswitch(tmp_path) as switch:
        agent = phones.agent("1001", answer_after_s=0.5)
        ConsoleClient(switch.http, "1001", PASSWORD).login()
        caller = phones.new("caller")
        call = caller_through_ivr(caller)
        caller.play(call, tone_wav(tmp_path / "caller.wav", CALLER_TONE_HZ))
        caller.record(call, tmp_path / "caller-heard.wav")
        incoming = agent.wait_for("incoming", timeout_s=15)
        leg = incoming["call"]
        agent.wait_for("state", call=leg, state="CONFIRMED", timeout_s=5)
        agent.play(leg, tone_wav(tmp_path / "agent.wav", AGENT_TONE_HZ))
        agent.record(leg, tmp_path / "agent-heard.wav")
        time.sleep(3.0)
        agent.hangup(leg)
        # The agent hanging up ends the caller's leg too.
        ended = caller.wait_for("ended", call=call, timeout_s=10)
        assert ended["connected_s"] > 3
        agent_heard = read_pcm(Path(agent.wait_for("recorded", call=leg, timeout_s=5)["wav"]))
        caller_heard = read_pcm(Path(caller.wait_for("recorded", call=call, timeout_s=5)["wav"]))
        # The agent heard the caller's tone; the caller's last 2 s (after hold music) are the agent's tone.
        assert abs(dominant_hz(agent_heard[-16000 * 2:]) - CALLER_TONE_HZ) < 15
        assert abs(dominant_hz(caller_heard[-16000 * 2:-16000 // 2]) - AGENT_TONE_HZ) < 15
        body = switch.call_record(call)
        assert body["call"]["agent_id"] == "1001"
        assert "queue:handled" in body["call"]["ivr_path"]
        tape = [r for r in body["recordings"] if r["kind"] == "conversation"]
        assert len(tape) == 1 and tape[0]["duration_s"] > 3
        conversation = read_pcm(switch.recording_file(tape[0]["sha256"]))
        # One tape, both parties.
        assert tone_share(conversation, CALLER_TONE_HZ) > 0.2
        assert tone_share(conversation, AGENT_TONE_HZ) > 0.2
        # Every matter becomes a case: the agent filed nothing, so the IVR did, with the tape attached.
        assert body["case"] is not None and body["case"]["status"] == "received"




SECOND_AGENT_TONE_HZ = 2600.0


@dataclass
class HandedOver:
    caller: Softphone
    call: str
    first: Softphone
    first_leg: str
    second: Softphone
    second_leg: str
    console: ConsoleClient  # the first agent's


def hand_over(tmp_path: Path, phones: Phones, switch: RunningSoftswitch, to: str, consult: bool = False,
              second_phone: Softphone | None = None, refer_to: str | None = None) -> HandedOver:
    """Agents 1001 and 1002 logged in; a caller (its tone, recorded) answered by 1001 (its tone), who after
    2 s hands the call to ``to`` on the console (``consult``: to talk with them first), or with its phone's
    REFER to ``refer_to``; 1002 (or ``second_phone``, an agency's line) answers it (its tone)."""
    first = phones.agent("1001", answer_after_s=0.3)
    second = second_phone or phones.agent("1002", answer_after_s=0.3)
    console = ConsoleClient(switch.http, "1001", PASSWORD).login()  # idle longest: gets the call
    time.sleep(0.2)
    ConsoleClient(switch.http, "1002", PASSWORD).login()
    caller = phones.new("caller")
    call = caller_through_ivr(caller)
    caller.play(call, tone_wav(tmp_path / "caller.wav", CALLER_TONE_HZ))
    caller.record(call, tmp_path / "caller-heard.wav")
    first_leg = first.wait_for("incoming", timeout_s=15)["call"]
    first.wait_for("state", call=first_leg, state="CONFIRMED", timeout_s=5)
    first.play(first_leg, tone_wav(tmp_path / "first.wav", AGENT_TONE_HZ))
    time.sleep(2.0)
    offer = console.current_offer()
    assert offer is not None
    if refer_to is not None:
        first.transfer(first_leg, refer_to)
    else:
        target = {"agency_id": to.removeprefix("agency:")} if to.startswith("agency:") else {"agent_id": to}
        status, body = console.post("/console/api/transfer",
                                    {"call_key": offer["call_key"], **target, "consult": consult})
        assert (status, body) == (200, {"transferring_to": to, "consult": consult})
    second_leg = second.wait_for("incoming", timeout_s=15)["call"]
    second.wait_for("state", call=second_leg, state="CONFIRMED", timeout_s=5)
    second.play(second_leg, tone_wav(tmp_path / "second.wav", SECOND_AGENT_TONE_HZ))
    return HandedOver(caller, call, first, first_leg, second, second_leg, console)


def test_an_agent_hands_the_call_to_another_and_the_tape_has_both_agents(tmp_path: Path, phones: Phones) -> None:
    with live_softswitch(tmp_path) as switch:
        moved = hand_over(tmp_path, phones, switch, "1002")
        # The first agent's leg is ended by the softswitch once the second has answered.
        assert moved.first.wait_for("ended", call=moved.first_leg, timeout_s=10)["code"] in (200, 487)
        time.sleep(3.0)
        moved.caller.hangup(moved.call)
        moved.second.wait_for("ended", call=moved.second_leg, timeout_s=10)
        caller_heard = read_pcm(Path(moved.caller.wait_for("recorded", call=moved.call, timeout_s=5)["wav"]))
        body = switch.call_record(moved.call)
        # The caller's last seconds are the second agent's voice.
        assert abs(dominant_hz(caller_heard[-16000 * 2:-16000 // 2]) - SECOND_AGENT_TONE_HZ) < 15
        assert body["call"]["agent_id"] == "1002" and "queue:handled" in body["call"]["ivr_path"]
        (tape,) = [r for r in body["recordings"] if r["kind"] == "conversation"]
        conversation = read_pcm(switch.recording_file(tape["sha256"]))
        # One tape, all three parties: the caller, the first agent, then the second.
        for hz in (CALLER_TONE_HZ, AGENT_TONE_HZ, SECOND_AGENT_TONE_HZ):
            assert tone_share(conversation, hz) > 0.05, hz
        _, case = switch.get(f"/api/cases/{body['case']['tracking_code']}")
        moves = [e for e in case["history"] if e["kind"] == "transferred"]
        assert len(moves) == 1 and moves[0]["actor"] == "agent:1001"
        snapshot = supervisor_snapshot(switch)
        assert {a["id"]: a["state"] for a in snapshot["agents"]}["1002"] in ("wrap_up", "ready")
        assert snapshot["today"]["answered"] == 1


def test_an_agents_phone_refers_the_caller_to_a_colleague_and_the_case_and_tape_follow(tmp_path: Path,
                                                                                       phones: Phones) -> None:
    with live_softswitch(tmp_path) as switch:
        moved = hand_over(tmp_path, phones, switch, "1002", refer_to=f"sip:1002@127.0.0.1:{SIP_PORT}")
        # The phone hears its REFER was accepted and, by NOTIFY, that the colleague answered.
        statuses = [moved.first.wait_for("transfer_status", call=moved.first_leg, timeout_s=10)]
        while not statuses[-1]["final"]:
            statuses.append(moved.first.wait_for("transfer_status", call=moved.first_leg, timeout_s=10))
        assert statuses[-1]["code"] == 200
        assert moved.first.wait_for("ended", call=moved.first_leg, timeout_s=10)
        time.sleep(3.0)
        moved.caller.hangup(moved.call)
        moved.second.wait_for("ended", call=moved.second_leg, timeout_s=10)
        caller_heard = read_pcm(Path(moved.caller.wait_for("recorded", call=moved.call, timeout_s=5)["wav"]))
        assert abs(dominant_hz(caller_heard[-16000 * 2:-16000 // 2]) - SECOND_AGENT_TONE_HZ) < 15
        body = switch.call_record(moved.call)
        assert body["call"]["agent_id"] == "1002"
        (tape,) = [r for r in body["recordings"] if r["kind"] == "conversation"]
        conversation = read_pcm(switch.recording_file(tape["sha256"]))
        for hz in (CALLER_TONE_HZ, AGENT_TONE_HZ, SECOND_AGENT_TONE_HZ):
            assert tone_share(conversation, hz) > 0.05, hz
        _, case = switch.get(f"/api/cases/{body['case']['tracking_code']}")
        assert [e["actor"] for e in case["history"] if e["kind"] == "transferred"] == ["agent:1001"]
        assert supervisor_snapshot(switch)["today"]["answered"] == 1


def test_an_agent_sends_the_caller_back_to_the_queue_and_the_next_agent_answers(tmp_path: Path,
                                                                                 phones: Phones) -> None:
    with live_softswitch(tmp_path) as switch:
        moved = hand_over(tmp_path, phones, switch, "queue")  # 1001 in wrap-up: 1002 is the next agent
        # That conversation was over before the next agent was rung.
        assert [e["call"] for e in moved.first.events("ended")] == [moved.first_leg]
        time.sleep(2.5)
        moved.caller.hangup(moved.call)
        moved.second.wait_for("ended", call=moved.second_leg, timeout_s=10)
        body = switch.call_record(moved.call)
        assert body["call"]["agent_id"] == "1002"
        # Two conversations, two tapes, each with its agent; both with the call's one case.
        tapes = [r for r in body["recordings"] if r["kind"] == "conversation"]  # in the order they were made
        assert len(tapes) == 2
        heard = [read_pcm(switch.recording_file(tape["sha256"])) for tape in tapes]
        assert tone_share(heard[0], AGENT_TONE_HZ) > 0.05 and tone_share(heard[0], SECOND_AGENT_TONE_HZ) < 0.01
        assert tone_share(heard[1], SECOND_AGENT_TONE_HZ) > 0.05 and tone_share(heard[1], AGENT_TONE_HZ) < 0.01
        _, case = switch.get(f"/api/cases/{body['case']['tracking_code']}")
        assert {t["sha256"] for t in tapes} <= {r["sha256"] for r in case["recordings"]}
        snapshot = supervisor_snapshot(switch)
        assert (snapshot["today"]["offered"], snapshot["today"]["answered"]) == (1, 1)


HOLD_HZ = float(prompt_tone_hz("hold_music"))
AGENCY_LINE = "02161920000"


def window(pcm: bytes, start_s: float, end_s: float) -> bytes:
    """Part of what a softphone heard (8 kHz 16-bit PCM: 16000 bytes a second), in seconds from its start."""
    return pcm[int(start_s * 16000) & ~1:int(end_s * 16000) & ~1]


def test_an_agent_consults_a_colleague_in_private_then_puts_the_caller_through(tmp_path: Path,
                                                                             phones: Phones) -> None:
    with live_softswitch(tmp_path) as switch:
        moved = hand_over(tmp_path, phones, switch, "1002", consult=True)
        heard_from = time.monotonic()  # about when the caller's recording is at hand_over's end (+ 2 s in)
        moved.second.record(moved.second_leg, tmp_path / "second-heard.wav")
        time.sleep(3.0)  # the two agents talk; the caller holds
        offer = moved.console.current_offer()
        assert offer is not None and offer["consulting"] and offer["transferring"] == "1002"
        status, body = moved.console.post("/console/api/transfer/complete", {"call_key": offer["call_key"]})
        assert (status, body) == (200, {"consultation": "completing"})
        put_through = time.monotonic()
        assert moved.first.wait_for("ended", call=moved.first_leg, timeout_s=10)["code"] in (200, 487)
        time.sleep(3.0)
        hung_up = time.monotonic()
        moved.caller.hangup(moved.call)
        moved.second.wait_for("ended", call=moved.second_leg, timeout_s=10)
        caller_heard = read_pcm(Path(moved.caller.wait_for("recorded", call=moved.call, timeout_s=5)["wav"]))
        second_heard = read_pcm(Path(moved.second.wait_for("recorded", call=moved.second_leg, timeout_s=5)["wav"]))
        # By the clock of this test the consultation is the 3 s after heard_from (the colleague answered
        # just before it). The caller heard hold music then, not the agents.
        lead = len(caller_heard) / 16000 - (hung_up - heard_from)  # heard_from, in the caller's recording
        private = window(caller_heard, lead + 0.8, lead + (put_through - heard_from) - 0.5)
        assert tone_share(private, HOLD_HZ) > 0.3
        assert tone_share(private, AGENT_TONE_HZ) < 0.02 and tone_share(private, SECOND_AGENT_TONE_HZ) < 0.02
        # The colleague heard the first agent first, then the caller; the caller ends with the colleague.
        assert tone_share(window(second_heard, 0.5, 2.5), AGENT_TONE_HZ) > 0.3
        assert tone_share(second_heard[-16000 * 2:], CALLER_TONE_HZ) > 0.3
        assert abs(dominant_hz(caller_heard[-16000 * 2:-16000 // 2]) - SECOND_AGENT_TONE_HZ) < 15
        body = switch.call_record(moved.call)
        assert body["call"]["agent_id"] == "1002"
        (tape,) = [r for r in body["recordings"] if r["kind"] == "conversation"]
        conversation = read_pcm(switch.recording_file(tape["sha256"]))
        for hz in (CALLER_TONE_HZ, AGENT_TONE_HZ, SECOND_AGENT_TONE_HZ):  # the consultation is on it too
            assert tone_share(conversation, hz) > 0.05, hz
        _, case = switch.get(f"/api/cases/{body['case']['tracking_code']}")
        assert [e["actor"] for e in case["history"] if e["kind"] == "transferred"] == ["agent:1001"]


def test_an_agent_hands_the_caller_to_an_agencys_line_through_the_trunk(tmp_path: Path, phones: Phones) -> None:
    line = phones.new(AGENCY_LINE)  # the agency's line: its address is the front's outbound trunk
    agencies = [{"id": "health", "name": "وزارت بهداشت", "phone": AGENCY_LINE}, {"id": "roads", "name": "وزارت راه"}]
    with live_softswitch(tmp_path, sip={"outbound_trunk": f"127.0.0.1:{line.sip_port}"},
                         agencies=agencies) as switch:
        moved = hand_over(tmp_path, phones, switch, "agency:health", second_phone=line)
        incoming = [e for e in line.events("incoming") if e["call"] == moved.second_leg]
        assert incoming[0]["request_uri"].startswith(f"sip:{AGENCY_LINE}@127.0.0.1")
        # The agent's part is over: its leg ends, and it wraps up with the case opened already, which it
        # completes from the console while the caller talks with the agency.
        assert moved.first.wait_for("ended", call=moved.first_leg, timeout_s=10)["code"] in (200, 487)
        offer = moved.console.current_offer()
        assert offer is not None and offer["state"] == "ended" and offer["case"]["tracking_code"], offer
        status, filed = moved.console.post("/console/api/cases", {
            "call_key": offer["call_key"], "agency_id": "health", "category": "درخواست",
            "summary": "نوبت جراحی؛ به خط وزارت وصل شد."})
        assert status == 200 and filed["tracking_code"] == offer["case"]["tracking_code"], filed
        time.sleep(3.0)
        moved.caller.hangup(moved.call)
        line.wait_for("ended", call=moved.second_leg, timeout_s=10)
        caller_heard = read_pcm(Path(moved.caller.wait_for("recorded", call=moved.call, timeout_s=5)["wav"]))
        assert abs(dominant_hz(caller_heard[-16000 * 2:-16000 // 2]) - SECOND_AGENT_TONE_HZ) < 15
        body = switch.call_record(moved.call)
        assert body["call"]["agent_id"] == "1001" and "queue:handled" in body["call"]["ivr_path"]
        (tape,) = [r for r in body["recordings"] if r["kind"] == "conversation"]
        conversation = read_pcm(switch.recording_file(tape["sha256"]))
        for hz in (CALLER_TONE_HZ, AGENT_TONE_HZ, SECOND_AGENT_TONE_HZ):  # the agency's part is taped too
            assert tone_share(conversation, hz) > 0.05, hz
        assert body["case"]["tracking_code"] == filed["tracking_code"]
        _, case = switch.get(f"/api/cases/{body['case']['tracking_code']}")
        assert [e["kind"] for e in case["history"]].count("transferred") == 1
        assert (case["agency"], case["category"], case["status"]) == ("health", "درخواست", "referred"), case
        snapshot = supervisor_snapshot(switch)
        assert {a["id"]: a["state"] for a in snapshot["agents"]}["1001"] in ("wrap_up", "ready")
        assert snapshot["today"]["answered"] == 1


ENGLISH_GREETING_HZ, ENGLISH_OTHER_HZ = 3000.0, 2800.0


def test_a_caller_who_chooses_english_hears_english_and_gets_the_agent_who_speaks_it(
        tmp_path: Path, phones: Phones) -> None:
    # English prompts: its greeting one tone, every other prompt another; Persian keeps its own tones.
    english = tone_overrides(tmp_path / "english-prompts", {
        name: ENGLISH_GREETING_HZ if name == "greeting" else ENGLISH_OTHER_HZ
        for name in load_prompt_texts(CONFIG_DIR / "prompts.en.yaml")})
    accounts = [ACCOUNTS[0], {**ACCOUNTS[1], "languages": ["en", "fa"]}, ACCOUNTS[2]]
    languages = {"other_languages": [{"code": "en", "label": "انگلیسی", "texts": str(CONFIG_DIR / "prompts.en.yaml"),
                                      "voice": "en-us", "numbers": "en", "override_dir": str(english)}]}
    with live_softswitch(tmp_path, prompts=languages, agents={**LIVE["agents"], "accounts": accounts}) as switch:
        persian_only = phones.agent("1001", answer_after_s=0.3)
        speaks_english = phones.agent("1002", answer_after_s=0.3)
        ConsoleClient(switch.http, "1001", PASSWORD).login()  # idle longest, but speaks no English
        time.sleep(0.2)
        ConsoleClient(switch.http, "1002", PASSWORD).login()
        caller = phones.new("caller")
        call = caller_through_ivr(caller, language_key="2", heard=tmp_path / "caller-heard.wav")
        leg = speaks_english.wait_for("incoming", timeout_s=15)["call"]
        speaks_english.wait_for("state", call=leg, state="CONFIRMED", timeout_s=5)
        time.sleep(1.0)
        caller.hangup(call)
        speaks_english.wait_for("ended", call=leg, timeout_s=10)
        assert persian_only.events("incoming") == []
        heard = read_pcm(Path(caller.wait_for("recorded", call=call, timeout_s=5)["wav"]))
        body = switch.call_record(call)
    assert body["call"]["ivr_path"][:2] == ["language:en", "greeting"] and body["call"]["agent_id"] == "1002"
    # The English greeting was played; the Persian one (its own tone) never was.
    assert tone_share(heard, ENGLISH_GREETING_HZ, within_hz=8) > 0.01
    assert tone_share(heard, prompt_tone_hz("greeting"), within_hz=8) < 0.001


def test_agent_who_does_not_answer_is_paused_and_the_next_agent_is_rung(tmp_path: Path, phones: Phones) -> None:
    with live_softswitch(tmp_path) as switch:
        silent = phones.agent("1001", answer_after_s=None)  # rings, never answers
        answering = phones.agent("1002", answer_after_s=0.3)
        ConsoleClient(switch.http, "1001", PASSWORD).login()  # idle longest: rung first
        time.sleep(0.2)
        ConsoleClient(switch.http, "1002", PASSWORD).login()
        caller = phones.new("caller")
        call = caller_through_ivr(caller)
        rung = silent.wait_for("incoming", timeout_s=15)
        # Not answered within the ring timeout (2.5 s): the leg is cancelled ...
        ended = silent.wait_for("ended", call=rung["call"], timeout_s=10)
        assert ended["code"] == 487
        assert ended["t"] - rung["t"] == pytest.approx(2.5, abs=0.6)
        # ... and the next agent is rung and connected.
        leg = answering.wait_for("incoming", timeout_s=10)["call"]
        answering.wait_for("state", call=leg, state="CONFIRMED", timeout_s=5)
        time.sleep(1.0)
        caller.hangup(call)
        answering.wait_for("ended", call=leg, timeout_s=10)
        body = switch.call_record(call)
        assert body["call"]["agent_id"] == "1002"
        snapshot = supervisor_snapshot(switch)
        states = {a["id"]: a for a in snapshot["agents"]}
        assert states["1001"]["state"] == "paused" and states["1001"]["pause_reason"] == "no_answer"
        assert states["1002"]["state"] in ("wrap_up", "ready")
        assert snapshot["today"]["answered"] == 1


def test_agent_gets_no_call_during_wrap_up(tmp_path: Path, phones: Phones) -> None:
    with live_softswitch(tmp_path) as switch:
        agent = phones.agent("1001", answer_after_s=0.2)
        ConsoleClient(switch.http, "1001", PASSWORD).login()
        first, second = phones.new("caller1"), phones.new("caller2")
        call1 = caller_through_ivr(first)
        leg1 = agent.wait_for("incoming", timeout_s=15)["call"]
        agent.wait_for("state", call=leg1, state="CONFIRMED", timeout_s=5)
        call2 = caller_through_ivr(second)  # queued behind: the only agent is on a call
        time.sleep(1.0)
        agent.hangup(leg1)
        ended = agent.wait_for("ended", call=leg1, timeout_s=5)
        rung = agent.wait_for("incoming", timeout_s=15)
        # Wrap-up is 2 s: the second caller is put through only after it.
        assert rung["t"] - ended["t"] >= 2.0
        assert rung["t"] - ended["t"] < 2.0 + 2.0
        agent.wait_for("state", call=rung["call"], state="CONFIRMED", timeout_s=5)
        second.hangup(call2)
        first.wait_for("ended", call=call1, timeout_s=5)


def supervisor_snapshot(switch: RunningSoftswitch) -> dict[str, Any]:
    status, body = ConsoleClient(switch.http, SUPERVISOR, PASSWORD).login(as_agent=False).get_json(
        "/supervisor/api/snapshot")
    assert status == 200, body
    return body


# -- callbacks -------------------------------------------------------------------------------------

CALLBACK_NUMBER = "09121234567"
INTRO_HZ = float(prompt_tone_hz("callback_intro"))


@pytest.fixture
def to_call_back(phones: Phones) -> Softphone:
    """The caller to be called back: its SIP user (caller ID) is its number, and its address is the
    front's outbound trunk."""
    return phones.new(CALLBACK_NUMBER)


def callback_softswitch(tmp_path: Path, caller: Softphone, **callback: Any) -> contextlib.AbstractContextManager[
        RunningSoftswitch]:
    return live_softswitch(tmp_path, sip={"outbound_trunk": f"127.0.0.1:{caller.sip_port}"}, queue={
        **LIVE["queue"], "callback": {"enabled": True, "ring_timeout_s": 8.0, "retry_after_s": 1.0, **callback}})


def book_a_callback(phones: Phones, switch: RunningSoftswitch, caller: Softphone,
                    free_agent: bool = True) -> tuple[str, Softphone, ConsoleClient]:
    """Agent 1001 talks with a first caller; ``caller`` waits past queue.max_wait_s, presses 3 at the offer
    and 1 to be called back on their own number, and is let go; then (``free_agent``) the first caller hangs
    up, which frees the agent after its wrap-up (2 s). (The call that booked it, the agent's phone and
    console.)"""
    agent = phones.agent("1001", answer_after_s=0.3)
    console = ConsoleClient(switch.http, "1001", PASSWORD).login()
    first = phones.new("first")
    first_call = caller_through_ivr(first)
    leg = agent.wait_for("incoming", timeout_s=15)["call"]
    agent.wait_for("state", call=leg, state="CONFIRMED", timeout_s=5)
    call = caller_through_ivr(caller)
    time.sleep(6.0)  # past max_wait_s (4 s): the announcements (every 2 s) offer the callback
    caller.dtmf(call, "3")
    time.sleep(2.5)  # "on the number ending in" 4 5 6 7, "1 to confirm"
    caller.dtmf(call, "1")
    # Booked: the softswitch says so and hangs up.
    caller.wait_for("ended", call=call, timeout_s=15)
    if free_agent:
        first.hangup(first_call)
        agent.wait_for("ended", call=leg, timeout_s=10)
    return call, agent, console


def test_a_caller_who_books_a_callback_is_called_back_through_the_trunk_and_talks_with_the_agent(
        tmp_path: Path, phones: Phones, to_call_back: Softphone) -> None:
    caller = to_call_back
    with callback_softswitch(tmp_path, caller) as switch:
        booking, agent, console = book_a_callback(phones, switch, caller)
        # The front sent the worker's call out to the trunk, to the number booked.
        incoming = caller.wait_for("incoming", timeout_s=20)
        assert incoming["request_uri"].startswith(f"sip:{CALLBACK_NUMBER}@127.0.0.1")
        back = incoming["call"]
        caller.wait_for("state", call=back, state="CONFIRMED", timeout_s=5)
        caller.record(back, tmp_path / "called-back-heard.wav")
        caller.play(back, tone_wav(tmp_path / "caller.wav", CALLER_TONE_HZ))
        leg = agent.wait_for("incoming", timeout_s=15)["call"]
        agent.wait_for("state", call=leg, state="CONFIRMED", timeout_s=5)
        agent.play(leg, tone_wav(tmp_path / "agent.wav", AGENT_TONE_HZ))
        pop = console.current_offer()  # the agent sees it is a callback, with the ID keyed at the booking
        assert pop is not None and pop["callback"] and pop["national_id"] == NATIONAL_ID
        time.sleep(3.0)
        caller.hangup(back)
        agent.wait_for("ended", call=leg, timeout_s=10)
        heard = read_pcm(Path(caller.wait_for("recorded", call=back, timeout_s=5)["wav"]))
        # It began by saying who calls (the intro's tone), and ended with the agent's voice.
        assert abs(dominant_hz(heard[:16000 * 3 // 10]) - INTRO_HZ) < 15
        assert abs(dominant_hz(heard[-16000 * 2:-16000 // 2]) - AGENT_TONE_HZ) < 15
        body, case = switch.case_of("callback-1-1@callback")
        assert body["call"]["agent_id"] == "1001" and body["call"]["ivr_path"][:2] == ["callback", "queue:handled"]
        (tape,) = [r for r in body["recordings"] if r["kind"] == "conversation"]
        conversation = read_pcm(switch.recording_file(tape["sha256"]))
        assert tone_share(conversation, CALLER_TONE_HZ) > 0.2 and tone_share(conversation, AGENT_TONE_HZ) > 0.2
        # Filed under the ID the caller keyed when they booked it.
        assert case["national_id"] == IdProtector.mask(NATIONAL_ID) and case["id_status"] == "verified"
        assert "queue:callback" in switch.call_record(booking)["call"]["ivr_path"]
        today = supervisor_snapshot(switch)["today"]
        assert (today["offered"], today["answered"], today["abandoned"]) == (2, 2, 0)


def test_a_callback_never_answered_is_tried_again_and_becomes_a_case_saying_so(
        tmp_path: Path, phones: Phones, to_call_back: Softphone) -> None:
    caller = to_call_back
    caller.answer_policy(reject_code=486)  # busy whenever it is called
    with callback_softswitch(tmp_path, caller, attempts=2) as switch:
        booking, agent, _ = book_a_callback(phones, switch, caller)
        for _ in range(2):
            caller.wait_for("incoming", timeout_s=20)
        # Filed under the call that booked it, with the IDs keyed then, once the last attempt is over.
        switch.wait_for(lambda: switch.call_record(booking)["tracking_code"], 10, "the unreached callback's case")
        body, case = switch.case_of(booking)
        assert "callback_unreached" in [e["kind"] for e in case["history"]]
        assert case["national_id"] == IdProtector.mask(NATIONAL_ID) and case["id_status"] == "verified"
        for attempt in (1, 2):
            assert switch.call_record(f"callback-1-{attempt}@callback")["call"]["disposition"] == "callback_busy"
        # The agent was never rung for it, and is free again.
        assert len(agent.events("incoming")) == 1
        assert {a["id"]: a["state"] for a in supervisor_snapshot(switch)["agents"]}["1001"] == "ready"


def test_a_booked_callback_survives_a_restart_and_is_made_after_it(
        tmp_path: Path, phones: Phones, to_call_back: Softphone) -> None:
    caller = to_call_back
    with callback_softswitch(tmp_path, caller) as switch:
        booking, _, _ = book_a_callback(phones, switch, caller, free_agent=False)
        assert "queue:callback" in switch.call_record(booking)["call"]["ivr_path"]
    # Stopped (the agent's call hung up by the drain); started again on the same store.
    assert not caller.events("incoming")
    with callback_softswitch(tmp_path, caller) as switch:
        agent = phones.agent("1001", answer_after_s=0.3)  # the front starts with no registrations
        ConsoleClient(switch.http, "1001", PASSWORD).login()
        back = caller.wait_for("incoming", timeout_s=30)["call"]
        leg = agent.wait_for("incoming", timeout_s=20)["call"]
        agent.wait_for("state", call=leg, state="CONFIRMED", timeout_s=5)
        time.sleep(1.0)
        caller.hangup(back)
        body = switch.call_record("callback-1-1@callback")
        assert body["call"]["agent_id"] == "1001" and "queue:handled" in body["call"]["ivr_path"]
