"""Unit tests for the text-to-speech seam (media.synth) with the real espeak-ng and sox."""

from __future__ import annotations

import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from media import synth
from media.synth import (AudioProbe, AudioTooLong, AudioUnsupported, EspeakSynthesizer, SynthesisError, Synthesizer,
                         convert_to_telephone_wav, load_synthesizer, output_cap_bytes, probe_audio)
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


# -- uploads that would expand: the header is probed before sox decodes anything -----------

def crafted_wav(path: Path, *, rate: int, samples: int, stated_bytes: int | None = None) -> Path:
    """A mono 16-bit PCM WAV whose header may state more data than it holds."""
    data = b"\x00\x10" * samples
    stated = len(data) if stated_bytes is None else stated_bytes
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", min(36 + stated, 0xFFFFFFFF), b"WAVE", b"fmt ", 16, 1, 1,
                         rate, rate * 2, 2, 16, b"data", stated)
    path.write_bytes(header + data)
    return path


@pytest.fixture
def watched_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temp directory for this test (and any child), to show nothing lands there."""
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return system_tmp


def sox_conversions(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record every sox conversion run (the probes use subprocess.run, the conversion Popen)."""
    runs: list[list[str]] = []
    real = subprocess.Popen

    def popen(args: list[str], *rest: object, **kwargs: object) -> subprocess.Popen[bytes]:
        if "--i" not in args:
            runs.append(list(args))
        return real(args, *rest, **kwargs)  # type: ignore[call-overload, no-any-return]
    monkeypatch.setattr(subprocess, "Popen", popen)
    return runs


@pytest.mark.parametrize("name, rate, samples, stated, error, message", [
    # 40 kB at 1 Hz is 20,000 s: at 8 kHz it would be 320 MB (and as much again for -G's buffer).
    ("one-hertz", 1, 20_000, None, AudioUnsupported, "sampled at 1 Hz"),
    ("too-fast", 96_000, 2_000, None, AudioUnsupported, "96000 Hz"),
    # 2 kB that claims 4 GB of 8 kHz audio: sox would believe the header.
    ("huge-header", 8000, 1000, 0xFFFFFFF0, AudioTooLong, "more than 600 s"),
    ("placeholder-size", 8000, 1000, 0xFFFFFFFF, AudioTooLong, "more than 600 s"),
    ("no-length", 8000, 1000, 0, SynthesisError, "states no length"),
])
def test_expanding_uploads_are_refused_by_their_header_before_any_conversion(
        tmp_path: Path, watched_tmp: Path, monkeypatch: pytest.MonkeyPatch,
        name: str, rate: int, samples: int, stated: int | None, error: type[SynthesisError], message: str) -> None:
    upload = crafted_wav(tmp_path / name, rate=rate, samples=samples, stated_bytes=stated)
    answers = tmp_path / "answers"
    answers.mkdir()
    runs = sox_conversions(monkeypatch)
    with pytest.raises(error, match=message):
        convert_to_telephone_wav(upload, answers / "answer.wav", max_s=600)
    assert runs == []  # refused on the header alone
    assert list(answers.iterdir()) == [] and list(watched_tmp.iterdir()) == []


def test_more_than_two_channels_and_other_types_are_refused(tmp_path: Path) -> None:
    surround = tmp_path / "surround"
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "6", "-t", "wav", str(surround), "synth", "0.5", "sine", "440"],
                   check=True, timeout=30)
    with pytest.raises(AudioUnsupported, match="6 channels"):
        convert_to_telephone_wav(surround, tmp_path / "a.wav", max_s=10)
    voc = tmp_path / "voc"
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-t", "voc", str(voc), "synth", "0.5", "sine", "440"],
                   check=True, timeout=30)
    with pytest.raises(SynthesisError, match="not one of flac, vorbis, wav"):
        convert_to_telephone_wav(voc, tmp_path / "b.wav", max_s=10)
    stereo = tmp_path / "stereo"
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", "-t", "flac", str(stereo), "synth", "0.5", "sine", "440"],
                   check=True, timeout=30)
    probe = probe_audio(stereo, max_s=10)
    assert (probe.file_type, probe.sample_rate, probe.channels) == ("flac", 44100.0, 2)
    assert probe.duration_s == pytest.approx(0.5)


def test_conversion_keeps_every_file_beside_the_answer_and_is_cut_at_the_limit(
        tmp_path: Path, watched_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upload = tmp_path / "upload"
    subprocess.run(["sox", "-n", "-r", "48000", "-c", "2", "-t", "wav", str(upload), "synth", "3", "sine", "440"],
                   check=True, timeout=30)
    answers = tmp_path / "answers"
    runs = sox_conversions(monkeypatch)
    out = answers / "answer.wav"
    assert convert_to_telephone_wav(upload, out, max_s=5) == pytest.approx(3.0, abs=0.01)
    [command] = runs
    temp = command[command.index("--temp") + 1]
    assert Path(temp).parent == answers  # -G's buffer on the data disk, in the answer's scratch folder
    assert command[-3:] == ["trim", "0", "5"]
    assert out.stat().st_size <= output_cap_bytes(5)
    assert [p.name for p in answers.iterdir()] == ["answer.wav"] and list(watched_tmp.iterdir()) == []


def test_a_conversion_that_outgrows_its_cap_is_killed_and_leaves_nothing(
        tmp_path: Path, watched_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Say the probe was fooled (a header stating 1 s over a 30 s body): the cap still holds.
    upload = tmp_path / "upload"
    subprocess.run(["sox", "-n", "-r", "48000", "-c", "2", "-t", "wav", str(upload), "synth", "30", "sine", "440"],
                   check=True, timeout=30)
    monkeypatch.setattr(synth, "probe_audio", lambda *args, **kwargs: AudioProbe("wav", 48000.0, 2, 1.0))
    monkeypatch.setattr(synth, "output_cap_bytes", lambda max_s: 20_000)
    answers = tmp_path / "answers"
    with pytest.raises(SynthesisError, match="stopped converting .* (passed|reached)"):
        convert_to_telephone_wav(upload, answers / "answer.wav", max_s=600)
    assert list(answers.iterdir()) == [] and list(watched_tmp.iterdir()) == []


def test_the_watch_on_open_files_catches_the_hidden_buffer_without_the_kernel_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # -G's buffer is unlinked as soon as sox makes it; only /proc/<pid>/fd shows it growing.
    upload = tmp_path / "upload"
    subprocess.run(["sox", "-n", "-r", "48000", "-c", "2", "-t", "flac", str(upload), "synth", "120", "sine", "440"],
                   check=True, timeout=30)
    monkeypatch.setattr(synth.resource, "prlimit", lambda *args: None)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    made = scratch / "converted.wav"
    with pytest.raises(SynthesisError, match="temp file passed 200000 bytes"):
        synth._run_capped(["sox", "--temp", str(scratch), "-G", str(upload), *synth.SOX_OUTPUT_FORMAT, str(made)],
                          "audio upload", scratch, 100_000, 30)
    assert not made.exists() or made.stat().st_size <= 200_000
