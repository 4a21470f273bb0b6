"""`softswitch calls`, `status` and `hangup` against a running softswitch, with a real call in its IVR.

Ports 20000-20999 only: the softswitch 20060 (HTTP 20111, worker 20070, RTP
20200-), the SIPp caller 20160 (media 20300).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from softswitch.config import PROJECT_ROOT
from softswitch.control.admin import request
from tests.sip.conftest import ALLOWED_SOURCE, running_softswitch
from tests.support.sipp import SippRun, caller_scenario

pytestmark = [pytest.mark.sip, pytest.mark.timeout(120)]


def cli(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """The command line as an operator runs it, in a process of its own, with the softswitch's config."""
    return subprocess.run([sys.executable, "-m", "softswitch.cli", "--config", str(config), *argv],
                          cwd=str(PROJECT_ROOT), capture_output=True, text=True, timeout=30)


def test_a_call_in_the_ivr_is_listed_shown_and_hung_up_by_the_operator(tmp_path: Path) -> None:
    base = tmp_path / "sw"
    with running_softswitch(base, sip_port=20060, http_port=20111, workers=1, worker_base_port=20070,
                            rtp_base_port=20200, config_overrides={"workers": {"max_calls": 8}}) as switch:
        config = base / "softswitch.yaml"
        call_id = "admin-cli-1@test"
        directory = switch.work / "caller"
        directory.mkdir(parents=True)
        scenario = directory / "scenario.xml"
        # A caller who keys nothing and waits for our BYE: it stays in the ID step.
        scenario.write_text(caller_scenario(None, wait_bye_ms=60_000))
        run = SippRun(target=switch.sip_target, scenario=scenario, local_ip=ALLOWED_SOURCE, local_port=20160,
                      media_port=20300, call_id=call_id, timeout_s=60, message_file=directory / "messages.log")
        caller = run.start(directory)
        admin_socket = switch.data_dir / "run" / "admin.sock"
        switch.wait_for(lambda: [c for c in request(admin_socket, "calls") if c["state"] != "answering"], 15,
                        "the call in the IVR")

        listed = cli(config, "calls")
        assert listed.returncode == 0, listed.stderr
        header, row, count = listed.stdout.splitlines()
        assert header.split() == ["cdr", "call-id", "worker", "age", "state", "agent", "caller"]
        cdr_id, listed_call_id, worker = row.split()[:3]
        assert listed_call_id == call_id and worker == "0" and count == "1 call(s)"

        status = cli(config, "status", "--json")
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        assert shown["calls_active"] == 1 and [w["calls"] for w in shown["workers"]] == [1]
        assert shown["workers"][0]["state"] == "in service" and shown["front"]["up"] is True
        assert [d["flags"][:1] for d in shown["front"]["destinations"]] == ["A"]
        text = cli(config, "status")
        assert text.returncode == 0 and text.stdout.startswith("softswitch ok: 1 of 1 workers, 1 call(s)")

        hangup = cli(config, "hangup", cdr_id)
        assert hangup.returncode == 0, hangup.stderr
        assert hangup.stdout.strip() == f"call {cdr_id} ({call_id}): hung up, operator_hangup"
        finished = run.finish(caller)
        assert finished.returncode == 0, finished.stderr + finished.stdout[-2000:]  # SIPp got our BYE
        assert "BYE sip:" in (directory / "messages.log").read_text(errors="replace")

        record = switch.call_record(call_id)
        assert record["call"]["disposition"] == "operator_hangup"
        assert cli(config, "calls").stdout.strip() == "no calls in progress"
        unknown = cli(config, "hangup", call_id)
        assert unknown.returncode == 1 and "no call" in unknown.stderr

    lines = [line for line in switch.log_path.read_text(errors="replace").splitlines()
             if f"[call_id={call_id} cdr={cdr_id} worker=0]" in line]
    for event in ("call arrived from 127.0.0.1", "routed: answered", "ivr step greeting",
                  "hang-up asked for by an operator", "hang-up: operator_hangup after"):
        assert any(event in line for line in lines), (event, lines)
