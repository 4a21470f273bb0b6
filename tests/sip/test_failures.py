"""Failing loudly, and losing nothing.

A full disk turns health to degraded and new calls to 503, while the call in progress finishes with its
recording; when there is room again, calls are taken again (the softswitch runs on a small tmpfs the
test mounts and unmounts: needs root, as CI has). A crash of the control process leaves nothing behind:
the next start stops the old front and keeps the cut call's tapes, CDR and case.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from pathlib import Path

import pytest

from media.wavfile import is_silence
from media.wavfile import read_pcm
from tests.sip.conftest import NATIONAL_ID, CallerScript, RunningSoftswitch, prompt_tone_hz, running_softswitch
from tests.sip.softphones import Softphone
from tests.sip.test_live import tone_share
from tests.sip.test_follow_up import CATEGORY, SMS_TOKEN, submit
from tests.support.sipp import caller_scenario, refused_scenario
from tests.support.tmpfs import mounted_tmpfs

pytestmark = [pytest.mark.sip, pytest.mark.timeout(240)]

SIP_PORT, HTTP_PORT, WORKER_PORT, RTP_PORT = 13060, 13111, 13070, 36500
PHONE_PORT, PHONE_RTP_PORT = 13090, 36900
DISK_MB = 64
MIN_FREE_MB = 16


def fill(disk: Path, leave_mb: float) -> Path:
    """A filler file that leaves about ``leave_mb`` free on the disk."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with filler.open("wb") as out:
        out.write(b"\0" * max(0, int(free - leave_mb * 2**20)))
    return filler


def health(switch: RunningSoftswitch) -> tuple[int, dict[str, object]]:
    return switch.get("/api/health", token=None)


def test_a_full_disk_refuses_new_calls_and_keeps_the_running_one(tmp_path: Path, speech: Path) -> None:
    pcap = CallerScript().keys(NATIONAL_ID).keys("1").keys("2").keys("1").message(speech).write(tmp_path / "c.pcap")
    overrides = {"health": {"min_free_mb": MIN_FREE_MB, "check_interval_s": 0.5},
                 "api_tokens": [{"name": "sms-gateway", "sha256": hashlib.sha256(SMS_TOKEN.encode()).hexdigest(),
                                 "channel": "sms"}]}
    # Short names: the switch's Unix sockets live under it, and their paths are bounded (107 bytes).
    with mounted_tmpfs(tmp_path / "d", f"{DISK_MB}m") as disk, \
            running_softswitch(disk / "s", sip_port=SIP_PORT, http_port=HTTP_PORT, workers=1,
                               worker_base_port=WORKER_PORT, rtp_base_port=RTP_PORT,
                               config_overrides=overrides) as switch:
        assert health(switch)[1]["problems"] == []
        running_run = switch.sipp("running", caller_scenario(pcap), call_id="running@test")
        running_call = running_run.start(switch.work / "running")
        switch.wait_for(lambda: health(switch)[1]["active_calls"] == 1, 15, "the call to start")

        filler = fill(disk, leave_mb=MIN_FREE_MB / 2)
        status, body = switch.wait_for(lambda: (h := health(switch))[1]["problems"] and h, 10, "degraded")
        assert status == 503 and body["status"] == "degraded", body
        assert any("below health.min_free_mb" in str(p) for p in body["problems"]), body  # type: ignore[union-attr]
        # A new call gets 503 (the front's, with Retry-After, after every worker refused): the trunk fails over.
        trace = switch.work / "refused" / "messages.log"
        refused = dataclasses.replace(switch.sipp("refused", refused_scenario(503), call_id="refused@test",
                                                  timeout_s=20), message_file=trace)
        refused_result = refused.run(switch.work / "refused")
        assert refused_result.returncode == 0, refused_result.stderr + refused_result.stdout[-2000:]
        assert "Retry-After:" in trace.read_text(errors="replace")

        # The call in progress goes on to its case, its message kept whole.
        finished = running_run.finish(running_call)
        assert finished.returncode == 0, finished.stderr + finished.stdout[-2000:]
        record = switch.call_record("running@test")
        assert record["call"]["disposition"] == "completed" and record["tracking_code"], record["call"]
        message = next(r for r in record["recordings"] if r["kind"] == "message")
        assert message["complete"] and message["duration_s"] > 1.0, message

        # Truly full: the intake API says 503 with Retry-After, not 500.
        filler.unlink()
        fill(disk, leave_mb=0)
        status, answer = submit(switch, SMS_TOKEN, {
            "channel": "sms", "subject_national_id": NATIONAL_ID, "agency": "energy", "category": CATEGORY,
            "text": "x" * 9000})
        # SQLite may still find a free page for one case; what it must never do is fail with a 500.
        assert status in (201, 503), (status, answer)
        (disk / "filler").unlink()

        # Room again: calls are taken again, without a restart.
        status, body = switch.wait_for(lambda: (h := health(switch))[0] == 200 and h, 10, "healthy again")
        assert body["status"] == "ok" and body["problems"] == [], body
        result, call_id = switch.call("after", pcap)
        assert result.returncode == 0, result.stderr + result.stdout[-2000:]
        assert switch.call_record(call_id)["call"]["disposition"] == "completed"
        log = switch.log_path.read_text(errors="replace")
        assert "not taking new calls (503 to the trunks)" in log and "taking new calls again" in log


