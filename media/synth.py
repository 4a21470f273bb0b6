"""Media layer: text-to-speech behind a pluggable seam, and sox conversion to the telephone WAV format.

The embedded engine is espeak-ng (voice ``fa``) resampled by sox to 8 kHz mono
16-bit PCM, the format every prompt and answer is played in. Another engine
plugs in through ``load_synthesizer("package.module:Class")``. The prompt
library (``media.prompts``) runs its tools through the same helpers.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from media.wavfile import read_format

SAMPLE_RATE = 8000
SOX_OUTPUT_FORMAT = ("-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer")
TOOL_TIMEOUT_S = 120.0
DEFAULT_SYNTHESIZER = "espeak-ng:fa"
ESPEAK = "espeak-ng"
# What an uploaded answer may be, by its header (sox --i): the types the agency page names,
# at rates a voice recording has, so that expanding it to 8 kHz cannot multiply its size.
ACCEPTED_TYPES = frozenset({"wav", "flac", "vorbis"})
MIN_INPUT_RATE = 8000
MAX_INPUT_RATE = 48000
MAX_INPUT_CHANNELS = 2
PROBE_TIMEOUT_S = 10.0
WAV_HEADER_ALLOWANCE = 4096  # sox writes a 44-byte header; room for any chunks it adds
CAP_POLL_S = 0.02


class SynthesisError(Exception):
    """Audio cannot be produced: a missing tool, a failed or overlong run, or no audio at all."""


class AudioTooLong(SynthesisError):
    """The audio lasts longer than allowed."""


class AudioUnsupported(SynthesisError):
    """The audio's sample rate or channel count is outside what is accepted."""


@dataclass(frozen=True)
class AudioProbe:
    """An audio file as its header describes it."""

    file_type: str
    sample_rate: float
    channels: int
    duration_s: float


@runtime_checkable
class Synthesizer(Protocol):
    """Speaks ``text`` into ``out``: an 8 kHz mono 16-bit WAV file, replaced whole or not at all."""

    def synthesize(self, text: str, out: Path) -> None: ...


def find_tool(tool: str, needed_for: str, error: type[SynthesisError] = SynthesisError) -> str:
    """The tool's path on PATH, or ``error`` saying what it was needed for."""
    found = shutil.which(tool)
    if found is None:
        raise error(f"{tool} is not installed (not found on PATH); it is needed to synthesise {needed_for}")
    return found


def run_tool(command: Sequence[str], what: str, timeout_s: float = TOOL_TIMEOUT_S,
             error: type[SynthesisError] = SynthesisError) -> None:
    """Run one espeak-ng or sox command; its failure, or a run past ``timeout_s``, becomes ``error``."""
    try:
        result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise error(f"{command[0]} could not synthesise {what}: {exc}") from exc
    if result.returncode != 0:
        raise error(f"{command[0]} failed for {what} (exit {result.returncode}): {result.stderr.strip()}")


def speak_to_wav(text: str, voice: str, out: Path, what: str, *, espeak: str, sox: str,
                 timeout_s: float = TOOL_TIMEOUT_S, error: type[SynthesisError] = SynthesisError) -> None:
    """espeak-ng speaks ``text`` into a file beside ``out`` (a scratch folder), then sox makes it 8 kHz mono."""
    spoken = out.with_name(f"{out.stem}.espeak.wav")
    # "--" keeps a text starting with '-' from being read as an option.
    run_tool([espeak, "-v", voice, "-w", str(spoken), "--", text], what, timeout_s, error)
    # -G lowers the gain where resampling espeak's loud output would clip; it buffers the audio
    # in a temp file, kept beside ``out`` (--temp) rather than in the system temp directory.
    run_tool([sox, "--temp", str(out.parent), "-G", str(spoken), *SOX_OUTPUT_FORMAT, str(out)], what, timeout_s,
             error)
    spoken.unlink(missing_ok=True)


def _publish(made: Path, out: Path, what: str) -> None:
    """Check ``made`` holds audio, make it durable, then rename it over ``out`` (never half a file)."""
    try:
        fmt = read_format(made)
    except ValueError as exc:
        raise SynthesisError(f"{what}: the result is not a WAV file: {exc}") from None
    if fmt.data_bytes == 0:
        raise SynthesisError(f"{what}: no audio was produced")
    with open(made, "rb") as f:
        os.fsync(f.fileno())
    os.replace(made, out)


