"""Media layer: IVR prompt library synthesised with espeak-ng and sox, with recorded overrides."""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from media.synth import SAMPLE_RATE, SOX_OUTPUT_FORMAT, SynthesisError, find_tool, run_tool, speak_to_wav
from media.wavfile import read_format

TONE_PREFIX = "tone:"
MELODY_PREFIX = "melody:"
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
# Full-scale sine beeps are harsh on a handset; -6 dBFS is still clearly audible.
_TONE_GAIN_DB = "-6"
# Hold music is heard for minutes, under the announcements: softer than a beep.
_MELODY_GAIN_DB = "-12"
# Each note swells in quickly and dies away over the last part of its length, so
# notes neither click nor run into each other.
_NOTE_ATTACK_S = 0.03
_NOTE_RELEASE_SHARE = 0.4


class PromptError(SynthesisError):
    """A prompt cannot be produced or used: missing tool, failed synthesis or a bad file."""


class UnknownPromptError(PromptError, KeyError):
    """The prompt name is not in the library."""

    def __str__(self) -> str:
        # KeyError would print the message in quotes, as if it were the key.
        return str(self.args[0])


@dataclass(frozen=True)
class _Synth:
    """A prompt made by sox, not spoken: a tone, or a melody of equal-length notes (0 Hz: a rest)."""

    frequencies_hz: tuple[float, ...]
    note_s: float
    melody: bool


def _parse_synth(name: str, text: str) -> _Synth:
    melody = text.startswith(MELODY_PREFIX)
    if melody:
        kind, form = "melody", "melody:<hz>,<hz>,...:<note_seconds>"
    else:
        kind, form = "tone", "tone:<hz>:<seconds>"
    parts = text.split(":")[1:]
    try:
        if len(parts) != 2 or (not melody and "," in parts[0]):
            raise ValueError
        synth = _Synth(tuple(float(f) for f in parts[0].split(",")), float(parts[1]), melody)
    except ValueError:
        raise ValueError(f"prompt {name!r}: {kind} must be '{form}', got {text!r}") from None
    for frequency in synth.frequencies_hz:
        if melody and frequency == 0:
            continue
        if not (math.isfinite(frequency) and 0 < frequency < SAMPLE_RATE / 2):
            rest = " (or 0 for a rest)" if melody else ""
            raise ValueError(
                f"prompt {name!r}: {kind} frequency must be between 0 and {SAMPLE_RATE // 2} Hz{rest}, "
                f"got {frequency:g}"
            )
    if not any(synth.frequencies_hz):
        raise ValueError(f"prompt {name!r}: melody has only rests")
    if not (math.isfinite(synth.note_s) and synth.note_s > 0):
        what = "note length" if melody else "length"
        raise ValueError(f"prompt {name!r}: {kind} {what} must be positive seconds, got {parts[1]}")
    return synth


_ONES = ("", "digit_1", "digit_2", "digit_3", "digit_4", "digit_5", "digit_6", "digit_7", "digit_8",
         "digit_9")


NUMBER_STYLES = ("fa", "en", "plain")


def cardinal_prompt_names(n: int, style: str = "fa") -> list[str]:
    """Names of the prompts that say n (0..999), joined as the language of ``style`` joins them.

    Units reuse digit_1..digit_9 and zero is digit_0; 10..19, the tens and the
    hundreds (irregular in Persian: دویست, سیصد, پانصد) each have a prompt
    number_<n>. "fa" puts "and" between every part (125 is صد و بیست و پنج:
    number_100, and, number_20, and, digit_5; Kurdish alike), "en" only after the
    hundreds (one hundred and twenty five), "plain" nowhere (Azerbaijani: yüz
    iyirmi beş).
    """
    if style not in NUMBER_STYLES:
        raise ValueError(f"number style must be one of {', '.join(NUMBER_STYLES)}, got {style!r}")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 999:
        raise ValueError(f"cardinal must be a whole number from 0 to 999, got {n!r}")
    if n == 0:
        return ["digit_0"]
    hundreds, rest = divmod(n, 100)
    parts = [f"number_{hundreds * 100}"] if hundreds else []
    if 10 <= rest < 20:
        parts.append(f"number_{rest}")
    elif rest:
        tens, ones = divmod(rest, 10)
        parts += [f"number_{tens * 10}"] if tens else []
        parts += [_ONES[ones]] if ones else []
    if style == "plain" or len(parts) == 1:
        return parts
    if style == "en":
        return [parts[0], "and", *parts[1:]] if hundreds else parts
    names = [parts[0]]
    for part in parts[1:]:
        names += ["and", part]
    return names


