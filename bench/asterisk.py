"""Benchmark peer: an Asterisk built by bench/asterisk/build.sh running the 111 IVR, started and stopped by PID.

The peer answers the bench's SIPp caller with the same steps, timers and prompt
audio as the softswitch (bench/asterisk/extensions.conf maps each step), so one
caller can be measured against both:

    peer = AsteriskPeer(work / "asterisk", sip_port=35060, rtp_ports=(36000, 36999))
    pid = peer.start()        # renders the configs and prompts, waits until Asterisk is fully booted
    ...                       # SIPp against 127.0.0.1:35060
    peer.stop()               # SIGTERM, then SIGKILL after a timeout; only the process started here

Everything the peer reads and writes is under work_dir: etc/ (the rendered
configs), data/sounds/fa/ (the prompts), recordings/ (one message per call),
log/errors.log (errors and warnings), asterisk.out (its standard output).
"""

from __future__ import annotations

import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from media.prompts import PromptLibrary
from media.synth import SAMPLE_RATE, SOX_OUTPUT_FORMAT
from media.wavfile import read_format
from softswitch.config import PROJECT_ROOT, Config, load_config, load_prompt_texts

INSTALL_DIR = PROJECT_ROOT / ".cache" / "asterisk" / "install"
TEMPLATE_DIR = PROJECT_ROOT / "bench" / "asterisk"
BUILD_HINT = "run bench/asterisk/build.sh"
# The softswitch settings bench/run.py runs with; the dialplan's timers follow them.
BENCH_OVERRIDES = {"ivr.message_silence_s": 3.0, "ivr.message_max_s": 30, "ivr.id_no_input_s": 5}
# Every prompt the dialplan plays; digit_N becomes digits/N, where SayDigits() and SAYFILES() look.
PROMPTS = ("greeting", "ask_national_id", "national_id_again", "national_id_invalid", "your_national_id_is",
           "subject_national_id_is", "confirm_national_id", "ask_subject_national_id", "menu_main_closed",
           "invalid_choice", "ask_about_whom", "record_after_tone", "beep", "tracking_code_intro",
           "tracking_code_repeat", "goodbye", "follow_up_ask_code", "follow_up_code_invalid",
           "follow_up_not_found", "follow_up_need_id", *(f"digit_{d}" for d in range(10)))
# Asterisk raises its own descriptor limit to this (at most the hard limit, which
# needs no privilege): hundreds of calls hold RTP and RTCP sockets and prompt files.
MAX_FILES_CAP = 65536
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")


class PeerUnavailable(RuntimeError):
    """The Asterisk build is missing, or the peer cannot be started or did not become ready."""