class EspeakSynthesizer:
    """The embedded engine: espeak-ng, then sox to 8 kHz mono 16-bit WAV, each run bounded by ``timeout_s``."""

    def __init__(self, voice: str = "fa", timeout_s: float = 60.0) -> None:
        if not voice or voice.startswith("-"):
            raise ValueError(f"espeak-ng voice must be a voice name, got {voice!r}")
        self.voice = voice
        self.timeout_s = timeout_s

    def synthesize(self, text: str, out: Path) -> None:
        if not text.strip():
            raise ValueError("there is no text to synthesise")
        what = f"speech into {out.name}"
        espeak, sox = find_tool(ESPEAK, what), find_tool("sox", what)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}-") as scratch:
            made = Path(scratch) / "speech.wav"
            speak_to_wav(text.strip(), self.voice, made, what, espeak=espeak, sox=sox, timeout_s=self.timeout_s)
            _publish(made, out, what)

    def __repr__(self) -> str:
        return f"EspeakSynthesizer(voice={self.voice!r})"


def probe_audio(source: Path, *, max_s: float, timeout_s: float = PROBE_TIMEOUT_S) -> AudioProbe:
    """What the file's own header says (``sox --i``, i.e. soxi), checked before anything is decoded.

    A type other than WAV, FLAC or Ogg Vorbis, or an unreadable header: ``SynthesisError``;
    a rate or channel count outside the limits: ``AudioUnsupported``; a length past ``max_s``
    (or no stated length at all): ``AudioTooLong`` / ``SynthesisError``. The header is what
    sox will believe when converting, so a 1 Hz file or a huge stated length is refused here,
    before it is expanded to 8 kHz.
    """
    what = f"audio {source.name}"
    sox = find_tool("sox", what)

    def info(option: str) -> str:
        try:
            result = subprocess.run([sox, "--i", option, str(source)], capture_output=True, text=True,
                                    timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SynthesisError(f"{sox} could not read the header of {what}: {exc}") from exc
        if result.returncode != 0:
            raise SynthesisError(f"{sox} failed for {what} (exit {result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip()

    file_type = info("-t")
    if file_type not in ACCEPTED_TYPES:
        raise SynthesisError(f"{what} is of type {file_type!r}, not one of {', '.join(sorted(ACCEPTED_TYPES))}")
    try:
        rate, channels, samples = float(info("-r")), int(info("-c")), int(info("-s"))
    except ValueError as exc:
        raise SynthesisError(f"{what}: unreadable header: {exc}") from None
    if not MIN_INPUT_RATE <= rate <= MAX_INPUT_RATE:
        raise AudioUnsupported(f"{what} is sampled at {rate:g} Hz, outside {MIN_INPUT_RATE}-{MAX_INPUT_RATE} Hz")
    if not 1 <= channels <= MAX_INPUT_CHANNELS:
        raise AudioUnsupported(f"{what} has {channels} channels, more than {MAX_INPUT_CHANNELS}")
    if samples <= 0:
        # sox says 0 when the header states no length (or there is no audio): nothing to bound it by.
        raise SynthesisError(f"{what} states no length")
    duration_s = samples / rate
    if duration_s > max_s:
        raise AudioTooLong(f"{what} lasts {duration_s:.1f} s, more than {max_s:g} s")
    return AudioProbe(file_type, rate, channels, duration_s)


def output_cap_bytes(max_s: float) -> int:
    """The largest telephone WAV that ``max_s`` seconds can make: 8 kHz 16-bit mono and a header."""
    return int(max_s * SAMPLE_RATE * 2) + WAV_HEADER_ALLOWANCE


def convert_to_telephone_wav(source: Path, out: Path, *, max_s: float, timeout_s: float = 60.0) -> float:
    """Convert a WAV, FLAC or Ogg Vorbis file to 8 kHz mono 16-bit WAV; returns its length in seconds.

    The file type is taken from its content: ``source`` should carry no extension, so a
    misleading name cannot make sox read arbitrary bytes as raw audio. The header is probed
    first (``probe_audio``); then sox runs with every file it writes (the result and the
    buffer of ``-G``) in a scratch folder beside ``out``, never the system temp directory,
    cut at ``max_s`` by ``trim`` and killed if any file grows past what ``max_s`` seconds can
    take. Longer than ``max_s``: ``AudioTooLong``; a rate or channel count out of bounds:
    ``AudioUnsupported``; empty, unreadable or oversized: ``SynthesisError``; either way
    ``out`` is left as it was and nothing is left behind.
    """
    what = f"audio {source.name}"
    sox = find_tool("sox", what)
    probe_audio(source, max_s=max_s, timeout_s=min(timeout_s, PROBE_TIMEOUT_S))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}-") as scratch:
        made = Path(scratch) / "converted.wav"
        # --temp (and TMPDIR for any library sox calls) keeps -G's buffer of the whole audio
        # beside the answer, on the data disk, where the cap below can see it.
        command = [sox, "--temp", scratch, "-G", str(source), *SOX_OUTPUT_FORMAT, str(made), "trim", "0", f"{max_s:g}"]
        _run_capped(command, what, Path(scratch), output_cap_bytes(max_s), timeout_s)
        try:
            duration_s = read_format(made).duration_s
        except (OSError, ValueError) as exc:
            raise SynthesisError(f"{what}: the result is not a WAV file: {exc}") from None
        if duration_s > max_s:
            raise AudioTooLong(f"{what} lasts {duration_s:.1f} s, more than {max_s:g} s")
        _publish(made, out, what)
    return duration_s


def _run_capped(command: Sequence[str], what: str, scratch: Path, output_cap: int, timeout_s: float) -> None:
    """Run sox, killing it once a file it writes in ``scratch`` passes its cap or ``timeout_s`` passes.

    The result may reach ``output_cap``; -G's buffer holds 32-bit samples, so twice that. The
    buffer is unlinked as soon as it is made, so it is measured through the process's open
    files (/proc); where the kernel allows, RLIMIT_FSIZE stops any write past the larger cap too.
    """
    buffer_cap = 2 * output_cap
    env = {**os.environ, "TMPDIR": str(scratch)}
    try:
        proc = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env)
    except OSError as exc:
        raise SynthesisError(f"{command[0]} could not convert {what}: {exc}") from exc
    with proc:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (buffer_cap, buffer_cap))
        # stderr is drained on a thread, so a chatty sox never blocks on a full pipe.
        stderr_chunks: list[bytes] = []
        stream = proc.stderr
        assert stream is not None
        drain = threading.Thread(target=lambda: stderr_chunks.append(stream.read()), daemon=True)
        drain.start()
        deadline = time.monotonic() + timeout_s
        problem = ""
        while proc.poll() is None:
            written, biggest_other = _written_bytes(proc.pid, scratch, scratch / "converted.wav")
            if written > output_cap:
                problem = f"its output passed {output_cap} bytes"
            elif biggest_other > buffer_cap:
                problem = f"its temp file passed {buffer_cap} bytes"
            elif time.monotonic() > deadline:
                problem = f"timed out after {timeout_s:g} s"
            if problem:
                proc.kill()
                proc.wait()
                break
            time.sleep(CAP_POLL_S)
        drain.join(timeout=5)
    if not problem and proc.returncode == -signal.SIGXFSZ:
        problem = f"a file it wrote reached {buffer_cap} bytes"
    if problem:
        raise SynthesisError(f"{command[0]} was stopped converting {what}: {problem}")
    if proc.returncode != 0:
        stderr = b"".join(stderr_chunks).decode("utf-8", "replace").strip()
        raise SynthesisError(f"{command[0]} failed for {what} (exit {proc.returncode}): {stderr}")
    if _written_bytes(None, scratch, scratch / "converted.wav")[0] > output_cap:
        raise SynthesisError(f"{command[0]} was stopped converting {what}: its output passed {output_cap} bytes")