class PromptLibrary:
    """Named prompts as 8 kHz mono 16-bit WAV files.

    Spoken prompts are synthesised once into cache_dir under a name carrying a
    hash of voice and text, so editing a text regenerates it. A file
    override_dir/<name>.wav (a professionally recorded prompt) wins over the
    synthesised one. A prompt the texts lack is taken from ``fallback`` (the
    first language's library, for a language whose texts are not complete), and
    numbers are joined in the ``numbers`` style (``cardinal_prompt_names``).
    """

    def __init__(
        self,
        texts: Mapping[str, str],
        cache_dir: Path,
        override_dir: Path | None = None,
        voice: str = "fa",
        numbers: str = "fa",
        fallback: PromptLibrary | None = None,
    ) -> None:
        if not voice:
            raise ValueError("voice is empty")
        cardinal_prompt_names(0, numbers)  # checks the style
        self._synths: dict[str, _Synth] = {}
        for name, text in texts.items():
            if not _NAME_PATTERN.fullmatch(name):
                raise ValueError(
                    f"prompt name {name!r} must be letters, digits, '_' or '-' "
                    "(it becomes a file name) and not start with '-'"
                )
            if not text.strip():
                raise ValueError(f"prompt {name!r} has an empty text")
            if text.startswith((TONE_PREFIX, MELODY_PREFIX)):
                self._synths[name] = _parse_synth(name, text)
        self._texts = dict(texts)
        self._cache_dir = Path(cache_dir)
        self._override_dir = None if override_dir is None else Path(override_dir)
        self._voice = voice
        self._numbers = numbers
        self._fallback = fallback
        self._durations: dict[Path, float] = {}

    def has_own(self, name: str) -> bool:
        """Whether this library's own texts have the prompt (not only its fallback)."""
        return name in self._texts

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
        spoken = [name for name in missing if name not in self._synths]
        espeak = self._tool("espeak-ng", spoken) if spoken else ""
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        for name in missing:
            self._generate(name, sox, espeak)

    def path(self, name: str) -> Path:
        """The WAV file to play for name: its override if present, else the synthesised one."""
        if self._fallback is not None and name not in self._texts:
            return self._fallback.path(name)
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

    def cardinal(self, n: int) -> list[Path]:
        """Prompts that say n (0..999) as a number, e.g. 125 in Persian: صد و بیست و پنج."""
        return [self.path(name) for name in cardinal_prompt_names(n, self._numbers)]

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
        return find_tool(tool, f"prompt(s) {', '.join(needed_for)}", PromptError)

    def _generate(self, name: str, sox: str, espeak: str) -> None:
        with tempfile.TemporaryDirectory(dir=self._cache_dir, prefix=f".{name}-") as tmp:
            out = Path(tmp) / "out.wav"
            synth = self._synths.get(name)
            if synth is not None:
                self._synthesise(name, synth, sox, out)
            else:
                speak_to_wav(self._texts[name], self._voice, out, f"prompt {name!r}", espeak=espeak, sox=sox,
                             error=PromptError)
            fmt = read_format(out)
            if fmt.data_bytes == 0:
                raise PromptError(f"synthesis of prompt {name!r} produced no audio")
            # Durable before it becomes visible: a later ensure() trusts any file it finds.
            with open(out, "rb") as f:
                os.fsync(f.fileno())
            os.replace(out, self._cache_path(name))

    def _synthesise(self, name: str, synth: _Synth, sox: str, out: Path) -> None:
        seconds = str(synth.note_s)
        if not synth.melody:
            self._run(name, [sox, "-n", *SOX_OUTPUT_FORMAT, str(out), "synth", seconds,
                             "sine", str(synth.frequencies_hz[0]), "gain", _TONE_GAIN_DB])
            return
        # A very short note gets a shorter swell, so that swell and dying away fit in it.
        attack = str(min(_NOTE_ATTACK_S, synth.note_s * (1 - _NOTE_RELEASE_SHARE) / 2))
        release = str(synth.note_s * _NOTE_RELEASE_SHARE)
        notes = []
        for i, frequency in enumerate(synth.frequencies_hz):
            note = out.with_name(f"note-{i:04d}.wav")
            if frequency:
                effects = ["synth", seconds, "sine", str(frequency),
                           "fade", "q", attack, seconds, release, "gain", _MELODY_GAIN_DB]
            else:
                effects = ["trim", "0", seconds]  # a rest: the null input is silence
            self._run(name, [sox, "-n", *SOX_OUTPUT_FORMAT, str(note), *effects])
            notes.append(str(note))
        # Several inputs of one format are played one after the other.
        self._run(name, [sox, *notes, str(out)])

    @staticmethod
    def _run(name: str, command: list[str]) -> None:
        run_tool(command, f"prompt {name!r}", error=PromptError)
