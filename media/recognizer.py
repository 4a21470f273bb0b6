"""Media layer: grammar-limited Vosk recognition of spoken national-ID digits."""

import asyncio
import functools
import json
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol


from media.wavfile import read_format, read_pcm

PERSIAN_DIGIT_WORDS: Mapping[str, str] = MappingProxyType(
    {
        "صفر": "0",
        "یک": "1",
        "دو": "2",
        "سه": "3",
        "چهار": "4",
        "چار": "4",
        "پنج": "5",
        "شش": "6",
        "شیش": "6",
        "هفت": "7",
        "هشت": "8",
        "نه": "9",
        "نُه": "9",
    }
)

INSTALL_HINT = (
    "Install a Persian Vosk model whose graph can take a runtime grammar (a small model with "
    "graph/HCLr.fst and graph/Gr.fst, e.g. vosk-model-small-fa-0.42 from "
    "https://alphacephei.com/vosk/models), unpack it and point model_dir at the unpacked "
    "directory, the one that holds am/, conf/ and graph/."
)

# Fathatan to sukun, superscript alef and tatweel: written optionally, never spoken differently.
_DIACRITICS = re.compile("[\u064b-\u0652\u0670\u0640]")
# Arabic keyboards and older texts use Arabic yeh/kaf where Persian writes ی and ک.
_PERSIAN_LETTERS = str.maketrans({"\u064a": "\u06cc", "\u0649": "\u06cc", "\u0643": "\u06a9"})
# A grammar word absorbing off-grammar speech keeps coughs and "um" from being forced onto
# digits; Vosk-trained models spell it [unk], plain Kaldi recipes <UNK>.
_FILLER_WORDS = ("[unk]", "<UNK>", "<unk>")
_CHUNK_SECONDS = 0.5
_SAMPLE_BYTES = 2

_models: dict[Path, Any] = {}
_models_lock = threading.Lock()


class ModelError(Exception):
    """The configured Vosk model is missing, malformed or cannot recognise the digit words."""


@dataclass(frozen=True)
class Recognition:
    """What was heard in one utterance and the digits it spells."""

    text: str
    digits: str
    seconds: float


class Recognizer(Protocol):
    """Turns caller audio into recognised digit words."""

    def recognize_pcm(self, pcm: bytes, sample_rate: int = 8000) -> Recognition: ...

    def recognize_wav(self, path: Path) -> Recognition: ...


def normalize_word(word: str) -> str:
    """The spelling used for matching: Persian ی/ک for Arabic letters, no diacritics."""
    return _DIACRITICS.sub("", word.strip().translate(_PERSIAN_LETTERS))


def _normalized_words(words: Mapping[str, str]) -> dict[str, str]:
    normalized: dict[str, str] = {}
    for word, digit in words.items():
        if len(digit) != 1 or digit not in "0123456789":
            raise ValueError(f"digit word {word!r} maps to {digit!r}, expected one ASCII digit")
        key = normalize_word(word)
        if not key or any(character.isspace() for character in key):
            raise ValueError(f"digit word {word!r} must be a single word")
        if normalized.get(key, digit) != digit:
            raise ValueError(
                f"digit word {word!r} normalizes to {key!r}, which already means "
                f"{normalized[key]!r}, not {digit!r}"
            )
        normalized[key] = digit
    return normalized


def digits_from_text(text: str, words: Mapping[str, str] = PERSIAN_DIGIT_WORDS) -> str:
    """The ASCII digits spelled by the digit words in text, in order; other words are skipped."""
    return _spell(text, _normalized_words(words))


def _spell(text: str, normalized: Mapping[str, str]) -> str:
    return "".join(normalized.get(normalize_word(word), "") for word in text.split())