def _written_bytes(pid: int | None, scratch: Path, result: Path) -> tuple[int, int]:
    """(size of ``result``, size of the biggest other file in ``scratch`` that ``pid`` holds open)."""
    try:
        written = result.stat().st_size
    except OSError:
        written = 0
    biggest = 0
    if pid is not None:
        fd_dir = Path(f"/proc/{pid}/fd")
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith(str(scratch)) and not target.startswith(str(result)):
                        biggest = max(biggest, fd.stat().st_size)
    return written, biggest


def load_synthesizer(spec: str = DEFAULT_SYNTHESIZER) -> Synthesizer:
    """``espeak-ng:<voice>`` (``espeak-ng`` alone: voice fa), or ``package.module:Class`` built without arguments."""
    engine, _, argument = spec.strip().partition(":")
    if engine == ESPEAK:
        return EspeakSynthesizer(argument or "fa")
    if not engine or not argument:
        raise ValueError(f"synthesizer must be '{ESPEAK}:<voice>' or 'module:Class', got {spec!r}")
    try:
        module = importlib.import_module(engine)
    except ImportError as exc:
        raise ValueError(f"synthesizer {spec!r}: cannot import {engine}: {exc}") from exc
    factory = getattr(module, argument, None)
    if not callable(factory):
        raise ValueError(f"synthesizer {spec!r}: {engine} has no class {argument}")
    synthesizer = factory()
    if not isinstance(synthesizer, Synthesizer):
        raise ValueError(f"synthesizer {spec!r}: {argument} has no synthesize(text, out) method")
    return synthesizer
