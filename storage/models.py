"""Storage layer: immutable rows returned by the case store."""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call detail record; times are Unix epoch seconds."""

    id: int
    sip_call_id: str
    from_uri: str
    to_uri: str
    source: str
    worker_id: int | None
    arrived_at: float
    answered_at: float | None
    ended_at: float | None
    disposition: str | None
    ivr_path: tuple[str, ...]
    agent_id: str | None = None  # the agent who talked with the caller
    host: str | None = None  # the host whose workers carried it (None: from before several hosts)
    message_started_at: float | None = None  # when its message's tape started, if it got that far


@dataclass(frozen=True, slots=True)
class Case:
    """A caller's matter; the national ID is exposed here only in masked form."""

    id: int
    tracking_code: str
    status: str
    created_at: float
    call_id: int | None
    national_id_masked: str | None  # the subject's: the case is filed under it
    id_source: str
    id_status: str = "none"  # verified | unverified | to_transcribe | none
    subject_is_caller: bool = True
    caller_national_id_masked: str | None = None  # only when calling for someone else
    caller_id_source: str | None = None
    caller_id_status: str | None = None
    agency: str | None = None  # agency id, once filed
    category: str | None = None
    summary: str | None = None
    channel: str = "phone"  # phone | sms | letter | web
    filed_by: str | None = None  # who filed it: an agent, or the API client that submitted it
    answer_text: str | None = None  # the agency's written answer
    answer_audio: str | None = None  # path of an 8 kHz WAV: a recorded answer or the text synthesized
    answer_audio_sha256: str | None = None
    answered_at: float | None = None
    answered_by: str | None = None  # actor, e.g. "agency:health/u1"

    @property
    def is_open(self) -> bool:
        return self.status != "closed"


@dataclass(frozen=True, slots=True)
class CaseEvent:
    """One entry of a case's history: who did what, when."""

    id: int
    case_id: int
    at: float
    actor: str  # "ivr", "agent:<id>", "agency:<agency>/<user>", "api:<token name>", "system"
    # created | filed | contact | referred | status | answered | duplicate_override | tracking_code_read
    kind: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Recording:
    """An audio file captured during a call, optionally attached to a case."""

    id: int
    call_id: int
    case_id: int | None
    kind: str
    path: str
    duration_s: float
    sha256: str
    complete: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class PersonId:
    """A national ID as the IVR captured it; personal data: never log ``national_id``."""

    national_id: str | None
    source: str  # keypad | speech | none
    status: str  # verified | unverified | to_transcribe | none


@dataclass(frozen=True, slots=True)
class IntakeResult:
    """What became of a request: a new case, or the open case it duplicates (``duplicate``)."""

    case: Case
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Rating:
    """A caller's rating of the service (1-5) in the post-call survey; ``day`` is the hotline's local date."""

    id: int
    call_id: int | None  # None once retention deleted the CDR (the rating stays for the reports)
    case_id: int | None
    kind: str  # agent | follow_up
    agent_id: str | None
    agency: str | None
    score: int
    at: float
    day: str  # YYYY-MM-DD


@dataclass(frozen=True, slots=True)
class HostRecord:
    """A host sharing the store; times are the database's clock (Unix epoch seconds)."""

    name: str
    started_at: float
    last_seen: float
    recordings_dir: str  # on its own disk
    shared_folder: str | None  # its folder in the shared recordings directory, if it copies there
    taken_over_by: str | None  # the survivor that closed its calls; None while it counts as alive
    taken_over_at: float | None
    left_at: float | None  # when it stopped cleanly (its calls closed); None while it runs or was taken over
    silent_s: float  # since its last heartbeat, when read
    console_url: str | None = None  # its web server's base URL, for the other hosts' consoles to relay to


@dataclass(frozen=True, slots=True)
class TakeOver:
    """What a survivor did with a dead host's calls, in the one transaction that claimed it."""

    host: HostRecord  # as it was when claimed
    calls_closed: tuple[int, ...]  # CDR ids, now host_lost
    cases_opened: tuple[tuple[int, str], ...]  # (CDR id, tracking code) of the cut messages' cases
