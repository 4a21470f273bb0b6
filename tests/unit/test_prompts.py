import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from media.prompts import PromptError, PromptLibrary, UnknownPromptError, cardinal_prompt_names
from media.wavfile import WavWriter, is_silence, read_format, read_pcm
from softswitch.config import CONFIG_DIR, load_prompt_texts

pytestmark = pytest.mark.unit

DIGITS = ["صفر", "یک", "دو", "سه", "چهار", "پنج", "شش", "هفت", "هشت", "نه"]
TEXTS = {
    "welcome": "به سامانه ارتباط مردم و دولت، یکصد و یازده، خوش آمدید.",
    "after_beep": "لطفاً پس از شنیدن صدای بوق، پیام خود را بگویید.",
    "beep": "tone:1000:0.3",
    **{f"digit_{d}": word for d, word in enumerate(DIGITS)},
}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> PromptLibrary:
    prompts = PromptLibrary(TEXTS, tmp_path_factory.mktemp("cache"))
    prompts.ensure()
    return prompts


def write_wav(path: Path, samples: int, sample_rate: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with WavWriter(path, sample_rate=sample_rate) as writer:
        writer.write(np.full(samples, 1000, dtype="<i2").tobytes())
    return path


def tools_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *tools: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_spoken_prompts_are_8k_persian_speech(library: PromptLibrary) -> None:
    for name in ("welcome", "after_beep", "digit_7"):
        path = library.path(name)
        assert re.fullmatch(rf"{name}-[0-9a-f]{{10}}\.wav", path.name)
        fmt = read_format(path)
        assert (fmt.sample_rate, fmt.channels, fmt.bits_per_sample) == (8000, 1, 16)
        assert fmt.data_bytes > 0
        assert not is_silence(path)
        assert library.duration_s(name) == pytest.approx(fmt.duration_s)
    assert library.duration_s("welcome") > 1.5
    assert library.duration_s("digit_7") > 0.2


def test_tone_prompt(library: PromptLibrary) -> None:
    path = library.path("beep")
    assert library.duration_s("beep") == 0.3
    samples = np.frombuffer(read_pcm(path), "<i2").astype(np.float64)
    assert len(samples) == 2400
    spectrum = np.abs(np.fft.rfft(samples))
    peak_hz = np.fft.rfftfreq(len(samples), 1 / 8000)[np.argmax(spectrum)]
    assert peak_hz == pytest.approx(1000, abs=5)
    assert 0.4 < np.max(np.abs(samples)) / 32768 < 0.6


def test_second_ensure_does_not_regenerate(tmp_path: Path) -> None:
    prompts = PromptLibrary({"welcome": TEXTS["welcome"], "beep": "tone:440:0.2"}, tmp_path / "c")
    prompts.ensure()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "c").iterdir()}
    assert len(before) == 2
    prompts.ensure()
    PromptLibrary({"welcome": TEXTS["welcome"]}, tmp_path / "c").ensure()
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "c").iterdir()} == before


def test_changed_text_or_voice_regenerates(tmp_path: Path) -> None:
    cache = tmp_path / "c"
    first = PromptLibrary({"bye": "خدانگهدار"}, cache)
    first.ensure()
    edited = PromptLibrary({"bye": "با تشکر، خدانگهدار"}, cache)
    with pytest.raises(PromptError, match="call ensure"):
        edited.path("bye")
    edited.ensure()
    assert edited.path("bye") != first.path("bye")
    assert edited.duration_s("bye") > first.duration_s("bye")
    female = PromptLibrary({"bye": "خدانگهدار"}, cache, voice="fa+f3")
    female.ensure()
    assert female.path("bye") != first.path("bye")
    assert female.path("bye").read_bytes() != first.path("bye").read_bytes()


def test_ensure_only_named_prompts_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    prompts = PromptLibrary(TEXTS, tmp_path / "c")
    prompts.ensure(["digit_1", "beep"])
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert [f.split("-")[0] for f in files] == ["beep", "digit_1"]
    with pytest.raises(PromptError, match="not synthesised yet"):
        prompts.path("digit_2")
    with pytest.raises(ValueError, match="not the string 'beep'"):
        prompts.ensure("beep")


