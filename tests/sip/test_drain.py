"""SIGTERM drains: new calls are refused, the running call finishes, nothing recorded is lost."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from pathlib import Path

import pytest

from storage.crypto import IdProtector
from storage.store import open_store
from tests.sip.conftest import NATIONAL_ID, CallerScript, running_softswitch
from tests.support.sipp import caller_scenario, refused_scenario

pytestmark = [pytest.mark.sip, pytest.mark.timeout(240)]


def test_sigterm_lets_the_running_call_finish_and_refuses_new_ones(tmp_path: Path, speech: Path) -> None:
    pcap = CallerScript().keys(NATIONAL_ID).keys("1").keys("2").keys("1").message(speech).write(tmp_path / "c.pcap")
    with running_softswitch(tmp_path / "switch", sip_port=17060, http_port=17111, workers=1,
                            worker_base_port=17070, rtp_base_port=37000, drain_timeout_s=60) as switch:
        running_run = switch.sipp("draining-call", caller_scenario(pcap), call_id="draining-call@test")
        running_call = running_run.start(switch.work / "draining-call")
        switch.wait_for(lambda: switch.get("/api/health")[1]["active_calls"] == 1, 15, "the call to start")
        time.sleep(3)  # into the ID step
        switch.process.send_signal(signal.SIGTERM)
        switch.wait_for(lambda: switch.get("/api/health")[1]["status"] == "draining", 10, "draining")

        refused = switch.sipp("during-drain", refused_scenario(503), call_id="during-drain@test", timeout_s=20)
        refused_result = refused.run(switch.work / "during-drain")
        assert refused_result.returncode == 0, refused_result.stderr + refused_result.stdout[-2000:]

        finished = running_run.finish(running_call)
        assert finished.returncode == 0, finished.stderr + finished.stdout[-2000:]
        switch.process.wait(timeout=60)
        assert switch.process.returncode == 0

    async def stored() -> tuple[str | None, list[str]]:
        protector = IdProtector.from_key_file(switch.data_dir / "keys" / "national_id.json")
        async with open_store(switch.data_dir / "softswitch.db", protector) as store:
            call = await store.get_call_by_sip_id("draining-call@test")
            case = await store.case_for_call(call.id)
            kinds = [r.kind for r in await store.recordings_for_call(call.id)]
            return (call.disposition, kinds) if case else (None, kinds)
    disposition, kinds = asyncio.run(stored())
    assert disposition == "completed"
    assert sorted(kinds) == ["message", "national_id_utterance"]


def test_worker_call_cap_is_read_from_the_library_and_the_front_keeps_to_it(tmp_path: Path) -> None:
    """One worker of 4 call slots, five simultaneous calls: four are answered, the fifth is refused.

    The cap is whatever the library holds after clamping the request: 4 asked of
    the server build, or the PyPI wheel's compiled 4.
    """
    with running_softswitch(tmp_path / "switch", sip_port=17160, http_port=17211, workers=1,
                            worker_base_port=17170, rtp_base_port=37100,
                            config_overrides={"workers": {"max_calls": 4}}) as switch:
        health = switch.get("/api/health")[1]
        assert health["workers"][0]["max_calls"] == 4  # known from the start, not learnt by refusal
        assert health["engine"]["max_calls"] >= 4
        run = switch.sipp("five-at-once", caller_scenario(None, hangup_after_ms=6000), call_id="cap-%u@test",
                          timeout_s=40)
        run = dataclasses.replace(run, calls=5, rate=20, limit=5, stats_file=switch.work / "five-at-once.csv")
        result = run.run(switch.work / "five-at-once")
        assert (result.successful, result.failed) == (4, 1), result.stdout[-2000:]
        assert switch.get("/api/health")[1]["workers"][0]["max_calls"] == 4


def test_worker_retires_after_its_quota_and_comes_back(tmp_path: Path) -> None:
    with running_softswitch(tmp_path / "switch", sip_port=17260, http_port=17311, workers=1,
                            worker_base_port=17270, rtp_base_port=37200, recycle_after_calls=2) as switch:
        first_pid = switch.get("/api/health")[1]["workers"][0]["pid"]
        for n in (1, 2):
            run = switch.sipp(f"quota-{n}", caller_scenario(None, hangup_after_ms=1500), call_id=f"quota-{n}@test")
            result = run.run(switch.work / f"quota-{n}")
            assert result.returncode == 0, result.stderr + result.stdout[-2000:]

        def replaced() -> bool:
            body = switch.get("/api/health")[1]
            return body["restarts"].get("worker0") == 1 and [w["pid"] for w in body["workers"]] not in ([], [first_pid])
        switch.wait_for(replaced, 20, "the retired worker to be replaced")
        time.sleep(2.5)  # Kamailio's dispatcher probes the new worker back into service
        run = switch.sipp("quota-3", caller_scenario(None, hangup_after_ms=1500), call_id="quota-3@test")
        result = run.run(switch.work / "quota-3")
        assert result.returncode == 0, result.stderr + result.stdout[-2000:]
        assert switch.call_record("quota-3@test")["call"]["worker_id"] == 0
