"""End to end over loopback: SIPp callers with Persian speech RTP through Kamailio to the workers."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from media.wavfile import is_silence, read_pcm
from tests.sip.conftest import DISALLOWED_SOURCE, NATIONAL_ID, SUBJECT_ID, CallerScript, RunningSoftswitch
from tests.support.sipp import caller_scenario

pytestmark = [pytest.mark.sip, pytest.mark.timeout(180)]



def keyed_id_then_message(speech: Path, pcap: Path, end_with_pound: bool = True) -> CallerScript:
    """Caller keys and confirms the ID, says the request is their own, then speaks it."""
    script = CallerScript().keys(NATIONAL_ID).keys("1").keys("2").keys("1").message(speech, then_pound=end_with_pound)
    script.write(pcap)
    return script


def test_recorded_message_end_to_end(softswitch: RunningSoftswitch, speech: Path, tmp_path: Path) -> None:
    pcap = tmp_path / "caller.pcap"
    speech_s = keyed_id_then_message(speech, pcap).speech_s
    result, call_id = softswitch.call("full-flow", pcap)
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]

    body = softswitch.call_record(call_id)
    call = body["call"]
    assert call["disposition"] == "completed"
    assert call["answered_at"] and call["ended_at"] >= call["answered_at"] >= call["arrived_at"]
    assert call["ivr_path"][:5] == ["greeting", "national_id:keypad:verified", "menu:message", "about:self",
                                    "message:digit"]
    assert "tracking_code" in call["ivr_path"] and call["ivr_path"][-1] == "goodbye"
    code = body["tracking_code"]
    assert code and code.isdigit() and len(code) == 9

    kinds = {r["kind"]: r for r in body["recordings"]}
    assert set(kinds) == {"national_id_utterance", "message"}
    message = kinds["message"]
    assert abs(message["duration_s"] - speech_s) < 0.5, (message["duration_s"], speech_s)
    message_file = softswitch.recording_file(message["sha256"])
    assert not is_silence(message_file)
    assert len(read_pcm(message_file)) == pytest.approx(message["duration_s"] * 16000, abs=2)

    status, case = softswitch.get(f"/api/cases/{code}")
    assert status == 200
    assert case["status"] == "received" and case["id_source"] == "keypad" and case["id_status"] == "verified"
    assert case["national_id"] == "********" + NATIONAL_ID[-2:] and case["on_behalf_of_other"] is False
    assert {r["kind"] for r in case["recordings"]} == {"national_id_utterance", "message"}
    assert case["call"]["sip_call_id"] == call_id


def test_hangup_mid_message_keeps_partial_recording(softswitch: RunningSoftswitch, speech: Path,
                                                    tmp_path: Path) -> None:
    pcap = tmp_path / "caller.pcap"
    script = keyed_id_then_message(speech, pcap, end_with_pound=False)
    speech_s = script.speech_s
    hangup_at_s = script.speech_start_s + speech_s / 2
    result, call_id = softswitch.call("hangup-mid-message", pcap, hangup_after_ms=int(hangup_at_s * 1000))
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]

    body = softswitch.call_record(call_id)
    assert body["call"]["disposition"] == "caller_hangup"
    assert body["call"]["ivr_path"][-1] == "ended:message"
    message = next(r for r in body["recordings"] if r["kind"] == "message")
    # Recorded from the beep to the hang-up: about half the speech, and nothing lost.
    assert speech_s / 2 - 0.6 < message["duration_s"] < speech_s / 2 + 0.6
    assert not is_silence(softswitch.recording_file(message["sha256"]))
    _, case = softswitch.case_of(call_id)
    assert case["status"] == "received_incomplete"


def test_other_number_gets_404(softswitch: RunningSoftswitch) -> None:
    result, call_id = softswitch.refused("wrong-number", 404, service="112")
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    body = softswitch.call_record(call_id)
    assert body["call"]["disposition"] == "rejected_404"
    assert body["case"] is None and body["recordings"] == []


def test_disallowed_source_gets_403(softswitch: RunningSoftswitch) -> None:
    result, call_id = softswitch.refused("bad-source", 403, local_ip=DISALLOWED_SOURCE)
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    body = softswitch.call_record(call_id)
    assert body["call"]["disposition"] == "rejected_403"
    assert body["call"]["source"].startswith(DISALLOWED_SOURCE)


def test_worker_killed_mid_call_spares_other_calls(softswitch: RunningSoftswitch, speech: Path,
                                                   tmp_path: Path) -> None:
    long_pcap = tmp_path / "long.pcap"
    victim_script = CallerScript().keys(NATIONAL_ID).keys("1").keys("2").keys("1").message(speech, then_pound=False)
    message_starts_s = victim_script.speech_start_s
    for _ in range(2):
        victim_script.say(speech, then_pound=False, lead_s=0.3)
    victim_script.write(long_pcap)
    short_pcap = tmp_path / "short.pcap"
    keyed_id_then_message(speech, short_pcap)

    victim_id = f"victim-{os.getpid()}@test"
    victim_run = softswitch.sipp("victim", caller_scenario(long_pcap), call_id=victim_id, timeout_s=40)
    victim = victim_run.start(softswitch.work / "victim")
    # One INVITE at a time: the front's children pick the least loaded worker in parallel, so two
    # INVITEs of the same moment may both see the same loads and go to one worker.
    softswitch.wait_for(lambda: softswitch.get(f"/api/calls/{victim_id}")[0] == 200, 15, "the victim's call")
    survivor_id = f"survivor-{os.getpid()}@test"
    survivor_run = softswitch.sipp("survivor", caller_scenario(short_pcap), call_id=survivor_id, timeout_s=60)
    survivor = survivor_run.start(softswitch.work / "survivor")
    try:
        def workers_of_both() -> tuple[int, int] | None:
            victim_status, victim_body = softswitch.get(f"/api/calls/{victim_id}")
            survivor_status, survivor_body = softswitch.get(f"/api/calls/{survivor_id}")
            if victim_status != 200 or survivor_status != 200:
                return None
            return victim_body["call"]["worker_id"], survivor_body["call"]["worker_id"]
        victim_worker, survivor_worker = softswitch.wait_for(workers_of_both, 15, "both calls to arrive")
        assert victim_worker != survivor_worker, "round robin put both calls on one worker"
        time.sleep(message_starts_s + 2.0)  # well into the victim's message
        _, health = softswitch.get("/api/health")
        pid = next(w["pid"] for w in health["workers"] if w["id"] == victim_worker)
        os.kill(pid, signal.SIGKILL)

        survivor_result = survivor_run.finish(survivor)
        assert survivor_result.returncode == 0, survivor_result.stderr + survivor_result.stdout[-2000:]
        assert softswitch.call_record(survivor_id)["call"]["disposition"] == "completed"

        lost = softswitch.call_record(victim_id)
        assert lost["call"]["disposition"] == "worker_lost"
        message = next(r for r in lost["recordings"] if r["kind"] == "message")
        assert message["duration_s"] > 1.0 and not message["complete"]
        assert not is_silence(softswitch.recording_file(message["sha256"]))
        assert lost["tracking_code"], "a partial message must still become a case"

        def worker_back() -> bool:
            _, body = softswitch.get("/api/health")
            return any(w["id"] == victim_worker and w["pid"] != pid for w in body["workers"])
        softswitch.wait_for(worker_back, 20, "the killed worker to be restarted")
    finally:
        for process in (victim, survivor):
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_national_ids_never_reach_logs_or_sip_traces(softswitch: RunningSoftswitch, speech: Path,
                                                     tmp_path: Path) -> None:
    """After full calls (own ID, and on behalf of someone else) no ID appears in any log or trace."""
    pcap = CallerScript.for_family_member(speech).write(tmp_path / "family.pcap")
    result, call_id = softswitch.call("privacy", pcap)
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    assert softswitch.call_record(call_id)["call"]["disposition"] == "completed"
    texts = {"softswitch log": softswitch.log_path.read_text(errors="replace")}
    for trace in softswitch.work.rglob("messages.log"):
        texts[str(trace)] = trace.read_text(errors="replace")
    assert len(texts) > 1, "no SIP trace was written"
    for where, text in texts.items():
        for national_id in (NATIONAL_ID, SUBJECT_ID):
            assert national_id not in text, f"a national ID appears in {where}"


def test_malformed_sip_is_dropped_and_calls_go_on(softswitch: RunningSoftswitch) -> None:
    import socket

    from tests.sip.conftest import SIP_PORT

    garbage = [
        b"\x00\xff" * 100,
        b"INVITE sip:111@127.0.0.1 SIP/2.0\r\nVia: nonsense\r\n\r\n",
        b"INVITE  SIP/2.0\r\nCall-ID: x\r\nContent-Length: 99999\r\n\r\nv=0",
        ("INVITE sip:111@127.0.0.1 SIP/2.0\r\n" + "X-Long: " + "a" * 60000 + "\r\n\r\n").encode(),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in garbage:
            try:
                sock.sendto(datagram, ("127.0.0.1", SIP_PORT))
            except OSError:
                pass  # too large for one datagram: the kernel refuses it, which is fine too
    status, health = softswitch.get("/api/health")
    assert status == 200 and len(health["workers"]) == 3
    result, call_id = softswitch.refused("after-garbage", 404, service="999")
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    assert softswitch.call_record(call_id)["call"]["disposition"] == "rejected_404"


def _scrape(softswitch: RunningSoftswitch) -> dict[str, float]:
    """``/metrics`` as {sample with labels: value}, read with Prometheus's own parser."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(softswitch.http + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return {name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}": value
            for family in text_string_to_metric_families(text) for name, labels, value, *_ in family.samples}