def test_override_wins(tmp_path: Path, library: PromptLibrary) -> None:
    overrides = tmp_path / "recorded"
    recorded = write_wav(overrides / "welcome.wav", 8000 * 2)
    prompts = PromptLibrary(TEXTS, library.path("welcome").parent, override_dir=overrides)
    prompts.ensure()
    assert prompts.path("welcome") == recorded
    assert prompts.duration_s("welcome") == 2.0
    assert prompts.path("after_beep") == library.path("after_beep")


def test_override_is_used_without_synthesis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = tmp_path / "recorded"
    write_wav(overrides / "welcome.wav", 800)
    tools_only(tmp_path, monkeypatch)
    prompts = PromptLibrary({"welcome": TEXTS["welcome"]}, tmp_path / "c", override_dir=overrides)
    prompts.ensure()
    assert prompts.duration_s("welcome") == 0.1


@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda p: write_wav(p, 1600, sample_rate=16000),
            "must be 8000 Hz mono 16-bit PCM, got 16000 Hz",
        ),
        (lambda p: p.write_bytes(b"ID3 this is an mp3"), "not a usable WAV file"),
        (lambda p: write_wav(p, 0), "holds no audio"),
    ],
)
def test_bad_override_is_rejected(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    overrides = tmp_path / "recorded"
    overrides.mkdir()
    bad = overrides / "welcome.wav"
    make(bad)
    prompts = PromptLibrary({"welcome": TEXTS["welcome"]}, tmp_path / "c", override_dir=overrides)
    with pytest.raises(PromptError, match=re.escape(str(bad)) + ".*" + message):
        prompts.path("welcome")
    with pytest.raises(PromptError, match=message):
        prompts.ensure()


def test_stereo_override_is_rejected(tmp_path: Path) -> None:
    overrides = tmp_path / "recorded"
    overrides.mkdir()
    pcm = bytes(3200)
    fmt = struct.pack("<HHIIHH", 1, 2, 8000, 32000, 4, 16)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    (overrides / "beep.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    prompts = PromptLibrary({"beep": "tone:1000:0.3"}, tmp_path / "c", override_dir=overrides)
    with pytest.raises(PromptError, match="2 channel"):
        prompts.path("beep")


def test_number_reads_digit_by_digit(library: PromptLibrary) -> None:
    assert library.number("1100") == [
        library.path("digit_1"),
        library.path("digit_1"),
        library.path("digit_0"),
        library.path("digit_0"),
    ]
    for bad in ("", "12a", "1 2", "۱۲", "-1"):
        with pytest.raises(ValueError, match="ASCII digits"):
            library.number(bad)


def test_unknown_prompt(library: PromptLibrary) -> None:
    with pytest.raises(UnknownPromptError) as caught:
        library.path("goodbye")
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, PromptError)
    assert str(caught.value) == "unknown prompt 'goodbye'"
    with pytest.raises(UnknownPromptError):
        library.ensure(["welcome", "goodbye"])
    with pytest.raises(UnknownPromptError):
        library.duration_s("goodbye")
    with pytest.raises(UnknownPromptError):
        PromptLibrary({"digit_1": "یک"}, library.path("welcome").parent).number("12")


def test_missing_tools_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = {"welcome": TEXTS["welcome"], "beep": "tone:1000:0.3"}
    tools_only(tmp_path, monkeypatch, "sox")
    with pytest.raises(PromptError, match="espeak-ng is not installed.*welcome"):
        PromptLibrary(texts, tmp_path / "c").ensure()
    # A tone needs sox only.
    PromptLibrary(texts, tmp_path / "c").ensure(["beep"])
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(PromptError, match="sox is not installed"):
        PromptLibrary(texts, tmp_path / "c").ensure()


def test_cached_prompts_need_no_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = {"beep": "tone:800:0.1"}
    PromptLibrary(texts, tmp_path / "c").ensure()
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    prompts = PromptLibrary(texts, tmp_path / "c")
    prompts.ensure()
    assert prompts.duration_s("beep") == 0.1


def test_synthesis_failure_is_reported(tmp_path: Path) -> None:
    prompts = PromptLibrary({"welcome": "سلام"}, tmp_path / "c", voice="zz")
    with pytest.raises(PromptError, match="espeak-ng failed for prompt 'welcome'.*voice"):
        prompts.ensure()
    assert [p for p in (tmp_path / "c").iterdir()] == []


@pytest.mark.parametrize(
    "texts,message",
    [
        ({"a/b": "x"}, "must be letters, digits"),
        ({"-x": "x"}, "must be letters, digits"),
        ({"a": "  "}, "empty text"),
        ({"beep": "tone:1000"}, r"tone must be 'tone:<hz>:<seconds>'"),
        ({"beep": "tone:abc:1"}, r"tone must be 'tone:<hz>:<seconds>'"),
        ({"beep": "tone:5000:1"}, "frequency must be between 0 and 4000 Hz"),
        ({"beep": "tone:1000:0"}, "length must be positive"),
        ({"beep": "tone:1000:inf"}, "length must be positive"),
        ({"beep": "tone:440,880:1"}, r"tone must be 'tone:<hz>:<seconds>'"),
        ({"hold": "melody:440,abc:0.5"}, r"melody must be 'melody:<hz>,<hz>,...:<note_seconds>'"),
        ({"hold": "melody:440,880"}, r"melody must be 'melody:<hz>,<hz>,...:<note_seconds>'"),
        ({"hold": "melody:440,5000:0.5"}, r"melody frequency must be between 0 and 4000 Hz \(or 0 for a rest\)"),
        ({"hold": "melody:0,0:0.5"}, "only rests"),
        ({"hold": "melody:440:0"}, "melody note length must be positive"),
    ],
)
def test_rejects_bad_texts(tmp_path: Path, texts: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PromptLibrary(texts, tmp_path)



@pytest.mark.parametrize("n, names", [
    (0, ["digit_0"]),
    (7, ["digit_7"]),
    (10, ["number_10"]),
    (13, ["number_13"]),
    (20, ["number_20"]),
    (25, ["number_20", "and", "digit_5"]),
    (90, ["number_90"]),
    (100, ["number_100"]),
    (105, ["number_100", "and", "digit_5"]),
    (110, ["number_100", "and", "number_10"]),
    (119, ["number_100", "and", "number_19"]),
    (125, ["number_100", "and", "number_20", "and", "digit_5"]),
    (500, ["number_500"]),
    (740, ["number_700", "and", "number_40"]),
    (999, ["number_900", "and", "number_90", "and", "digit_9"]),
])
def test_cardinal_prompt_names(n: int, names: list[str]) -> None:
    assert cardinal_prompt_names(n) == names


def test_cardinal_plays_the_named_prompts_in_order(tmp_path: Path) -> None:
    names = {name for n in range(1000) for name in cardinal_prompt_names(n)}
    prompts = PromptLibrary({name: f"tone:{300 + 10 * i}:0.01" for i, name in enumerate(sorted(names))},
                            tmp_path)
    prompts.ensure()
    assert prompts.cardinal(125) == [prompts.path(name) for name in
                                     ("number_100", "and", "number_20", "and", "digit_5")]
    assert prompts.cardinal(0) == [prompts.path("digit_0")]
    for bad in (-1, 1000, 1.5, True, "12"):
        with pytest.raises(ValueError, match="whole number from 0 to 999"):
            prompts.cardinal(bad)  # type: ignore[arg-type]


def test_shipped_prompt_texts_are_usable_and_say_every_cardinal(tmp_path: Path) -> None:
    texts = load_prompt_texts(CONFIG_DIR / "prompts.fa.yaml")
    PromptLibrary(texts, tmp_path)
    needed = {name for n in range(1000) for name in cardinal_prompt_names(n)}
    assert needed <= set(texts)


def test_melody_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tools_only(tmp_path, monkeypatch, "sox")  # a melody, like a tone, needs no speech synthesis
    prompts = PromptLibrary({"hold": "melody:523,659,0,784:0.25"}, tmp_path / "c")
    prompts.ensure()
    path = prompts.path("hold")
    assert prompts.duration_s("hold") == 1.0
    assert not is_silence(path)
    samples = np.frombuffer(read_pcm(path), "<i2").astype(np.float64) / 32768
    assert len(samples) == 8000
    assert 0.2 < np.max(np.abs(samples)) < 0.3  # about -12 dBFS at the peak
    notes = samples.reshape(4, 2000)
    for note, expected_hz in zip(notes, (523, 659, None, 784)):
        if expected_hz is None:
            assert np.max(np.abs(note)) < 0.001  # the rest (sox dithers by a bit)
            continue
        spectrum = np.abs(np.fft.rfft(note))
        assert np.fft.rfftfreq(len(note), 1 / 8000)[np.argmax(spectrum)] == pytest.approx(expected_hz, abs=5)
        # Each note fades in and out, so notes do not click into each other.
        assert np.max(np.abs(note[:8])) < 0.05 and np.max(np.abs(note[-8:])) < 0.05
    assert [p.name for p in (tmp_path / "c").iterdir()] == [path.name]


def test_shipped_hold_music(tmp_path: Path) -> None:
    texts = load_prompt_texts(CONFIG_DIR / "prompts.fa.yaml")
    assert texts["hold_music"].startswith("melody:")
    prompts = PromptLibrary({"hold_music": texts["hold_music"]}, tmp_path)
    prompts.ensure()
    assert 15 <= prompts.duration_s("hold_music") <= 20
    assert not is_silence(prompts.path("hold_music"))


@pytest.mark.parametrize("style, n, names", [
    ("en", 125, ["number_100", "and", "number_20", "digit_5"]),  # one hundred and twenty five
    ("en", 25, ["number_20", "digit_5"]),
    ("en", 300, ["number_300"]),
    ("plain", 125, ["number_100", "number_20", "digit_5"]),  # yüz iyirmi beş
    ("fa", 25, ["number_20", "and", "digit_5"]),
])
def test_cardinal_prompt_names_in_each_style(style: str, n: int, names: list[str]) -> None:
    assert cardinal_prompt_names(n, style) == names


def test_an_unknown_number_style_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="number style"):
        PromptLibrary({"beep": "tone:440:0.1"}, tmp_path, numbers="roman")


def test_a_second_language_speaks_its_own_prompts_and_falls_back_for_the_rest(tmp_path: Path) -> None:
    first = PromptLibrary({"beep": "tone:440:0.1", "goodbye": "tone:500:0.1"}, tmp_path)
    second = PromptLibrary({"goodbye": "tone:900:0.1"}, tmp_path, voice="en-us", fallback=first)
    first.ensure()
    second.ensure()
    assert second.path("beep") == first.path("beep")  # not in its texts: the first language's
    assert second.path("goodbye") != first.path("goodbye") and second.path("goodbye").exists()
    assert second.has_own("goodbye") and not second.has_own("beep")
    with pytest.raises(UnknownPromptError):
        second.path("nothing")


def test_shipped_english_prompts_name_only_prompts_of_the_first_language_and_say_every_cardinal() -> None:
    persian = load_prompt_texts(CONFIG_DIR / "prompts.fa.yaml")
    english = load_prompt_texts(CONFIG_DIR / "prompts.en.yaml")
    assert set(english) <= set(persian)
    assert {name for n in range(1000) for name in cardinal_prompt_names(n, "en")} <= set(english)
    # What an English caller would otherwise hear in Persian: only what needs no words.
    assert set(persian) - set(english) == {"hold_music", "language_choice_end", "topic_press_end"}


def test_english_speech_is_synthesised_with_its_voice(tmp_path: Path) -> None:
    english = load_prompt_texts(CONFIG_DIR / "prompts.en.yaml")
    prompts = PromptLibrary({"goodbye": english["goodbye"]}, tmp_path, voice="en-us", numbers="en")
    prompts.ensure()
    assert 1.0 < prompts.duration_s("goodbye") < 5.0 and not is_silence(prompts.path("goodbye"))
