"""Fixtures for SIP tests: a real softswitch (Kamailio, media workers, control) on loopback."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pytest
import yaml

from media.wavfile import wav_info
from softswitch.config import CONFIG_DIR, PROJECT_ROOT, AgentsConfig, load_prompt_texts
from softswitch.web.credentials import hash_password, sip_ha1
from tests.support.rtp_pcap import CallerTimeline
from tests.support.sipp import SippResult, SippRun, caller_scenario, refused_scenario

SIP_PORT = 15060
HTTP_PORT = 18111
WORKERS = 3
PROMPT_S = 0.3  # every test prompt is a 0.3 s tone, so call timelines are short and known
ALLOWED_SOURCE = "127.0.0.1"
REPORTS_TOKEN = "reports-token-for-the-sip-tests-0123456789"
DISALLOWED_SOURCE = "127.0.0.2"

# SIPp callers of a test softswitch (RunningSoftswitch.sipp): SIP ports from its SIP port + 100 (below the
# phones' + 140 and up), media ports in a window of their own above the kernel's ephemeral range
# (net.ipv4.ip_local_port_range, 32768-60999 by default), where no socket bound to port 0 can take one.
# SIPp binds audio on the media port and video on the one two above it; each switch's window is keyed by
# the 500-port block of its SIP port, so the modules running side by side never share one. The window's
# last slots are for callers a test places itself (``caller_media_port``).
CALLER_SIP_SLOTS = 20
CALLER_MEDIA_BASE, CALLER_MEDIA_WINDOW, CALLER_MEDIA_STEP = 61000, 150, 4
CALLER_MEDIA_SLOTS = 32  # taken round by next_ports; the slots from here to the window's end are reserved
RESERVED_MEDIA_SLOT = CALLER_MEDIA_SLOTS
SIP_PORTS_FROM, SIP_PORT_BLOCK, SIP_PORT_BLOCKS = 13000, 500, 30  # 13000-27999


def caller_media_port(sip_port: int, slot: int) -> int:
    """The media port of the SIPp caller in ``slot`` of the test softswitch on ``sip_port``."""
    block = (sip_port - SIP_PORTS_FROM) // SIP_PORT_BLOCK
    if not 0 <= block < SIP_PORT_BLOCKS:
        raise ValueError(f"a test softswitch's SIP port is {SIP_PORTS_FROM}-"
                         f"{SIP_PORTS_FROM + SIP_PORT_BLOCK * SIP_PORT_BLOCKS - 1}, not {sip_port}")
    if not 0 <= slot < CALLER_MEDIA_WINDOW // CALLER_MEDIA_STEP:
        raise ValueError(f"no media slot {slot} in a window of {CALLER_MEDIA_WINDOW} ports")
    return CALLER_MEDIA_BASE + block * CALLER_MEDIA_WINDOW + slot * CALLER_MEDIA_STEP


# Test timers: the flow's steps with short prompts and end-pointing.
IVR = {"id_max_s": 15, "id_silence_s": 1.0, "id_no_input_s": 4.0, "message_max_s": 30,
       "message_silence_s": 1.5, "message_no_input_s": 6.0}


NATIONAL_ID = "0499370899"
SUBJECT_ID = "0790419904"
DIGIT_S = 0.2  # one RFC 4733 digit of CallerTimeline.dtmf: 100 ms tone, end packets, 60 ms gap
# The IVR reacts to a digit as it begins. After the caller's last key before the
# message, two prompts (request prompt, beep) play; the caller starts to speak a
# little after that, so no speech falls before the recording starts.
MESSAGE_LEAD_S = 2 * PROMPT_S - DIGIT_S + 0.3


class CallerScript:
    """A caller's side of a call against the test IVR, as one continuous RTP stream."""

    def __init__(self, first_key_s: float = 1.0) -> None:
        self.timeline = CallerTimeline()
        if first_key_s:
            self.timeline.silence(first_key_s)
        self.speech_start_s = 0.0
        self.speech_s = 0.0

    def keys(self, digits: str, pause_s: float = 0.4) -> CallerScript:
        if self.timeline.total_s > 0 and pause_s:
            self.timeline.silence(pause_s)
        self.timeline.dtmf(digits)
        return self

    def say(self, wav: Path, then_pound: bool = True, lead_s: float = 0.0) -> CallerScript:
        if lead_s:
            self.timeline.silence(lead_s)
        self.speech_start_s = self.timeline.total_s
        self.speech_s = wav_info(wav).duration_s
        self.timeline.speech_wav(wav)
        if then_pound:
            self.timeline.dtmf("#")
        return self

    def message(self, wav: Path, then_pound: bool = True) -> CallerScript:
        return self.say(wav, then_pound, lead_s=MESSAGE_LEAD_S)

    @classmethod
    def for_family_member(cls, wav: Path) -> CallerScript:
        """Keys their own ID, confirms it, picks the message, says it is for someone else, keys and confirms
        that person's ID, then leaves ``wav`` as the message."""
        return cls().keys(NATIONAL_ID).keys("1").keys("2").keys("2").keys(SUBJECT_ID, pause_s=0.6).keys("1") \
            .message(wav)

    def write(self, pcap: Path, tail_s: float = 0.5) -> Path:
        self.timeline.silence(tail_s)
        self.timeline.write(pcap)
        return pcap


