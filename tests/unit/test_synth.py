"""Unit tests for the text-to-speech seam (media.synth) with the real espeak-ng and sox."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from media.synth import (EspeakSynthesizer, SynthesisError, Synthesizer, convert_to_telephone_wav,
                         load_synthesizer)
from media.wavfile import is_silence, read_format

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

ANSWER = "پاسخ شهرداری: لوله آب کوچه شما تا پایان هفته تعویض می‌شود."


def telephone_format(path: Path) -> tuple[int, int, int]:
    fmt = read_format(path)
    return fmt.sample_rate, fmt.channels, fmt.bits_per_sample


def test_espeak_speaks_persian_into_non_silent_8k_mono(tmp_path: Path) -> None:
    out = tmp_path / "answers" / "answer.wav"
    EspeakSynthesizer().synthesize(ANSWER, out)
    assert telephone_format(out) == (8000, 1, 16)
    assert read_format(out).duration_s > 2.0
    assert not is_silence(out)
    assert [p.name for p in out.parent.iterdir()] == ["answer.wav"]  # no scratch files left


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_text_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError, match="no text"):
        EspeakSynthesizer().synthesize(text, tmp_path / "answer.wav")
    assert not (tmp_path / "answer.wav").exists()


def test_a_failing_voice_is_a_clear_error_and_keeps_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "answer.wav"
    out.write_bytes(b"earlier answer")
    with pytest.raises(SynthesisError, match="espeak-ng failed for speech into answer.wav"):
        EspeakSynthesizer(voice="zz").synthesize(ANSWER, out)
    assert out.read_bytes() == b"earlier answer"
    assert [p.name for p in tmp_path.iterdir()] == ["answer.wav"]


def test_missing_espeak_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(SynthesisError, match="espeak-ng is not installed"):
        EspeakSynthesizer().synthesize(ANSWER, tmp_path / "answer.wav")


def test_each_tool_run_is_bounded_in_time(tmp_path: Path) -> None:
    with pytest.raises(SynthesisError, match="timed out"):
        EspeakSynthesizer(timeout_s=0.001).synthesize(ANSWER * 20, tmp_path / "answer.wav")


def test_sox_converts_any_readable_file_and_refuses_garbage_and_overlong_audio(tmp_path: Path) -> None:
    upload = tmp_path / "upload"  # no extension: sox goes by the content
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", "-t", "flac", str(upload), "synth", "1.5", "sine", "440"],
                   check=True, timeout=30)
    out = tmp_path / "answer.wav"
    assert convert_to_telephone_wav(upload, out, max_s=10) == pytest.approx(1.5, abs=0.01)
    assert telephone_format(out) == (8000, 1, 16)
    assert not is_silence(out)

    with pytest.raises(SynthesisError, match="more than 1 s"):
        convert_to_telephone_wav(upload, tmp_path / "long.wav", max_s=1)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(SynthesisError, match="sox failed"):
        convert_to_telephone_wav(garbage, tmp_path / "garbage.wav", max_s=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answer.wav", "garbage", "upload"]


class ToneSynthesizer:
    """A plug-in engine for the test: writes a WAV whatever the text."""

    def synthesize(self, text: str, out: Path) -> None:
        subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", str(out), "synth", "0.2", "sine", "300"],
                       check=True, timeout=30)


class NotASynthesizer:
    pass


def test_load_synthesizer_embedded_default_and_plug_ins(tmp_path: Path) -> None:
    default = load_synthesizer()
    assert isinstance(default, EspeakSynthesizer) and default.voice == "fa"
    assert isinstance(load_synthesizer("espeak-ng:en"), EspeakSynthesizer)
    plugged = load_synthesizer(f"{__name__}:ToneSynthesizer")
    assert isinstance(plugged, ToneSynthesizer) and isinstance(plugged, Synthesizer)
    plugged.synthesize("x", tmp_path / "x.wav")
    assert telephone_format(tmp_path / "x.wav") == (8000, 1, 16)
    for spec, message in [("nowhere_such_module:X", "cannot import"), (f"{__name__}:Missing", "has no class"),
                          (f"{__name__}:NotASynthesizer", "no synthesize"), ("espeak", "must be")]:
        with pytest.raises(ValueError, match=message):
            load_synthesizer(spec)
