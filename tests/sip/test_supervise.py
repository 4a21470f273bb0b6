"""Supervision over real SIP: a supervisor's softphone listens to, whispers into and barges into a live call.

Caller, agent and supervisor are PJSUA2 softphones, each playing its own tone
and recording what it hears; the tones say who hears whom in each mode. One
softswitch (Kamailio, one worker, control) on ports 27560/27511, RTP from
47000; phones on 27600+ and RTP from 47400.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from media.wavfile import read_pcm
from tests.sip.conftest import NATIONAL_ID, agent_accounts, running_softswitch
from tests.sip.console_client import ConsoleClient
from tests.sip.softphones import Phones, Softphone, phones_at
from tests.sip.test_live import ALWAYS_OPEN, caller_through_ivr, tone_share, tone_wav

pytestmark = pytest.mark.sip

SIP_PORT, HTTP_PORT, WORKER_PORT, RTP_PORT = 27560, 27511, 27570, 47000
PHONE_PORT, PHONE_RTP = 27600, 47400
PASSWORD = "agent-pass-1"
AGENT, SUPERVISOR = "1001", "9001"
CALLER_HZ, AGENT_HZ, SUPERVISOR_HZ = 440.0, 1800.0, 1000.0
HEARD, SILENT = 0.1, 0.02  # a tone's share of what a phone recorded: heard, or not at all
SEGMENT_S = 2.5
# After a switch, before listening: the phones' jitter buffers still hold up to ~0.5 s of the old mix
# (measured: the caller heard the barging supervisor for the first 0.2 s of a recording begun 0.3 s after).
SETTLE_S = 0.8
CONFIG = {
    "office_hours": {"weekly": ALWAYS_OPEN},
    "agents": {"ring_timeout_s": 5.0, "wrap_up_s": 1.0, "accounts": [
        *agent_accounts([(AGENT, "مریم احمدی", PASSWORD)], "softswitch-111"),
        {**agent_accounts([(SUPERVISOR, "زهرا کریمی", PASSWORD)], "softswitch-111")[0], "supervisor": True}]},
    "workers": {"max_calls": 16, "rtp_ports_per_worker": 64},
}


@pytest.fixture
def phones(tmp_path: Path) -> Iterator[Phones]:
    with phones_at(SIP_PORT, tmp_path / "phones", password=PASSWORD, sip_port=PHONE_PORT,
                   rtp_port=PHONE_RTP) as phones:
        yield phones


def heard(phones: list[tuple[Softphone, str]], directory: Path, name: str) -> list[bytes]:
    """Each phone records what it hears for SEGMENT_S; the recordings' samples, in order."""
    for phone, call in phones:
        phone.record(call, directory / f"{phone.name}-{name}.wav")
    time.sleep(SEGMENT_S)
    return [read_pcm(Path(phone.stop_record(call)["wav"])) for phone, call in phones]


