"""Fakes of what a call flow is given besides its channel: prompts, the case store, a recogniser.

In memory, named as fakes; the real ones (``media/prompts.py``, ``storage/``,
``media/recognizer.py``) have tests of their own against real files.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ivr.channel import RecordingResult
from ivr.follow_up import CaseStatus
from ivr.live import Transfer
from ivr.survey import SurveyTopic
from softswitch.domain.tracking_code import verhoeff_check_digit
from storage.errors import StoreError
from storage.models import PersonId


class FakePrompts:
    """Prompt names as files; numbers read digit by digit, as the real prompts do for IDs and codes."""

    def path(self, name: str) -> Path:
        return Path(f"/prompts/{name}.wav")

    def number(self, digits: str) -> list[Path]:
        return [self.path(f"digit_{d}") for d in digits]

    def cardinal(self, value: int) -> list[Path]:
        return [self.path(f"cardinal_{value}")]

    def has_own(self, name: str) -> bool:
        return True


class FakeLanguagePrompts(FakePrompts):
    """One language's prompts: files under /prompts/<code>/; ``has_end``: whether its texts have
    language_choice_end (Persian does, English does not)."""

    def __init__(self, code: str, has_end: bool = True) -> None:
        self.code = code
        self.has_end = has_end

    def path(self, name: str) -> Path:
        return Path(f"/prompts/{self.code}/{name}.wav")

    def has_own(self, name: str) -> bool:
        return self.has_end or name != "language_choice_end"


@dataclass
class FakeCase:
    tracking_code: str
    subject: PersonId
    caller: PersonId | None
    complete: bool


@dataclass
class FakeCases:
    """The case sink: keeps what the flow files, hands out tracking codes in order."""

    recordings: list[RecordingResult] = field(default_factory=list)
    cases: list[FakeCase] = field(default_factory=list)

    async def keep_recording(self, result: RecordingResult) -> None:
        self.recordings.append(result)

    async def open_case(self, subject: PersonId, caller: PersonId | None, complete: bool) -> str:
        serial = f"{len(self.cases) + 1:08d}"
        code = serial + verhoeff_check_digit(serial)
        self.cases.append(FakeCase(code, subject, caller, complete))
        return code


@dataclass
class FakeRecognition:
    digits: str


@dataclass
class FakeRecognizer:
    """Hears in every utterance the digits it is told to, in turn."""

    heard: list[str]

    async def recognize_wav(self, path: Path) -> FakeRecognition:
        return FakeRecognition(self.heard.pop(0) if self.heard else "")


@dataclass
class FakeFollowUpCases:
    """Cases a follow-up may ask about: code -> (the IDs allowed to hear it, its status)."""

    known: dict[str, tuple[set[str], CaseStatus]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def status_for(self, tracking_code: str, national_id: str) -> CaseStatus | None:
        self.asked.append(tracking_code)
        entry = self.known.get(tracking_code)
        return entry[1] if entry is not None and national_id in entry[0] else None


@dataclass
class FakeDesk:
    """The agents' side of live mode (softswitch/control/desk.py in service): what it was told, in order."""

    events: list[tuple[str, ...]] = field(default_factory=list)
    conversations: list[RecordingResult | None] = field(default_factory=list)

    async def offer(self, key: str, agent_id: str, queued_s: float) -> None:
        self.events.append(("offer", agent_id))

    def withdraw(self, key: str, agent_id: str) -> None:
        self.events.append(("withdraw", agent_id))

    # What the agent asks of the call once it is connected (an agent's id: hand it over), transfer_after_s in.
    transfers: list[str | Transfer] = field(default_factory=list)
    transfer_after_s: float = 5.0
    # A consultation's end the agent asks for (complete | cancel), consult_for_s after the other answered.
    consult_then: str | None = None
    consult_for_s: float = 3.0
    _transfer: Callable[[Transfer], None] | None = None

    def connected(self, key: str, agent_id: str, channel: object, leg: object,
                  transfer: Callable[[Transfer], None]) -> None:
        self.events.append(("connected", agent_id))
        self._transfer = transfer
        if self.transfers:
            ask = self.transfers.pop(0)
            asyncio.get_running_loop().call_later(self.transfer_after_s, transfer,
                                                  Transfer("hand", ask) if isinstance(ask, str) else ask)

    async def transfer_ringing(self, key: str, from_agent: str, to: str, consult: bool) -> None:
        self.events.append(("transfer_ringing", from_agent, to))

    def consulting(self, key: str, from_agent: str, to: str) -> None:
        self.events.append(("consulting", from_agent, to))
        if self.consult_then is not None and self._transfer is not None:
            asyncio.get_running_loop().call_later(self.consult_for_s, self._transfer,
                                                  Transfer(self.consult_then))  # type: ignore[arg-type]

    async def transfer_done(self, key: str, from_agent: str, to_agent: str, leg: object) -> None:
        self.events.append(("transfer_done", from_agent, to_agent))

    def transfer_failed(self, key: str, from_agent: str, to_agent: str, reason: str) -> None:
        self.events.append(("transfer_failed", from_agent, to_agent, reason))

    async def finished(self, key: str, agent_id: str | None, conversation: RecordingResult | None) -> str | None:
        self.events.append(("finished", str(agent_id)))
        self.conversations.append(conversation)
        return "100000009"


@dataclass
class FakeRatings:
    """The survey's sink: keeps each rating the flow gives it, in order (the store keeps only a call's first)."""

    kept: list[tuple[SurveyTopic, int]] = field(default_factory=list)

    async def keep_rating(self, topic: SurveyTopic, score: int) -> None:
        self.kept.append((topic, score))


@dataclass
class FakeSmsRequests:
    """The outbox as the IVR sees it: the requests it was given, (tracking code, recipient); or a full store."""

    requested: list[tuple[str, str]] = field(default_factory=list)
    failing: bool = False

    async def request_sms(self, tracking_code: str, recipient: str) -> None:
        if self.failing:
            raise StoreError("the database is full")
        self.requested.append((tracking_code, recipient))
