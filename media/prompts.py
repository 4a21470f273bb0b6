"""Media layer: IVR prompt library synthesised with espeak-ng and sox, with recorded overrides."""

import hashlib
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from media.wavfile import read_format

SAMPLE_RATE = 8000
TONE_PREFIX = "tone:"
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_TOOL_TIMEOUT_S = 120
# Full-scale sine beeps are harsh on a handset; -6 dBFS is still clearly audible.
_TONE_GAIN_DB = "-6"
_SOX_OUTPUT_FORMAT = ["-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer"]


class PromptError(Exception):
    """A prompt cannot be produced or used: missing tool, failed synthesis or a bad file."""


class UnknownPromptError(PromptError, KeyError):
    """The prompt name is not in the library."""

    def __str__(self) -> str:
        # KeyError would print the message in quotes, as if it were the key.
        return str(self.args[0])


@dataclass(frozen=True)
class _Tone:
    frequency_hz: float
    seconds: float


def _parse_tone(name: str, text: str) -> _Tone:
    parts = text[len(TONE_PREFIX) :].split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        tone = _Tone(float(parts[0]), float(parts[1]))
    except ValueError:
        raise ValueError(
            f"prompt {name!r}: tone must be 'tone:<hz>:<seconds>', got {text!r}"
        ) from None
    if not (math.isfinite(tone.frequency_hz) and 0 < tone.frequency_hz < SAMPLE_RATE / 2):
        raise ValueError(
            f"prompt {name!r}: tone frequency must be between 0 and {SAMPLE_RATE // 2} Hz, "
            f"got {parts[0]}"
        )
    if not (math.isfinite(tone.seconds) and tone.seconds > 0):
        raise ValueError(f"prompt {name!r}: tone length must be positive seconds, got {parts[1]}")
    return tone