def test_supervisor_listens_whispers_and_barges_with_the_right_audio(tmp_path: Path, phones: Phones) -> None:
    with running_softswitch(tmp_path, sip_port=SIP_PORT, http_port=HTTP_PORT, workers=1,
                            worker_base_port=WORKER_PORT, rtp_base_port=RTP_PORT, config_overrides=CONFIG) as switch:
        agent = phones.agent(AGENT, answer_after_s=0.3)
        supervisor_phone = phones.agent(SUPERVISOR, answer_after_s=0.3)
        ConsoleClient(switch.http, AGENT, PASSWORD).login()
        supervisor = ConsoleClient(switch.http, SUPERVISOR, PASSWORD).login(as_agent=False)
        caller = phones.new("caller")
        call = caller_through_ivr(caller, front_port=SIP_PORT)
        caller.play(call, tone_wav(tmp_path / "caller.wav", CALLER_HZ))
        leg = agent.wait_for("incoming", timeout_s=15)["call"]
        agent.wait_for("state", call=leg, state="CONFIRMED", timeout_s=5)
        agent.play(leg, tone_wav(tmp_path / "agent.wav", AGENT_HZ))
        call_key = switch.wait_for(
            lambda: next((a["call_key"] for a in supervisor.get_json("/supervisor/api/snapshot")[1]["agents"]
                          if a["id"] == AGENT and a["state"] == "on_call"), None), 10, "the agent on the call")

        # An agent who is not a supervisor may not; a mode that does not exist is refused.
        status, _ = ConsoleClient(switch.http, AGENT, PASSWORD).login(as_agent=False).post(
            "/supervisor/api/monitor", {"call_key": call_key, "mode": "listen"})
        assert status == 403
        assert supervisor.post("/supervisor/api/monitor", {"call_key": call_key, "mode": "spy"})[0] == 400

        # Listen: the supervisor's phone is rung and joined; it hears both, nobody hears it.
        started = time.monotonic()
        status, body = supervisor.post("/supervisor/api/monitor", {"call_key": call_key, "mode": "listen"})
        assert status == 200, body
        assert body["monitor"] == {"call_key": call_key, "agent_id": AGENT, "mode": "listen", "state": "joined"}
        assert time.monotonic() - started < 5
        monitor_leg = supervisor_phone.wait_for("incoming", timeout_s=1)["call"]
        supervisor_phone.wait_for("state", call=monitor_leg, state="CONFIRMED", timeout_s=5)
        supervisor_phone.play(monitor_leg, tone_wav(tmp_path / "supervisor.wav", SUPERVISOR_HZ))
        time.sleep(SETTLE_S)  # the supervisor's tone under way
        legs = [(caller, call), (agent, leg), (supervisor_phone, monitor_leg)]
        at_caller, at_agent, at_supervisor = heard(legs, tmp_path, "listen")
        assert tone_share(at_supervisor, CALLER_HZ) > HEARD and tone_share(at_supervisor, AGENT_HZ) > HEARD
        assert tone_share(at_caller, SUPERVISOR_HZ) < SILENT and tone_share(at_agent, SUPERVISOR_HZ) < SILENT
        assert tone_share(at_caller, AGENT_HZ) > HEARD and tone_share(at_agent, CALLER_HZ) > HEARD

        # Whisper: the agent hears the supervisor, the caller does not.
        status, body = supervisor.post("/supervisor/api/monitor", {"call_key": call_key, "mode": "whisper"})
        assert status == 200 and body["monitor"]["mode"] == "whisper", body
        time.sleep(SETTLE_S)
        at_caller, at_agent, at_supervisor = heard(legs, tmp_path, "whisper")
        assert tone_share(at_agent, SUPERVISOR_HZ) > HEARD
        assert tone_share(at_caller, SUPERVISOR_HZ) < SILENT
        assert tone_share(at_supervisor, CALLER_HZ) > HEARD and tone_share(at_supervisor, AGENT_HZ) > HEARD

        # A re-INVITE rebuilds the supervisor's stream on a new bridge port: the whisper is wired again.
        supervisor_phone.hold(monitor_leg)
        time.sleep(0.5)
        supervisor_phone.unhold(monitor_leg)
        time.sleep(SETTLE_S + 0.5)
        at_caller, at_agent, at_supervisor = heard(legs, tmp_path, "whisper-after-hold")
        assert tone_share(at_agent, SUPERVISOR_HZ) > HEARD and tone_share(at_caller, SUPERVISOR_HZ) < SILENT
        assert tone_share(at_supervisor, CALLER_HZ) > HEARD and tone_share(at_supervisor, AGENT_HZ) > HEARD

        # Barge: a three-way call.
        status, body = supervisor.post("/supervisor/api/monitor", {"call_key": call_key, "mode": "barge"})
        assert status == 200 and body["monitor"]["mode"] == "barge", body
        time.sleep(SETTLE_S)
        at_caller, at_agent, at_supervisor = heard(legs, tmp_path, "barge")
        assert tone_share(at_caller, SUPERVISOR_HZ) > HEARD and tone_share(at_agent, SUPERVISOR_HZ) > HEARD
        assert tone_share(at_caller, AGENT_HZ) > HEARD and tone_share(at_agent, CALLER_HZ) > HEARD

        # Back to listening: the supervisor leaves the conversation again.
        assert supervisor.post("/supervisor/api/monitor", {"call_key": call_key, "mode": "listen"})[0] == 200
        time.sleep(SETTLE_S)
        at_caller, at_agent, _ = heard(legs, tmp_path, "listen-again")
        assert tone_share(at_caller, SUPERVISOR_HZ) < SILENT and tone_share(at_agent, SUPERVISOR_HZ) < SILENT

        # Stopping hangs up the supervisor's leg; the conversation goes on.
        status, body = supervisor.delete("/supervisor/api/monitor")
        assert status == 200, body
        supervisor_phone.wait_for("ended", call=monitor_leg, timeout_s=5)
        at_caller, at_agent = heard(legs[:2], tmp_path, "after")
        assert tone_share(at_caller, AGENT_HZ) > HEARD and tone_share(at_agent, CALLER_HZ) > HEARD
        caller.hangup(call)
        agent.wait_for("ended", call=leg, timeout_s=10)

        body, case = switch.case_of(call)
        tape = [r for r in body["recordings"] if r["kind"] == "conversation"]
        assert len(tape) == 1
        conversation = read_pcm(switch.recording_file(tape[0]["sha256"]))
        # The supervisor's voice is evidence from whisper and barge (about 2 x 3 s of the tape), never before.
        assert tone_share(conversation, SUPERVISOR_HZ) > 0.05
        assert tone_share(conversation[:16000], SUPERVISOR_HZ) < SILENT
        assert tone_share(conversation, CALLER_HZ) > HEARD and tone_share(conversation, AGENT_HZ) > HEARD
        monitored = [e for e in case["history"] if e["kind"] == "monitored"]
        # start, three switches, stop: by the supervisor.
        assert [e["actor"] for e in monitored] == [f"supervisor:{SUPERVISOR}"] * 5
        log = switch.log_path.read_text(errors="replace")
        assert log.count(f"supervisor {SUPERVISOR}: ") == 5
        assert "media renewed and reconnected" in log  # the hold and resume were the rewire's
        assert NATIONAL_ID not in log