def test_metrics_move_as_a_call_does_and_carry_no_personal_data(softswitch: RunningSoftswitch, speech: Path,
                                                                 tmp_path: Path) -> None:
    pcap = tmp_path / "caller.pcap"
    keyed_id_then_message(speech, pcap)
    before = _scrape(softswitch)
    result, call_id = softswitch.call("metrics", pcap)
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    record = softswitch.call_record(call_id)
    after = _scrape(softswitch)

    def moved(sample: str) -> float:
        return after.get(sample, 0.0) - before.get(sample, 0.0)
    assert moved("softswitch_calls_total{disposition=completed}") == 1
    assert moved("softswitch_ivr_steps_total{outcome=keypad:verified,step=national_id}") == 1
    assert moved("softswitch_ivr_steps_total{outcome=digit,step=message}") == 1
    assert moved("softswitch_recordings_total{complete=true,kind=message}") == 1
    message = next(r for r in record["recordings"] if r["kind"] == "message")
    assert moved("softswitch_recorded_seconds_total{kind=message}") == pytest.approx(message["duration_s"], abs=0.01)
    # 8 kHz 16-bit mono WAV: 16,000 bytes a second after its header.
    assert moved("softswitch_recorded_bytes_total{kind=message}") == pytest.approx(
        44 + 16000 * message["duration_s"], rel=0.01)
    assert moved("softswitch_id_captures_total{result=verified,source=keypad,whose=caller}") == 1
    assert moved("softswitch_store_operation_seconds_count{operation=add_call}") == 1
    assert moved("softswitch_store_operation_seconds_count{operation=open_call_case}") == 1
    # The front's own counters: INVITE, ACK and BYE came in through it; it relayed the worker's 200s.
    assert moved("softswitch_front_received_total{kind=requests}") >= 3
    assert moved("softswitch_front_transactions_total{side=uas}") >= 2
    assert moved("softswitch_front_transactions_finished_total{class=2xx}") >= 2
    assert after["softswitch_workers_up{}"] == 3 and after["softswitch_health_problems{}"] == 0
    scraped = "\n".join(after)
    assert NATIONAL_ID not in scraped and record["tracking_code"] not in scraped