def _kamailio_pids(marker: Path) -> set[int]:
    """Kamailio processes whose command line names this softswitch's run directory."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if "kamailio" in cmdline.split(" ", 1)[0] and str(marker) in cmdline:
                    found.add(int(proc.name))
    return found


def test_after_a_crash_of_the_control_process_nothing_is_left_behind(tmp_path: Path, speech: Path) -> None:
    """SIGKILL mid-message: the callers hear an apology before the hang-up, the next start stops the old front,
    and the cut calls' tapes, CDRs and cases are there."""
    pcap = CallerScript().keys(NATIONAL_ID).keys("1").keys("2").keys("1").message(speech).write(tmp_path / "c.pcap")
    base = tmp_path / "switch"
    ports = dict(sip_port=SIP_PORT, http_port=HTTP_PORT, workers=1, worker_base_port=WORKER_PORT,
                 rtp_base_port=RTP_PORT)
    with contextlib.ExitStack() as stack, running_softswitch(base, **ports) as first:  # type: ignore[arg-type]
        run = first.sipp("cut", caller_scenario(pcap), call_id="cut@test")
        caller = run.start(first.work / "cut")
        phone = stack.enter_context(Softphone("caller", tmp_path, sip_port=PHONE_PORT, rtp_port=PHONE_RTP_PORT))
        # Into the message: the ID keyed and confirmed, the caller speaking.
        first.wait_for(lambda: any((base / "var" / "recordings").glob("**/call*-message.wav")), 30, "the message")
        # A second caller, on a softphone that records what it hears, just greeted.
        heard = tmp_path / "heard.wav"
        call = phone.dial(f"sip:111@127.0.0.1:{SIP_PORT}")
        phone.wait_for("state", call=call, state="CONFIRMED", timeout_s=10)
        phone.record(call, heard)
        time.sleep(1.0)
        old_fronts = _kamailio_pids(base / "var" / "run")
        assert old_fronts
        first.process.kill()
        first.process.wait(timeout=10)
        # Each answered caller hears the apology, then the worker hangs up.
        run.finish(caller)
        phone.wait_for("ended", call=call, timeout_s=15)
        phone.wait_for("recorded", call=call, timeout_s=10)
        assert _kamailio_pids(base / "var" / "run") == old_fronts  # the front outlives the crash
    pcm = read_pcm(heard)
    window = 1600  # bytes: 0.1 s
    apology = [tone_share(pcm[i:i + window], prompt_tone_hz("control_lost")) > 0.5
               for i in range(0, len(pcm) - window, window)]
    # The test's prompts are 0.3 s tones; the apology is the last thing heard.
    assert apology[-15:].count(True) >= 2 and apology[:-15].count(True) == 0, apology

    with running_softswitch(base, **ports) as second:  # type: ignore[arg-type]
        # Kamailio is a main process and its forks: every one of the old run's is gone.
        fronts = _kamailio_pids(base / "var" / "run")
        assert fronts and not fronts & old_fronts, (fronts, old_fronts)
        assert second.call_record(call)["call"]["disposition"] == "interrupted"
        record = second.call_record("cut@test")
        assert record["call"]["disposition"] == "interrupted"
        kinds = {r["kind"]: r for r in record["recordings"]}
        assert {"national_id_utterance", "message"} <= set(kinds), kinds
        message = kinds["message"]
        assert message["complete"] is False and message["duration_s"] > 0.5, message
        assert not is_silence(second.recording_file(message["sha256"]))
        status, case = second.get(f"/api/cases/{record['tracking_code']}")
        assert status == 200 and case["status"] == "received_incomplete", case
        assert "message" in {r["kind"] for r in case["recordings"]}
        # And the new run takes calls.
        result, call_id = second.call("after-restart", pcap)
        assert result.returncode == 0, result.stderr + result.stdout[-2000:]
        assert second.call_record(call_id)["call"]["disposition"] == "completed"
