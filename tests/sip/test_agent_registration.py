"""Agents' softphones register at the SIP front with digest auth; only media workers may call them."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import subprocess
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from softswitch.config import AgentsConfig, load_config
from tests.sip.conftest import RunningSoftswitch, agent_accounts, running_softswitch
from tests.sip.front import front_alone as sipfront_alone
from tests.sip.softphones import Softphone
from tests.support.sipp import refused_scenario

pytestmark = [pytest.mark.sip, pytest.mark.timeout(180)]

# This file's ports (the shared suite uses 15060/17060 and SIPp on 16000+2n / 26000+10n).
SIP_PORT = 16060
HTTP_PORT = 16111
WORKER_PORT = 16070  # the only media worker: dispatcher set 1 holds 127.0.0.1:16070
RTP_BASE = 26000
SIPP_PORT, SIPP_MEDIA_PORT = 16290, 26990
REGISTRAR = f"sip:127.0.0.1:{SIP_PORT}"
REALM = AgentsConfig().realm
EXPIRES_S = 60
AGENTS = (("1001", "Agent One", "first-agent-pw"), ("1002", "Agent Two", "second-agent-pw"))
PASSWORD = {agent_id: password for agent_id, _, password in AGENTS}


def _phone(n: int, log_dir: Path, user: str) -> Softphone:
    """Softphone n of a test: SIP port 16200+n, RTP ports from 26400+20n (20 each)."""
    return Softphone(f"{n}-{user}", log_dir, user=user, sip_port=16200 + n, rtp_port=26400 + 20 * n)


def _register_message(cseq: int, auth_user: str, to_user: str, authentication: str = "") -> str:
    return f"""  <send retrans="500"><![CDATA[
REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{auth_user}@[remote_ip]>;tag=[pid]r[call_number]
To: <sip:{to_user}@[remote_ip]>
Call-ID: [call_id]
CSeq: {cseq} REGISTER
Contact: <sip:{auth_user}@[local_ip]:[local_port]>
{authentication}Expires: 60
Max-Forwards: 70
Content-Length: 0

]]></send>
"""


def register_as_other_scenario(auth_user: str, to_user: str, password: str) -> str:
    """SIPp authenticates as one agent but registers another agent's user (To): must get 403."""
    return ('<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="register another user">\n'
            + _register_message(1, auth_user, to_user)
            + '  <recv response="401" auth="true"/>\n'
            + _register_message(2, auth_user, to_user,
                                f"[authentication username={auth_user} password={password}]\n")
            + '  <recv response="403"/>\n</scenario>\n')


@pytest.fixture(scope="class")
def switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSoftswitch]:
    with running_softswitch(tmp_path_factory.mktemp("agents-switch"), sip_port=SIP_PORT, http_port=HTTP_PORT,
                            workers=1, worker_base_port=WORKER_PORT, rtp_base_port=RTP_BASE, agents=AGENTS,
                            config_overrides={"agents": {"registration_expires_s": EXPIRES_S}}) as running:
        yield running


class TestRegistrationAtTheFront:
    """Against a whole softswitch with two agents configured."""

    def test_front_config_is_private_and_holds_hashes_only(self, switch: RunningSoftswitch) -> None:
        cfg = switch.data_dir / "run" / "kamailio" / "kamailio.cfg"
        assert cfg.stat().st_mode & 0o777 == 0o600
        text = cfg.read_text()
        for entry in agent_accounts(AGENTS, REALM):
            assert entry["sip_ha1"] in text
        assert not any(password in text for password in PASSWORD.values())

    def test_agent_registers_with_its_password(self, switch: RunningSoftswitch, tmp_path: Path) -> None:
        with _phone(0, tmp_path, "1001") as phone:
            # Asks for an hour; the front grants at most agents.registration_expires_s.
            registered = phone.register(REGISTRAR, "1001", PASSWORD["1001"], realm=REALM, expires_s=3600)
            assert registered["event"] == "registered", registered
            assert registered["code"] == 200
            assert 0 < registered["expires_s"] <= EXPIRES_S
            # The registrar answers with the bindings it now holds.
            assert any(f"<sip:1001@127.0.0.1:{phone.sip_port}>" in c for c in registered["contacts"])
            assert phone.unregister()["event"] == "unregistered"
        assert phone.returncode == 0

    @pytest.mark.parametrize(("user", "password"), [("1001", "not-the-password"), ("1003", "first-agent-pw")],
                             ids=["wrong-password", "unknown-user"])
    def test_registration_is_refused(self, switch: RunningSoftswitch, tmp_path: Path, user: str,
                                     password: str) -> None:
        with _phone(1, tmp_path, user) as phone:
            outcome = phone.register(REGISTRAR, user, password, realm=REALM)
        assert (outcome["event"], outcome["code"]) == ("reg_failed", 403), outcome

    def test_an_agent_cannot_register_another_agents_user(self, switch: RunningSoftswitch) -> None:
        scenario = register_as_other_scenario("1001", "1002", PASSWORD["1001"])
        run = dataclasses.replace(switch.sipp("register-as-other", scenario, call_id="register-as-other@test"),
                                  local_port=SIPP_PORT, media_port=SIPP_MEDIA_PORT, timeout_s=15)
        result = run.run(switch.work / "register-as-other")
        assert result.returncode == 0, result.stderr + result.stdout[-2000:]

    def test_calls_to_an_agent_from_outside_the_softswitch_are_refused(self, switch: RunningSoftswitch,
                                                                      tmp_path: Path) -> None:
        with _phone(0, tmp_path, "1001") as agent, \
                _phone(1, tmp_path, "1002") as other:
            for phone, user in ((agent, "1001"), (other, "1002")):
                assert phone.register(REGISTRAR, user, PASSWORD[user], realm=REALM)["event"] == "registered"
            # A trunk (an allowed source for 111) calling the agent directly.
            run = dataclasses.replace(
                switch.sipp("trunk-to-agent", refused_scenario(403), call_id="trunk-to-agent@test", service="1001"),
                local_port=SIPP_PORT, media_port=SIPP_MEDIA_PORT, timeout_s=15)
            result = run.run(switch.work / "trunk-to-agent")
            assert result.returncode == 0, result.stderr + result.stdout[-2000:]
            # Another agent's softphone calling the agent.
            call = other.dial(f"sip:1001@127.0.0.1:{SIP_PORT}")
            assert other.wait_for("ended", call=call)["code"] == 403
            assert agent.events("incoming") == []

    def test_the_service_number_is_still_answered(self, switch: RunningSoftswitch, tmp_path: Path) -> None:
        with _phone(2, tmp_path, "caller") as caller:
            call = caller.dial(f"sip:111@127.0.0.1:{SIP_PORT}")
            caller.wait_for("state", call=call, state="CONFIRMED", timeout_s=10)
            caller.hangup(call)
            assert caller.wait_for("ended", call=call)["code"] == 200
        record = switch.call_record(call)
        assert record["call"]["source"] == "127.0.0.1"


