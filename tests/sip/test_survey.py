"""The post-call survey over real SIP: a caller's softphone talks to an agent's, the agent hangs up, the caller rates.

Own softswitch (Kamailio, one media worker, control) on ports 25060/25111,
worker 25070, RTP from 46000; phones from 25200 (RTP 46400). What the caller
hears is recorded by their softphone; each test prompt is a tone of its own
(``tests.sip.conftest.prompt_tone_hz``), so the question and the thanks can be
told apart in it.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from media.wavfile import read_pcm
from storage.reports import BOM
from tests.sip.conftest import REPORTS_TOKEN, RunningSoftswitch, agent_accounts, prompt_tone_hz, running_softswitch
from tests.sip.console_client import ConsoleClient
from tests.sip.softphones import Phones, Softphone, phones_at
from tests.sip.test_live import ALWAYS_OPEN, caller_through_ivr, tone_share

pytestmark = [pytest.mark.sip, pytest.mark.timeout(240)]

SIP_PORT, HTTP_PORT, WORKER_PORT, RTP_PORT = 25060, 25111, 25070, 46000
PHONE_PORT, PHONE_RTP = 25200, 46400
PASSWORD = "agent-pass-survey"
SUPERVISOR = "9005"
WAIT_S = 5.0
CONFIG = {
    "office_hours": {"weekly": ALWAYS_OPEN},
    # 8 call slots keep the worker's RTP ports (2 a slot, and spares) inside 46000-46999.
    "workers": {"max_calls": 8},
    "agents": {"ring_timeout_s": 5.0, "wrap_up_s": 1.0,
               "accounts": [*agent_accounts([("1001", "مریم احمدی", PASSWORD)], "softswitch-111"),
                            {**agent_accounts([(SUPERVISOR, "زهرا کریمی", PASSWORD)], "softswitch-111")[0],
                             "supervisor": True}]},
    "survey": {"wait_s": WAIT_S},
}
WINDOW = 8000 * 2 // 10  # 0.1 s of 16-bit mono 8 kHz


@pytest.fixture
def switch(tmp_path: Path) -> Iterator[RunningSoftswitch]:
    with running_softswitch(tmp_path / "switch", sip_port=SIP_PORT, http_port=HTTP_PORT, workers=1,
                            worker_base_port=WORKER_PORT, rtp_base_port=RTP_PORT, config_overrides=CONFIG) as running:
        yield running


@pytest.fixture
def phones(tmp_path: Path) -> Iterator[Phones]:
    with phones_at(SIP_PORT, tmp_path / "phones", password=PASSWORD, sip_port=PHONE_PORT,
                   rtp_port=PHONE_RTP) as made:
        yield made


def heard_at(pcm: bytes, prompt: str) -> list[float]:
    """When (seconds into the recording) the caller heard this prompt's tone."""
    hz = prompt_tone_hz(prompt)
    return [i / 16000 for i in range(0, len(pcm) - WINDOW, WINDOW) if tone_share(pcm[i:i + WINDOW], hz) > 0.5]


def http_text(switch: RunningSoftswitch, path: str) -> str:
    request = urllib.request.Request(switch.http + path, headers={"Authorization": f"Bearer {REPORTS_TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode("utf-8")


def talk_until_the_agent_hangs_up(phones: Phones, name: str, tmp_path: Path) -> tuple[Softphone, str]:
    """A caller through the IVR to agent 1001, who hangs up after 1.5 s; the caller's phone records it all."""
    agent = phones.agent("1001", answer_after_s=0.5, name=f"agent-{name}")
    caller = phones.new(name)
    call = caller_through_ivr(caller, front_port=SIP_PORT)
    caller.record(call, tmp_path / f"{name}-heard.wav")
    leg = agent.wait_for("incoming", timeout_s=20)["call"]
    agent.wait_for("state", call=leg, state="CONFIRMED", timeout_s=5)
    time.sleep(1.5)
    agent.hangup(leg)
    agent.wait_for("ended", call=leg, timeout_s=5)
    return caller, call


def test_the_agent_hangs_up_the_caller_keys_4_and_the_rating_is_everywhere(
        switch: RunningSoftswitch, phones: Phones, tmp_path: Path) -> None:
    ConsoleClient(switch.http, "1001", PASSWORD).login()
    caller, call = talk_until_the_agent_hangs_up(phones, "rater", tmp_path)
    time.sleep(1.5)  # the caller's leg stays up: the question (a 0.3 s prompt) comes, then the caller keys 4
    caller.dtmf(call, "4")
    ended = caller.wait_for("ended", call=call, timeout_s=15)
    assert ended["code"] == 200
    pcm = read_pcm(Path(caller.wait_for("recorded", call=call, timeout_s=5)["wav"]))
    asked, thanked = heard_at(pcm, "survey_ask"), heard_at(pcm, "survey_thanks")
    assert asked and thanked and asked[0] < thanked[0], (asked, thanked)
    assert not heard_at(pcm, "goodbye")  # the thanks are the goodbye

    body = switch.call_record(call)
    assert body["call"]["ivr_path"][-2:] == ["queue:handled", "survey:rated"]
    assert body["call"]["disposition"] == "completed" and body["call"]["agent_id"] == "1001"
    assert body["rating"] == {"score": 4, "kind": "agent", "agent_id": "1001", "agency": None}
    assert body["case"] is not None  # the call became a case, and the rating was filed with it

    rows = http_text(switch, "/api/reports/ratings.csv?by=agent").removeprefix(BOM).splitlines()
    assert rows == ["agent,name,count,average,score_1,score_2,score_3,score_4,score_5",
                    "1001,مریم احمدی,1,4.0,0,0,0,1,0"]
    status, snapshot = ConsoleClient(switch.http, SUPERVISOR, PASSWORD).login(as_agent=False).get_json(
        "/supervisor/api/snapshot")
    assert status == 200 and snapshot["ratings"]["agents"] == {"1001": {"count": 1, "average": 4.0}}
    metrics = http_text(switch, "/metrics")
    assert 'softswitch_survey_ratings_total{score="4"} 1.0' in metrics


def test_a_caller_who_keys_nothing_is_not_rated_and_hears_goodbye(
        switch: RunningSoftswitch, phones: Phones, tmp_path: Path) -> None:
    ConsoleClient(switch.http, "1001", PASSWORD).login()
    caller, call = talk_until_the_agent_hangs_up(phones, "silent", tmp_path)
    agent_left = time.monotonic()
    ended = caller.wait_for("ended", call=call, timeout_s=WAIT_S + 10)
    # The bounded wait: the question, WAIT_S of silence, goodbye, then the IVR hangs up.
    assert WAIT_S < time.monotonic() - agent_left < WAIT_S + 5 and ended["code"] == 200
    pcm = read_pcm(Path(caller.wait_for("recorded", call=call, timeout_s=5)["wav"]))
    assert heard_at(pcm, "survey_ask") and heard_at(pcm, "goodbye") and not heard_at(pcm, "survey_thanks")
    body = switch.call_record(call)
    assert body["call"]["ivr_path"][-3:] == ["queue:handled", "survey:no_key", "goodbye"]
    assert body["rating"] is None and body["call"]["disposition"] == "completed"
    assert "softswitch_survey_ratings_total{" not in http_text(switch, "/metrics")
