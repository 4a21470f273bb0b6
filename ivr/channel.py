"""IVR layer: what a call flow may ask of a call, whichever media engine serves it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence


# Keys that may cut a prompt short (``CallChannel.play``'s ``interrupt``).
ANY_KEY = "0123456789*#"


class CallEnded(Exception):
    """The caller hung up, or the media serving the call was lost."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RecordingResult:
    kind: str
    path: Path
    duration_s: float
    sha256: str
    # silence | digit | max | no_input | stopped | hangup | lost | error
    reason: str
    speech_s: float
    complete: bool

    @property
    def heard_speech(self) -> bool:
        return self.speech_s > 0


class CallChannel(Protocol):
    """One answered call, as the IVR sees it.

    ``record`` returns even when the caller hangs up during it (the partial
    recording is evidence); every other step raises ``CallEnded`` once the call
    is gone.
    """

    @property
    def ended(self) -> bool: ...

    async def play(self, files: Sequence[Path], *, interrupt: str = "") -> None:
        """Play the files in turn; a key in ``interrupt`` (pressed now or ahead) cuts them short.

        The key stays in the channel's buffer for the step to read; keys not in
        ``interrupt`` stay too, and do not stop the prompt.
        """
        ...

    async def record(self, kind: str, *, max_s: float, silence_s: float, no_input_s: float,
                     stop_digits: str = "#") -> RecordingResult: ...

    async def stop_record(self) -> None: ...

    async def next_digit(self, timeout_s: float | None = None) -> str | None: ...

    def clear_digits(self, only: str | None = None) -> None:
        """Drop the keys pressed ahead (only those in ``only`` when given, keeping the rest in order)."""
        ...

    async def hangup(self) -> None: ...


class Leg(Protocol):
    """An outgoing call leg (to an agent's softphone, or a number) placed from the caller's media worker."""

    @property
    def ended(self) -> bool: ...

    @property
    def end_status(self) -> int | None: ...

    async def wait_answered(self, timeout_s: float) -> bool:
        """True once answered; False on timeout or when the leg failed (see ``end_status``)."""
        ...

    async def wait_ended(self) -> None: ...

    async def hangup(self) -> None: ...

    def bridge(self, leg: Leg) -> None:
        """Two-way audio with another leg of the same caller (an agent consulting a colleague), which
        leaves the caller's bridge; on the caller's conversation tape too."""

    async def wait_referred(self) -> tuple[str, Leg]:
        """The far end (an agent's phone) asked, with a REFER the worker accepted, for the call to go to a
        user at the front; that user, and the new leg the worker is dialling to it."""
        ...


class LiveChannel(CallChannel, Protocol):
    """A caller's call that can also reach an agent: dial, bridge, and record both parties."""

    def dial(self, uri: str) -> Leg: ...

    def bridge(self, leg: Leg) -> None: ...

    def monitor(self, supervisor: Leg, agent: Leg, mode: str) -> None:
        """Join a supervisor's answered leg to this call's bridge with ``agent``: listen, whisper or barge."""
        ...

    async def stop_play(self) -> None: ...

    async def wait_ended(self) -> None: ...

    async def record_conversation(self, leg: Leg, max_s: float) -> RecordingResult:
        """Both parties on one tape until ``stop_record``, the caller's hang-up or ``max_s``."""
        ...
