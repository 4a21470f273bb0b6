"""Media layer: speech endpointing of real-time audio frames with webrtcvad."""

import enum

import webrtcvad

_VAD_SAMPLE_RATES = (8000, 16000, 32000, 48000)
_VAD_FRAME_MS = (10, 20, 30)
_SAMPLE_BYTES = 2


class Endpointer:
    """Finds where a caller starts and stops talking in a stream of 16-bit mono frames.

    Speech starts after min_speech_s of consecutive voiced audio, so clicks and
    short bursts of line noise do not count, and ends once silence_s of
    consecutive unvoiced audio follows it. Time is counted in samples, not
    float seconds, so long calls do not drift. After the end, frames are still
    checked for size but no longer classified.
    """

    class State(enum.Enum):
        WAITING = "waiting"
        SPEECH = "speech"
        DONE = "done"

    class Event(enum.Enum):
        SPEECH_START = "speech_start"
        SPEECH_END = "speech_end"

    def __init__(
        self,
        silence_s: float,
        aggressiveness: int = 2,
        sample_rate: int = 8000,
        min_speech_s: float = 0.2,
    ) -> None:
        if not silence_s > 0:
            raise ValueError(f"silence_s must be positive, got {silence_s}")
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness}")
        if sample_rate not in _VAD_SAMPLE_RATES:
            raise ValueError(
                f"sample_rate must be one of {', '.join(map(str, _VAD_SAMPLE_RATES))}, "
                f"got {sample_rate}"
            )
        if not min_speech_s >= 0:
            raise ValueError(f"min_speech_s must be zero or positive, got {min_speech_s}")
        self._vad = webrtcvad.Vad(aggressiveness)
        self._sample_rate = sample_rate
        self._samples_by_frame_bytes = {
            sample_rate * ms // 1000 * _SAMPLE_BYTES: sample_rate * ms // 1000
            for ms in _VAD_FRAME_MS
        }
        self._silence_samples = round(silence_s * sample_rate)
        self._min_speech_samples = round(min_speech_s * sample_rate)
        self._state = Endpointer.State.WAITING
        self._voiced_run = 0
        self._unvoiced_run = 0
        self._voiced_total = 0

    @property
    def state(self) -> "Endpointer.State":
        return self._state

    @property
    def speech_s(self) -> float:
        """Seconds of voiced frames seen before the end of speech, bursts included."""
        return self._voiced_total / self._sample_rate

    @property
    def heard_speech(self) -> bool:
        """True once speech has started (and stays true after it ends)."""
        return self._state is not Endpointer.State.WAITING

    def feed(self, frame: bytes) -> "Endpointer.Event | None":
        """Classify one 10, 20 or 30 ms frame; return the event it completes, if any."""
        samples = self._samples_by_frame_bytes.get(len(frame))
        if samples is None:
            raise ValueError(
                f"frame must be 10, 20 or 30 ms of 16-bit mono audio at {self._sample_rate} Hz "
                f"({', '.join(map(str, self._samples_by_frame_bytes))} bytes), "
                f"got {len(frame)} bytes"
            )
        if self._state is Endpointer.State.DONE:
            return None
        if self._vad.is_speech(frame, self._sample_rate):
            self._voiced_total += samples
            self._voiced_run += samples
            self._unvoiced_run = 0
            if (
                self._state is Endpointer.State.WAITING
                and self._voiced_run >= self._min_speech_samples
            ):
                self._state = Endpointer.State.SPEECH
                return Endpointer.Event.SPEECH_START
            return None
        self._voiced_run = 0
        self._unvoiced_run += samples
        if (
            self._state is Endpointer.State.SPEECH
            and self._unvoiced_run >= self._silence_samples
        ):
            self._state = Endpointer.State.DONE
            return Endpointer.Event.SPEECH_END
        return None