class PromptLibrary:
    """Named prompts as 8 kHz mono 16-bit WAV files.

    Spoken prompts are synthesised once into cache_dir under a name carrying a
    hash of voice and text, so editing a text regenerates it. A file
    override_dir/<name>.wav (a professionally recorded prompt) wins over the
    synthesised one.
    """

    def __init__(
        self,
        texts: Mapping[str, str],
        cache_dir: Path,
        override_dir: Path | None = None,
        voice: str = "fa",
    ) -> None:
        if not voice:
            raise ValueError("voice is empty")
        self._tones: dict[str, _Tone] = {}
        for name, text in texts.items():
            if not _NAME_PATTERN.fullmatch(name):
                raise ValueError(
                    f"prompt name {name!r} must be letters, digits, '_' or '-' "
                    "(it becomes a file name) and not start with '-'"
                )
            if not text.strip():
                raise ValueError(f"prompt {name!r} has an empty text")
            if text.startswith(TONE_PREFIX):
                self._tones[name] = _parse_tone(name, text)
        self._texts = dict(texts)
        self._cache_dir = Path(cache_dir)
        self._override_dir = None if override_dir is None else Path(override_dir)
        self._voice = voice
        self._durations: dict[Path, float] = {}

    def ensure(self, names: Iterable[str] | None = None) -> None:
        """Synthesise every missing prompt (all of them, or just names); check overrides."""
        if isinstance(names, str):
            raise ValueError(f"names must be an iterable of prompt names, not the string {names!r}")
        selected = list(self._texts) if names is None else list(names)
        for name in selected:
            self._text(name)
        missing = []
        for name in selected:
            override = self._override_path(name)
            if override is not None:
                self._check_override(override)
            elif not self._cache_path(name).exists():
                missing.append(name)
        if not missing:
            return
        sox = self._tool("sox", missing)
        spoken = [name for name in missing if name not in self._tones]
        espeak = self._tool("espeak-ng", spoken) if spoken else ""
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        for name in missing:
            self._generate(name, sox, espeak)

    def path(self, name: str) -> Path:
        """The WAV file to play for name: its override if present, else the synthesised one."""
        self._text(name)
        override = self._override_path(name)
        if override is not None:
            self._check_override(override)
            return override
        cached = self._cache_path(name)
        if not cached.exists():
            raise PromptError(f"prompt {name!r} is not synthesised yet ({cached}): call ensure()")
        return cached

    def duration_s(self, name: str) -> float:
        """Playing time of the prompt in seconds."""
        path = self.path(name)
        if path not in self._durations:
            self._durations[path] = read_format(path).duration_s
        return self._durations[path]

    def number(self, digits: str) -> list[Path]:
        """Prompts digit_0..digit_9 for each digit, so that codes are read digit by digit."""
        if not digits or any(c not in "0123456789" for c in digits):
            raise ValueError(f"number must be ASCII digits 0-9, got {digits!r}")
        return [self.path(f"digit_{c}") for c in digits]

    def _text(self, name: str) -> str:
        try:
            return self._texts[name]
        except KeyError:
            raise UnknownPromptError(f"unknown prompt {name!r}") from None

    def _cache_path(self, name: str) -> Path:
        # The separator keeps voice "fa" + text "x" apart from voice "f" + text "ax".
        key = f"{self._voice}\0{self._texts[name]}".encode()
        return self._cache_dir / f"{name}-{hashlib.sha1(key).hexdigest()[:10]}.wav"

    def _override_path(self, name: str) -> Path | None:
        if self._override_dir is None:
            return None
        candidate = self._override_dir / f"{name}.wav"
        return candidate if candidate.is_file() else None

    def _check_override(self, path: Path) -> None:
        if path in self._durations:
            return
        try:
            fmt = read_format(path)
        except ValueError as error:
            raise PromptError(f"override prompt {path} is not a usable WAV file: {error}") from None
        if (fmt.sample_rate, fmt.channels, fmt.bits_per_sample) != (SAMPLE_RATE, 1, 16):
            raise PromptError(
                f"override prompt {path} must be {SAMPLE_RATE} Hz mono 16-bit PCM, got "
                f"{fmt.sample_rate} Hz, {fmt.channels} channel(s), {fmt.bits_per_sample}-bit"
            )
        if fmt.data_bytes == 0:
            raise PromptError(f"override prompt {path} holds no audio")
        self._durations[path] = fmt.duration_s

    @staticmethod
    def _tool(tool: str, needed_for: list[str]) -> str:
        found = shutil.which(tool)
        if found is None:
            raise PromptError(
                f"{tool} is not installed (not found on PATH); it is needed to synthesise "
                f"prompt(s) {', '.join(needed_for)}"
            )
        return found

    def _generate(self, name: str, sox: str, espeak: str) -> None:
        with tempfile.TemporaryDirectory(dir=self._cache_dir, prefix=f".{name}-") as tmp:
            out = Path(tmp) / "out.wav"
            tone = self._tones.get(name)
            if tone is not None:
                self._run(
                    name,
                    [sox, "-n", *_SOX_OUTPUT_FORMAT, str(out), "synth", str(tone.seconds),
                     "sine", str(tone.frequency_hz), "gain", _TONE_GAIN_DB],
                )
            else:
                spoken = Path(tmp) / "espeak.wav"
                # "--" keeps a text starting with '-' from being read as an option.
                self._run(
                    name,
                    [espeak, "-v", self._voice, "-w", str(spoken), "--", self._texts[name]],
                )
                # -G lowers the gain where resampling espeak's loud output would clip.
                self._run(name, [sox, "-G", str(spoken), *_SOX_OUTPUT_FORMAT, str(out)])
            fmt = read_format(out)
            if fmt.data_bytes == 0:
                raise PromptError(f"synthesis of prompt {name!r} produced no audio")
            # Durable before it becomes visible: a later ensure() trusts any file it finds.
            with open(out, "rb") as f:
                os.fsync(f.fileno())
            os.replace(out, self._cache_path(name))

    @staticmethod
    def _run(name: str, command: list[str]) -> None:
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise PromptError(
                f"{command[0]} could not synthesise prompt {name!r}: {error}"
            ) from error
        if result.returncode != 0:
            raise PromptError(
                f"{command[0]} failed for prompt {name!r} (exit {result.returncode}): "
                f"{result.stderr.strip()}"
            )