def espeak_wav(directory: Path, name: str, text: str, words_per_minute: int = 150) -> Path:
    """Persian speech from espeak-ng as 8 kHz mono 16-bit WAV."""
    raw, out = directory / f"{name}-raw.wav", directory / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", "fa", "-s", str(words_per_minute), "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer", str(out)],
                   check=True)
    return out


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The caller's request, spoken."""
    return espeak_wav(tmp_path_factory.mktemp("speech"), "request",
                      "سلام. خیابان ما چند هفته است که آسفالت ندارد و آب باران در آن جمع می شود. لطفا رسیدگی کنید.")


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: run scripts/setup.sh (apt packages)")


@dataclass
class RunningSoftswitch:
    data_dir: Path
    http: str
    sip_target: str
    process: subprocess.Popen[bytes]
    log_path: Path
    work: Path
    _port_seq: int = 0

    def get(self, path: str, token: str | None = REPORTS_TOKEN) -> tuple[int, Any]:
        """GET an API path as the test's reporting client (or with another token, or none)."""
        request = urllib.request.Request(self.http + path,
                                         headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def wait_for(self, predicate: Any, timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")

    def call_record(self, sip_call_id: str, timeout_s: float = 20) -> dict[str, Any]:
        """The API view of a call once its CDR is closed."""
        def closed() -> dict[str, Any] | None:
            status, body = self.get(f"/api/calls/{sip_call_id}")
            return body if status == 200 and body["call"]["ended_at"] else None
        return self.wait_for(closed, timeout_s, f"CDR of {sip_call_id}")

    def case_of(self, sip_call_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The closed call's API view and its case."""
        body = self.call_record(sip_call_id)
        status, case = self.get(f"/api/cases/{body['tracking_code']}")
        assert status == 200, (status, case)
        return body, case

    def next_ports(self) -> tuple[int, int]:
        """SIP and media ports for the next SIPp caller, from this softswitch's own SIP port: test modules
        run side by side (pytest-xdist), and each softswitch's callers keep to ports of their own, taken
        round (its callers are sequential, or a few at once)."""
        sip_port = int(self.sip_target.rsplit(":", 1)[1])
        slot = self._port_seq
        self._port_seq += 1
        return (sip_port + 100 + 2 * (slot % CALLER_SIP_SLOTS),
                caller_media_port(sip_port, slot % CALLER_MEDIA_SLOTS))

    def sipp(self, name: str, scenario_xml: str, *, call_id: str, local_ip: str = ALLOWED_SOURCE,
             service: str = "111", timeout_s: float = 60) -> SippRun:
        directory = self.work / name
        directory.mkdir(parents=True, exist_ok=True)
        scenario = directory / "scenario.xml"
        scenario.write_text(scenario_xml)
        sip_port, media_port = self.next_ports()
        return SippRun(target=self.sip_target, scenario=scenario, local_ip=local_ip, local_port=sip_port,
                       media_port=media_port, service=service, call_id=call_id, timeout_s=timeout_s)

    def call(self, name: str, pcap: Path | None, *, hangup_after_ms: int | None = None,
             timeout_s: float = 60) -> tuple[SippResult, str]:
        """One SIPp call; its SIP trace is kept as <work>/<name>/messages.log."""
        call_id = f"{name}-{os.getpid()}@test"
        run = self.sipp(name, caller_scenario(pcap, hangup_after_ms=hangup_after_ms), call_id=call_id,
                        timeout_s=timeout_s)
        run = dataclasses.replace(run, message_file=self.work / name / "messages.log")
        return run.run(self.work / name), call_id

    def refused(self, name: str, status_code: int, **kwargs: Any) -> tuple[SippResult, str]:
        call_id = f"{name}-{os.getpid()}@test"
        run = self.sipp(name, refused_scenario(status_code), call_id=call_id, timeout_s=20, **kwargs)
        return run.run(self.work / name), call_id

    def recording_file(self, sha256: str) -> Path:
        import hashlib
        for path in (self.data_dir / "recordings").rglob("*.wav"):
            if hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
                return path
        raise AssertionError(f"no recording file with sha256 {sha256}")


def prompt_tone_hz(name: str) -> int:
    """The tone the tests' softswitch plays for this prompt: distinct tones within the telephone band,
    however many prompts there are."""
    return 400 + (37 * list(load_prompt_texts(CONFIG_DIR / "prompts.fa.yaml")).index(name)) % 3000


def tone_overrides(directory: Path, tones: Mapping[str, float]) -> Path:
    """A prompts override directory: each named prompt a PROMPT_S tone of its frequency."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, hz in tones.items():
        subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer",
                        str(directory / f"{name}.wav"), "synth", str(PROMPT_S), "sine", str(hz),
                        "vol", "0.3"], check=True)
    return directory


def _tone_overrides(directory: Path) -> None:
    tone_overrides(directory, {name: prompt_tone_hz(name) for name in load_prompt_texts(CONFIG_DIR / "prompts.fa.yaml")})


def agent_accounts(agents: Sequence[tuple[str, str, str]], realm: str) -> list[dict[str, Any]]:
    """agents.accounts entries for (id, name, password), as `softswitch agent-credentials` makes them."""
    return [{"id": agent_id, "name": name, "sip_ha1": sip_ha1(agent_id, realm, password),
             "console_password": hash_password(password)} for agent_id, name, password in agents]


def _merge(config: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Nested mappings are merged key by key; anything else replaces what was there."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _merge(config[key], value)
        else:
            config[key] = value


@contextlib.contextmanager
def running_softswitch(base: Path, *, sip_port: int, http_port: int, workers: int, worker_base_port: int,
                       rtp_base_port: int, drain_timeout_s: float = 5, recycle_after_calls: int = 0,
                       agents: Sequence[tuple[str, str, str]] = (), host: str = "127.0.0.1",
                       config_overrides: dict[str, Any] | None = None) -> Iterator[RunningSoftswitch]:
    """A softswitch process with the test configuration; stopped with SIGTERM (drain) at the end.

    `agents` are (id, name, password) triples; `host` is the loopback address its front, workers and
    HTTP server bind; `config_overrides` is merged into the YAML configuration last (nested mappings
    key by key).
    """
    for tool in ("sipp", "kamailio", "sox", "espeak-ng"):
        _need(tool)
    data_dir = base / "var"
    overrides = base / "prompt-overrides"
    _tone_overrides(overrides)
    config: dict[str, Any] = {
        "data_dir": str(data_dir),
        "drain_timeout_s": drain_timeout_s,
        "sip": {"listen": host, "port": sip_port, "trunk_allow": [f"{ALLOWED_SOURCE}/32", "::1/128"]},
        "workers": {"count": workers, "host": host, "base_port": worker_base_port, "rtp_base_port": rtp_base_port,
                    "restart_backoff_s": 0.2, "recycle_after_calls": recycle_after_calls},
        "http": {"host": host, "port": http_port},
        "ivr": IVR,
        "prompts": {"override_dir": str(overrides), "cache_dir": str(base / "prompt-cache")},
    }
    if agents:
        realm = (config_overrides or {}).get("agents", {}).get("realm", AgentsConfig().realm)
        config["agents"] = {"accounts": agent_accounts(agents, realm)}
    _merge(config, config_overrides or {})
    # The tests read CDRs and cases through the API as a reporting client.
    config["api_tokens"] = [*config.get("api_tokens", []), {
        "name": "test-reports", "sha256": hashlib.sha256(REPORTS_TOKEN.encode()).hexdigest(), "reports": True}]
    config_path = base / "softswitch.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = base / "softswitch.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "softswitch.cli", "--config", str(config_path), "run"],
                                   cwd=str(PROJECT_ROOT), stdout=log, stderr=subprocess.STDOUT)
    http_host, sip_host = config["http"].get("host", "127.0.0.1"), config["sip"].get("listen", "127.0.0.1")
    running = RunningSoftswitch(data_dir=data_dir, http=f"http://{http_host}:{http_port}",
                                sip_target=f"{sip_host}:{sip_port}", process=process, log_path=log_path,
                                work=base / "sipp")

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"softswitch exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            status, body = running.get("/api/health")
        except OSError:
            return False
        # ok: every worker has said hello and the front has put each in service.
        return status == 200 and body["status"] == "ok" and len(body["workers"]) == workers
    try:
        try:
            running.wait_for(ready, 90, "softswitch health with all workers in service")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last health: {running.get('/api/health')}\n"
                                 f"{log_path.read_text(errors='replace')[-4000:]}") from None
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def softswitch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSoftswitch]:
    with running_softswitch(tmp_path_factory.mktemp("softswitch"), sip_port=SIP_PORT, http_port=HTTP_PORT,
                            workers=WORKERS, worker_base_port=15070, rtp_base_port=31000) as running:
        yield running


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium for console and agency-page tests against a real softswitch."""
    from tests.browser.driver import CHROMEDRIVER, CHROMIUM, start_chromium

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are not installed: run scripts/setup.sh --test")
    driver = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()
