"""The shared recordings store end to end: a real softswitch copies a call's recordings to a tmpfs share.

Ports 21000-21999: SIP 21060, HTTP 21111, worker 21070, RTP 21200-21224, SIPp callers 21600-21699
(SIP); their media in the switch's window above the ephemeral range (tests/sip/conftest.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sip.conftest import CALLER_MEDIA_SLOTS, RunningSoftswitch, caller_media_port, running_softswitch
from tests.sip.test_recorded_message import keyed_id_then_message
from tests.support.sipp import caller_scenario
from tests.support.tmpfs import mounted_tmpfs

pytestmark = [pytest.mark.sip, pytest.mark.timeout(240)]

HOST = "sip-host"
_CALLER_PORTS = itertools.count()


@dataclasses.dataclass
class Switch:
    running: RunningSoftswitch
    mount: Path
    shared: Path

    @property
    def local(self) -> Path:
        return self.running.data_dir / "recordings"


@pytest.fixture(scope="module")
def switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Switch]:
    base = tmp_path_factory.mktemp("shared-recordings")
    with mounted_tmpfs(base / "mnt", "16m") as mount:
        shared = mount / "recordings"
        shared.mkdir()
        overrides = {"recordings_store": {"shared_dir": str(shared), "host": HOST, "retry_initial_s": 0.2,
                                          "retry_max_s": 0.5, "backlog_alarm_s": 1.0},
                     "workers": {"max_calls": 4}}
        with running_softswitch(base, sip_port=21060, http_port=21111, workers=1, worker_base_port=21070,
                                rtp_base_port=21200, config_overrides=overrides) as running:
            yield Switch(running, mount, shared)


def call(switch: Switch, name: str, speech: Path, tmp_path: Path) -> dict[str, Any]:
    """A caller who keys an ID and leaves a message, from ports of this module's range; the call's API view."""
    pcap = tmp_path / f"{name}.pcap"
    keyed_id_then_message(speech, pcap)
    call_id = f"{name}-{os.getpid()}@test"
    n = next(_CALLER_PORTS)
    run = switch.running.sipp(name, caller_scenario(pcap), call_id=call_id)
    run = dataclasses.replace(run, local_port=21600 + 2 * n,
                              media_port=caller_media_port(21060, n % CALLER_MEDIA_SLOTS),
                              message_file=switch.running.work / name / "messages.log")
    result = run.run(switch.running.work / name)
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    return switch.running.call_record(call_id)


def wav_hashes(directory: Path) -> dict[str, Path]:
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in directory.rglob("*.wav")} \
        if directory.exists() else {}


def health_when(switch: Switch, warned: bool) -> tuple[int, dict[str, Any]]:
    """/api/health once its warnings are there (``warned``) or gone."""
    def check() -> tuple[int, dict[str, Any]] | None:
        status, body = switch.running.get("/api/health")
        return (status, body) if bool(body["warnings"]) == warned else None
    found: tuple[int, dict[str, Any]] = switch.running.wait_for(check, 20, f"health with warnings={warned}")
    return found


def copies(switch: Switch, outcome: str) -> float:
    with urllib.request.urlopen(switch.running.http + "/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf'^softswitch_recording_copies_total{{outcome="{outcome}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_calls_recordings_end_up_in_the_shared_directory_and_leave_the_local_disk(
        switch: Switch, speech: Path, tmp_path: Path) -> None:
    body = call(switch, "shared-ok", speech, tmp_path)
    wanted = {r["sha256"] for r in body["recordings"]}
    assert len(wanted) == 2  # the spoken ID's tape and the message
    shared = switch.running.wait_for(lambda: wanted <= set(wav_hashes(switch.shared)) and wav_hashes(switch.shared),
                                     20, "both recordings in the shared directory")
    assert all(shared[sha].is_relative_to(switch.shared / HOST) for sha in wanted)
    switch.running.wait_for(lambda: not wav_hashes(switch.local), 10, "the local copies removed")
    assert copies(switch, "copied") >= 2
    status, health = switch.running.get("/api/health")
    assert (status, health["status"], health["warnings"]) == (200, "ok", [])


def test_an_unmounted_share_keeps_recordings_local_reported_until_it_is_back(
        switch: Switch, speech: Path, tmp_path: Path) -> None:
    subprocess.run(["umount", str(switch.mount)], check=True)
    try:
        body = call(switch, "shared-down", speech, tmp_path)
        wanted = {r["sha256"] for r in body["recordings"]}
        assert wanted <= set(wav_hashes(switch.local))  # kept where they were written
        status, health = health_when(switch, warned=True)
        assert status == 200 and health["status"] == "degraded" and health["problems"] == []
        [warning] = health["warnings"]
        assert "2 recordings not yet copied" in warning and "missing (not mounted?)" in warning, health
        assert copies(switch, "failed") >= 1
        assert not switch.shared.exists()  # nothing written onto the disk under the mount point
    finally:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(switch.mount)], check=True)
    switch.shared.mkdir()
    switch.running.wait_for(lambda: wanted <= set(wav_hashes(switch.shared)), 20, "the backlog copied")
    switch.running.wait_for(lambda: not wav_hashes(switch.local), 10, "the local copies removed")
    status, health = health_when(switch, warned=False)
    assert (status, health["status"]) == (200, "ok")
    log = switch.running.log_path.read_text(errors="replace")
    assert log.count("cannot copy recordings to the shared directory") == 1, log[-3000:]
