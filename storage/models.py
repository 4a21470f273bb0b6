"""Storage layer: immutable rows returned by the case store."""

from dataclasses import dataclass


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


@dataclass(frozen=True, slots=True)
class Case:
    """A caller's matter; the national ID is exposed here only in masked form."""

    id: int
    tracking_code: str
    status: str
    created_at: float
    call_id: int | None
    national_id_masked: str | None
    id_source: str


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