def _check_layout(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise ModelError(f"Vosk model directory {model_dir} does not exist. {INSTALL_HINT}")
    # Vosk's own layout rule: am/final.mdl marks the current layout, final.mdl at the top
    # the older flat one whose graph files sit beside it.
    if (model_dir / "am" / "final.mdl").is_file():
        graph = model_dir / "graph"
    elif (model_dir / "final.mdl").is_file():
        graph = model_dir
    else:
        raise ModelError(
            f"{model_dir} is not a Vosk model directory: it has neither am/final.mdl nor "
            f"final.mdl. {INSTALL_HINT}"
        )
    # Vosk prefers a static HCLG.fst when present and then only warns that it ignores the
    # grammar, so such a model would decode free speech instead of digits.
    if (graph / "HCLG.fst").exists():
        raise ModelError(
            f"Vosk model {model_dir} has a static graph ({graph / 'HCLG.fst'}) that cannot "
            f"take the digit grammar. {INSTALL_HINT}"
        )
    missing = [
        name
        for name in ("HCLr.fst", "Gr.fst", "disambig_tid.int")
        if not (graph / name).is_file()
    ]
    if missing:
        raise ModelError(
            f"Vosk model {model_dir} lacks {', '.join(str(graph / name) for name in missing)}, "
            f"needed for a runtime grammar. {INSTALL_HINT}"
        )


@functools.cache
def _vosk() -> Any:
    # Imported only when a model is configured: Vosk and what it pulls in cost a
    # process ~20 MiB that a softswitch without recognition should not pay.
    import vosk

    # Kaldi logs every load step to stderr; failures reach callers as ModelError instead.
    vosk.SetLogLevel(-1)
    return vosk


def _load_model(model_dir: Path) -> Any:
    # Keyed by the resolved path so that a symlink or relative path shares the same model.
    key = model_dir.resolve()
    with _models_lock:
        model = _models.get(key)
        if model is None:
            try:
                model = _vosk().Model(str(model_dir))
            except Exception as error:
                raise ModelError(
                    f"Vosk could not load the model in {model_dir}: {error}. {INSTALL_HINT}"
                ) from error
            _models[key] = model
        return model


def _in_vocabulary(model: Any, word: str) -> bool:
    # The symbol table Vosk decodes with; small models ship no graph/words.txt because it
    # is embedded in Gr.fst, so asking the loaded model is the only complete lookup.
    return int(model.vosk_model_find_word(word)) >= 0


class VoskDigitRecognizer:
    """Recognises digit words with a Vosk model restricted to a grammar of those words.

    The model is loaded once per process and directory; each call decodes with its own
    KaldiRecognizer, so one instance may serve several threads.
    """

    def __init__(self, model_dir: Path, words: Mapping[str, str] = PERSIAN_DIGIT_WORDS) -> None:
        self._model_dir = Path(model_dir)
        self._words = _normalized_words(words)
        if not self._words:
            raise ValueError("words must name at least one digit word")
        _check_layout(self._model_dir)
        self._model = _load_model(self._model_dir)
        spellings: dict[str, list[str]] = {}
        for word, digit in words.items():
            for spelling in (normalize_word(word), word):
                if spelling not in spellings.setdefault(digit, []):
                    spellings[digit].append(spelling)
        known = {
            digit: [spelling for spelling in forms if _in_vocabulary(self._model, spelling)]
            for digit, forms in spellings.items()
        }
        # Colloquial variants may be missing from a model's lexicon and are left out of the
        # grammar; a digit with no known form at all is fatal, because Vosk would silently
        # never hear it (it drops unknown grammar words with only a log warning).
        uncovered = sorted(digit for digit, forms in known.items() if not forms)
        if uncovered:
            lacking = ", ".join(
                f"{digit} ({' '.join(spellings[digit])})" for digit in uncovered
            )
            raise ModelError(
                f"Vosk model {self._model_dir} has no word for digit(s) {lacking} in its "
                f"vocabulary, so it cannot recognise the digit grammar. {INSTALL_HINT}"
            )
        fillers = [word for word in _FILLER_WORDS if _in_vocabulary(self._model, word)][:1]
        self._grammar = tuple(spelling for forms in known.values() for spelling in forms)
        # ensure_ascii would write \uXXXX escapes, which Vosk's JSON reader keeps verbatim.
        self._grammar_json = json.dumps([*self._grammar, *fillers], ensure_ascii=False)

    @property
    def model(self) -> Any:
        """The shared vosk.Model this recognizer decodes with."""
        return self._model

    @property
    def grammar(self) -> tuple[str, ...]:
        """The digit words the model knows and decodes; unknown variants are left out."""
        return self._grammar

    def recognize_pcm(self, pcm: bytes, sample_rate: int = 8000) -> Recognition:
        """Decode 16-bit little-endian mono PCM at sample_rate as one utterance."""
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if len(pcm) % _SAMPLE_BYTES:
            raise ValueError(f"pcm must hold whole 16-bit samples, got {len(pcm)} bytes")
        started = time.perf_counter()
        recognizer = _vosk().KaldiRecognizer(self._model, sample_rate, self._grammar_json)
        # Bounded chunks keep the float copy Vosk makes of each buffer small.
        chunk = int(sample_rate * _CHUNK_SECONDS) * _SAMPLE_BYTES
        for offset in range(0, len(pcm), chunk):
            recognizer.AcceptWaveform(pcm[offset : offset + chunk])
        text = str(json.loads(recognizer.FinalResult()).get("text", ""))
        seconds = time.perf_counter() - started
        return Recognition(text=text, digits=_spell(text, self._words), seconds=seconds)

    def recognize_wav(self, path: Path) -> Recognition:
        """Decode a 16-bit mono PCM WAV at whatever sample rate its header declares."""
        sample_rate = read_format(Path(path)).sample_rate
        return self.recognize_pcm(read_pcm(Path(path), sample_rate), sample_rate)


class AsyncRecognizer:
    """Runs a Recognizer on one worker thread so that decoding never blocks the event loop."""

    def __init__(self, recognizer: Recognizer) -> None:
        self._recognizer = recognizer
        # One worker: decoding is CPU-bound, and queuing calls leaves the other core to
        # the media workers instead of running several decodes at once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recognizer")

    async def recognize_wav(self, path: Path) -> Recognition:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._recognizer.recognize_wav, path)

    def close(self) -> None:
        """Finish the running decode, drop queued ones and stop the worker."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def load_recognizer(model_dir: Path | None) -> Recognizer | None:
    """The digit recognizer for model_dir, or None when no model is configured."""
    if model_dir is None:
        return None
    return VoskDigitRecognizer(model_dir)
