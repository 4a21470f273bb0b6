"""Media layer: text-to-speech behind a pluggable seam, and sox conversion to the telephone WAV format.

The embedded engine is espeak-ng (voice ``fa``) resampled by sox to 8 kHz mono
16-bit PCM, the format every prompt and answer is played in. Another engine
plugs in through ``load_synthesizer("package.module:Class")``. The prompt
library (``media.prompts``) runs its tools through the same helpers.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from media.wavfile import read_format

SAMPLE_RATE = 8000
SOX_OUTPUT_FORMAT = ("-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer")
TOOL_TIMEOUT_S = 120.0
DEFAULT_SYNTHESIZER = "espeak-ng:fa"
ESPEAK = "espeak-ng"


class SynthesisError(Exception):
    """Audio cannot be produced: a missing tool, a failed or overlong run, or no audio at all."""


class AudioTooLong(SynthesisError):
    """The audio lasts longer than allowed."""


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
    # -G lowers the gain where resampling espeak's loud output would clip.
    run_tool([sox, "-G", str(spoken), *SOX_OUTPUT_FORMAT, str(out)], what, timeout_s, error)
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


def convert_to_telephone_wav(source: Path, out: Path, *, max_s: float, timeout_s: float = 60.0) -> float:
    """Convert any audio file sox can read to 8 kHz mono 16-bit WAV; returns its length in seconds.

    The file type is taken from its content: ``source`` should carry no extension, so a
    misleading name cannot make sox read arbitrary bytes as raw audio. Longer than
    ``max_s``: ``AudioTooLong``; empty or unreadable: ``SynthesisError``; either way ``out`` is left as it was.
    """
    what = f"audio {source.name}"
    sox = find_tool("sox", what)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}-") as scratch:
        made = Path(scratch) / "converted.wav"
        run_tool([sox, "-G", str(source), *SOX_OUTPUT_FORMAT, str(made)], what, timeout_s)
        duration_s = read_format(made).duration_s
        if duration_s > max_s:
            raise AudioTooLong(f"{what} lasts {duration_s:.1f} s, more than {max_s:g} s")
        _publish(made, out, what)
    return duration_s


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