@contextlib.contextmanager
def front_alone(base: Path) -> Iterator[Path]:
    """Only the SIP front (Kamailio) of a softswitch with the agents; no media worker behind it.

    Its dispatcher set names 127.0.0.1:16070, so a softphone on that port is,
    to the front, a media worker.
    """
    config = load_config(overrides={
        "data_dir": str(base), "sip.port": SIP_PORT, "workers.count": 1, "workers.base_port": WORKER_PORT,
        "kamailio.children": 2, "agents.accounts": agent_accounts(AGENTS, REALM),
        "agents.registration_expires_s": EXPIRES_S})
    with sipfront_alone(config, len(AGENTS), probe=("127.0.0.1", SIPP_PORT)) as log:
        yield log


def _rms(path: Path) -> float:
    with wave.open(str(path)) as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples ** 2))) if samples.size else 0.0


def test_a_worker_reaches_the_registered_agent_through_the_front(tmp_path: Path) -> None:
    """What a media worker's dial to an agent meets: the agent's softphone, by its registration.

    Until workers dial, a softphone on the worker's address stands in for one.
    """
    tone = tmp_path / "tone.wav"
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer", str(tone),
                    "synth", "1", "sine", "700", "vol", "0.5"], check=True)
    with front_alone(tmp_path / "front"), \
            _phone(0, tmp_path, "1001") as agent, \
            Softphone("worker", tmp_path, user="111", sip_trace=True, sip_port=WORKER_PORT,
                      rtp_port=26420) as worker:
        agent_uri = f"sip:1001@127.0.0.1:{SIP_PORT}"
        not_registered = worker.dial(agent_uri)
        assert worker.wait_for("ended", call=not_registered)["code"] == 480
        not_an_agent = worker.dial(f"sip:1003@127.0.0.1:{SIP_PORT}")
        assert worker.wait_for("ended", call=not_an_agent)["code"] == 404

        assert agent.register(REGISTRAR, "1001", PASSWORD["1001"], realm=REALM)["event"] == "registered"
        agent.answer_policy(answer_after_s=0.3)
        call = worker.dial(agent_uri, headers={"X-111-Call": "w0-1"})
        incoming = agent.wait_for("incoming")
        assert incoming["source"] == f"127.0.0.1:{SIP_PORT}"  # relayed by the front
        assert incoming["request_uri"] == f"sip:1001@127.0.0.1:{agent.sip_port}"  # the registered contact
        assert incoming["headers"] == {"X-111-Call": "w0-1"}
        agent.play(incoming["call"], tone)
        worker.record(call, tmp_path / "heard.wav")
        worker.wait_for("state", call=call, state="CONFIRMED", timeout_s=5)
        worker.dtmf(call, "42#")
        assert "".join(agent.wait_for("dtmf")["digit"] for _ in range(3)) == "42#"
        time.sleep(1.0)
        agent.hangup()
        assert worker.wait_for("ended", call=call)["code"] == 200
        recorded = worker.wait_for("recorded", call=call)
        assert recorded["complete"], recorded
        assert _rms(Path(recorded["wav"])) > 1000  # the agent's tone

        assert agent.unregister()["event"] == "unregistered"
        after = worker.dial(agent_uri)
        assert worker.wait_for("ended", call=after)["code"] == 480
    # The agent's BYE reached the worker through the front (record-routed).
    assert re.search(rf"RX \d+ bytes Request msg BYE/cseq=\d+ \(\w+\) from UDP 127\.0\.0\.1:{SIP_PORT}:",
                     worker.log_path.read_text())
    assert (agent.returncode, worker.returncode) == (0, 0)