class AsteriskPeer:
    def __init__(self, work_dir: Path, sip_port: int, rtp_ports: tuple[int, int], config: Config | None = None,
                 install_dir: Path = INSTALL_DIR) -> None:
        if not 0 < rtp_ports[0] < rtp_ports[1] < 65536:
            raise ValueError(f"rtp_ports must be a rising range of ports, got {rtp_ports}")
        self.work_dir = work_dir.resolve()
        self.sip_port = sip_port
        self.rtp_ports = rtp_ports
        # The prompts and timers come from a softswitch configuration: the bench's,
        # when none is given, with the prompt cache under work_dir (never ./var).
        self.config = config or load_config(overrides={"data_dir": str(self.work_dir), **BENCH_OVERRIDES})
        self.install_dir = install_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def binary(self) -> Path:
        return self.install_dir / "sbin" / "asterisk"

    @property
    def config_file(self) -> Path:
        return self.work_dir / "etc" / "asterisk.conf"

    @property
    def recordings_dir(self) -> Path:
        return self.work_dir / "recordings"

    @property
    def error_log(self) -> Path:
        return self.work_dir / "log" / "errors.log"

    def available(self) -> bool:
        """True when bench/asterisk/build.sh has installed Asterisk and its modules."""
        return self.binary.is_file() and (self.install_dir / "lib" / "asterisk" / "modules" / "chan_pjsip.so").is_file()

    def start(self, timeout_s: float = 60.0) -> int:
        """Render configs and prompts into work_dir, start Asterisk and wait until it is fully booted; returns its PID."""
        if not self.available():
            raise PeerUnavailable(f"Asterisk is not built (no {self.binary}): {BUILD_HINT}")
        if self.process is not None and self.process.poll() is None:
            raise PeerUnavailable(f"the peer is already running (pid {self.process.pid})")
        _require_free_udp_port(self.sip_port)
        self.render()
        # errors() speaks of this run only; recordings of earlier runs are kept.
        self.error_log.unlink(missing_ok=True)
        out = (self.work_dir / "asterisk.out").open("wb")
        # -f: stay in the foreground as our child, so it is stopped by its PID; -C: only our configs.
        self.process = subprocess.Popen([str(self.binary), "-f", "-C", str(self.config_file)], cwd=str(self.work_dir),
                                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PeerUnavailable(f"Asterisk exited with {self.process.returncode} while starting: "
                                      f"{_tail(self.work_dir / 'asterisk.out')}")
            # The control socket appears early; waitfullybooted returns once every module has loaded.
            if (self.work_dir / "run" / "asterisk.ctl").exists():
                try:
                    booted = self.cli("core waitfullybooted", timeout_s=max(1.0, deadline - time.monotonic()))
                    transports = self.cli("pjsip show transports") if "fully booted" in booted else ""
                except (PeerUnavailable, subprocess.TimeoutExpired):
                    transports = ""
                if f"127.0.0.1:{self.sip_port}" in transports:
                    return self.process.pid
            time.sleep(0.2)
        self.stop()
        raise PeerUnavailable(f"Asterisk did not become ready in {timeout_s:g} s; see {self.work_dir / 'asterisk.out'}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the process started here (a fast shutdown: calls are dropped), SIGKILL after timeout_s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def cli(self, command: str, timeout_s: float = 10.0) -> str:
        """One CLI command through the peer's own control socket (asterisk -rx); its output."""
        result = subprocess.run([str(self.binary), "-C", str(self.config_file), "-rx", command],
                                capture_output=True, text=True, timeout=timeout_s, check=False)
        if result.returncode != 0:
            raise PeerUnavailable(f"asterisk -rx {command!r} failed: {(result.stderr or result.stdout).strip()}")
        return result.stdout

    def errors(self) -> list[str]:
        """The lines Asterisk logged at warning or error level in this run (not the log's banner line)."""
        try:
            lines = self.error_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return [line for line in lines if " ERROR[" in line or " WARNING[" in line]

    def render(self) -> None:
        """Write the configuration and the prompts for this run into work_dir."""
        for sub in ("etc", "lib", "data/sounds/fa/digits", "spool", "run", "log", "cache", "recordings"):
            (self.work_dir / sub).mkdir(parents=True, exist_ok=True)
        ivr, follow_up = self.config.ivr, self.config.follow_up
        values = {
            "RUN_DIR": str(self.work_dir),
            "MODULE_DIR": str(self.install_dir / "lib" / "asterisk" / "modules"),
            "SBIN_DIR": str(self.install_dir / "sbin"),
            "MAX_FILES": str(_max_files()),
            "SIP_PORT": str(self.sip_port),
            "RTP_START": str(self.rtp_ports[0]),
            "RTP_END": str(self.rtp_ports[1]),
            "SERVICE_NUMBER": self.config.sip.service_number,
            "RECORDINGS_DIR": str(self.recordings_dir),
            "ID_NO_INPUT_S": f"{ivr.id_no_input_s:g}",
            "ID_ATTEMPTS": str(ivr.id_attempts),
            "CONFIRM_TIMEOUT_S": f"{ivr.confirm_timeout_s:g}",
            "MENU_TIMEOUT_S": f"{ivr.menu_timeout_s:g}",
            "MENU_ATTEMPTS": str(ivr.menu_attempts),
            # Record() takes whole seconds.
            "MESSAGE_SILENCE_S": str(max(1, round(ivr.message_silence_s))),
            "MESSAGE_MAX_S": str(max(1, round(ivr.message_max_s))),
            "CODE_ATTEMPTS": str(follow_up.code_attempts),
        }
        for template in sorted(TEMPLATE_DIR.glob("*.conf")):
            name = template.name
            text = template.read_text(encoding="utf-8")
            for key, value in values.items():
                text = text.replace(f"@{key}@", value)
            left = sorted(set(_PLACEHOLDER.findall(text)))
            if left:
                raise ValueError(f"{template}: no value for {', '.join(left)}")
            (self.work_dir / "etc" / name).write_text(text, encoding="utf-8")
        self._install_prompts(self.work_dir / "data" / "sounds" / "fa")

    def _install_prompts(self, sounds: Path) -> None:
        # The library is built as softswitch/control/process.py builds it (texts, voice,
        # recorded overrides, the same cache), so both sides play the same files.
        cfg = self.config
        library = PromptLibrary(load_prompt_texts(cfg.prompts.texts), cfg.prompt_cache, cfg.prompts.override_dir,
                                voice=cfg.prompts.voice)
        library.ensure(PROMPTS)
        for name in PROMPTS:
            target = sounds / "digits" / f"{name[6:]}.wav" if name.startswith("digit_") else sounds / f"{name}.wav"
            _install_wav(library.path(name), target)


def _install_wav(source: Path, target: Path) -> None:
    """Copy a prompt as is when it is 8 kHz mono 16-bit (format_wav's format), else convert it with sox."""
    fmt = read_format(source)
    if (fmt.sample_rate, fmt.channels, fmt.bits_per_sample) == (SAMPLE_RATE, 1, 16):
        shutil.copyfile(source, target)
    else:
        subprocess.run(["sox", str(source), *SOX_OUTPUT_FORMAT, str(target)], check=True, capture_output=True)


def _max_files() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(soft, MAX_FILES_CAP if hard == resource.RLIM_INFINITY else min(hard, MAX_FILES_CAP))


def _require_free_udp_port(port: int) -> None:
    # A stale peer (or anything else) on the port would take the calls meant for this one.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise PeerUnavailable(f"UDP 127.0.0.1:{port} is in use ({error}): another peer still running?") from None


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) or "(no output)"
    except OSError:
        return "(no output)"
