"""Storage layer: retention, what is past its keeping period (``plan``) and its deletion, files and rows (``apply``).

The rules, for the periods the operator configured (a period left None keeps
that kind forever):

- a recording older than ``recordings_days``, whose call ended before the same
  cut-off, goes only if it belongs to no case or to a closed one: never a
  recording of a case that is received, received_incomplete, referred or answered;
- a closed case whose last change (its ``updated_at`` and every history row) is
  older than ``closed_cases_days`` goes with its history, its SMS messages, its
  recordings and every answer audio file it has had;
- a CDR older than ``calls_days`` (ended) goes only when no case or recording
  that stays refers to it.

``plan`` only reads; ``apply`` checks each row again just before it deletes it
(the store goes on changing while a run goes), reading the file's path at that
moment: whatever directory the row names is where its file is unlinked.

Files go before their rows. A row is what says a file exists and must go; if
the process dies between the two steps, what is left is a row naming a file
already gone, which the next run (or dry run) finds again and finishes (counted
as "already missing"). The other order would leave a file no row names:
evidence and personal data that no later run could find. For the same reason a
file that cannot be removed keeps its row (and its case and CDR), and is reported.

Everything is read in pages and deleted in bounded batches, so a run on a
large store never holds the connection long enough to delay a call's writes.
All SQL is portable, through the Store's statement methods.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter, defaultdict
from collections.abc import AsyncGenerator, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from softswitch.domain.cases import CLOSED, SECONDS_PER_DAY
from storage.store import Store

PAGE_ROWS = 500
BATCH_ROWS = 100

# Cases, recordings and calls; every condition is on aliases c (cases), r (recordings), k (calls).
_CASE_DUE = ("c.status = ? AND c.updated_at < ?"
             " AND NOT EXISTS (SELECT 1 FROM case_events e WHERE e.case_id = c.id AND e.at >= ?)")
_RECORDING_FROM = "FROM recordings r JOIN calls k ON k.id = r.call_id LEFT JOIN cases c ON c.id = r.case_id"
_RECORDING_DUE = ("r.created_at < ? AND k.ended_at IS NOT NULL AND k.ended_at < ?"
                  " AND (r.case_id IS NULL OR c.status = ?)")
_CALL_DUE = "k.arrived_at < ? AND k.ended_at IS NOT NULL"
_CALL_UNREFERENCED = ("NOT EXISTS (SELECT 1 FROM cases c WHERE c.call_id = k.id)"
                      " AND NOT EXISTS (SELECT 1 FROM recordings r WHERE r.call_id = k.id)"
                      " AND NOT EXISTS (SELECT 1 FROM callbacks b WHERE b.call_id = k.id)")
# A callback not pending, being called or connected: retention may take it with its call or case.
_CALLBACK_OVER = "status IN ('done', 'unreached')"


@dataclass(frozen=True, slots=True)
class RetentionWindows:
    """How many days each kind is kept; None keeps it forever."""

    recordings_days: float | None = None
    calls_days: float | None = None
    closed_cases_days: float | None = None


def _cutoff(now: float, days: float | None) -> float | None:
    return None if days is None else now - days * SECONDS_PER_DAY


@dataclass(frozen=True, slots=True)
class DueRecording:
    id: int
    call_id: int
    tracking_code: str | None  # of its case, if any
    kind: str
    path: str
    created_at: float


@dataclass(frozen=True, slots=True)
class DueCase:
    id: int
    tracking_code: str
    last_change: float
    recordings: tuple[DueRecording, ...]
    answer_files: tuple[str, ...]  # the current answer's audio and every earlier one its history names


@dataclass(frozen=True, slots=True)
class DueCall:
    id: int
    arrived_at: float


@dataclass(frozen=True)
class RetentionPlan:
    """What a run at ``now`` deletes: closed cases (with theirs), recordings on their own, CDRs."""

    now: float
    windows: RetentionWindows
    cases: tuple[DueCase, ...] = ()
    recordings: tuple[DueRecording, ...] = ()  # those not going with a case
    calls: tuple[DueCall, ...] = ()
    complete: bool = True  # False: it stopped at its limit, and more is due

    def all_recordings(self) -> list[DueRecording]:
        return [*(r for case in self.cases for r in case.recordings), *self.recordings]

    @property
    def empty(self) -> bool:
        return not (self.cases or self.recordings or self.calls)


@dataclass(frozen=True, slots=True)
class Failure:
    """A file that could not be removed: it and its row (and whatever refers to that row) stay."""

    kind: str  # recording | answer_audio
    item: str  # the recording's id, or the case's tracking code
    path: str
    reason: str


@dataclass
class RetentionResult:
    """What a run did. ``deleted`` counts rows (recording, case, case_event, sms_message, callback, call) and files
    (answer_audio);
    ``missing`` counts files already gone whose rows went all the same; ``kept`` holds the ids (by kind) of
    what the plan named but the run left: changed since, or held by a file that could not be removed."""

    deleted: Counter[str] = field(default_factory=Counter)
    missing: Counter[str] = field(default_factory=Counter)
    kept: defaultdict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    failures: list[Failure] = field(default_factory=list)

    def add(self, other: RetentionResult) -> None:
        """Take in a later round of the same run, which meets again what this one kept."""
        self.deleted.update(other.deleted)
        self.missing.update(other.missing)
        for kind, ids in other.kept.items():
            self.kept[kind] |= ids
        known = set(self.failures)
        self.failures += [failure for failure in other.failures if failure not in known]


async def _pages(store: Store, select: str, where: str, params: Sequence[Any], id_column: str
                 ) -> AsyncGenerator[list[Any], None]:
    """The rows of ``select ... WHERE where`` in pages by increasing id: each statement stays short.
    Bounded: every page starts after the last id of the one before, and a short page is the last."""
    last = 0
    while True:
        rows = await store._fetchall(f"{select} WHERE {where} AND {id_column} > ? ORDER BY {id_column} LIMIT ?",
                                     (*params, last, PAGE_ROWS))
        if rows:
            yield rows
        if len(rows) < PAGE_ROWS:
            return
        last = rows[-1]["id"]


def _batches(items: Sequence[Any], size: int = BATCH_ROWS) -> Iterable[Sequence[Any]]:
    return (items[start:start + size] for start in range(0, len(items), size))


def _marks(ids: Sequence[Any]) -> str:
    return ", ".join("?" * len(ids))


_RECORDING_COLUMNS = "r.id AS id, r.call_id AS call_id, c.tracking_code AS tracking_code, r.kind AS kind," \
                     " r.path AS path, r.created_at AS created_at, r.case_id AS case_id"


def _due_recording(row: Any) -> DueRecording:
    return DueRecording(row["id"], row["call_id"], row["tracking_code"], row["kind"], row["path"], row["created_at"])


async def _case_files(store: Store, case_ids: Sequence[int]) -> tuple[dict[int, list[DueRecording]],
                                                                          dict[int, list[str]]]:
    """The recordings (current rows) and answer audio files of these cases, by case id."""
    recordings: dict[int, list[DueRecording]] = {case_id: [] for case_id in case_ids}
    answers: dict[int, list[str]] = {case_id: [] for case_id in case_ids}
    if not case_ids:
        return recordings, answers
    marks = _marks(case_ids)
    for row in await store._fetchall(f"SELECT {_RECORDING_COLUMNS} {_RECORDING_FROM} WHERE r.case_id IN ({marks})"
                                     " ORDER BY r.id", case_ids):
        recordings[row["case_id"]].append(_due_recording(row))
    # An answer replaced by a later one keeps its file: the history's "answered" rows name each one.
    for row in await store._fetchall(f"SELECT case_id, detail FROM case_events WHERE kind = ? AND case_id IN ({marks})"
                                     " ORDER BY id", ("answered", *case_ids)):
        audio = json.loads(row["detail"]).get("audio")
        if audio and audio not in answers[row["case_id"]]:
            answers[row["case_id"]].append(audio)
    for row in await store._fetchall(f"SELECT id, answer_audio FROM cases WHERE id IN ({marks})"
                                     " AND answer_audio IS NOT NULL", case_ids):
        if row["answer_audio"] not in answers[row["id"]]:
            answers[row["id"]].append(row["answer_audio"])
    return recordings, answers


async def plan(store: Store, windows: RetentionWindows, now: float, *, limit: int | None = None) -> RetentionPlan:
    """What a run at ``now`` deletes under ``windows``; reads only.

    ``limit`` bounds the plan's memory on a large store: at most that many closed cases, recordings on
    their own and CDRs, the oldest ids first. A plan that reached it is not ``complete``: once it is
    applied, the next plan names the following ones.
    """
    case_cutoff = _cutoff(now, windows.closed_cases_days)
    recording_cutoff = _cutoff(now, windows.recordings_days)
    call_cutoff = _cutoff(now, windows.calls_days)
    cases: list[DueCase] = []
    alone: list[DueRecording] = []
    calls: list[DueCall] = []
    if case_cutoff is not None:
        async with aclosing(_pages(
                store, "SELECT c.id AS id, c.tracking_code AS tracking_code, c.updated_at AS updated_at,"
                " (SELECT MAX(e.at) FROM case_events e WHERE e.case_id = c.id) AS last_event FROM cases c",
                _CASE_DUE, (CLOSED, case_cutoff, case_cutoff), "c.id")) as pages:
            async for page in pages:
                page = page if limit is None else page[:limit - len(cases)]
                recordings, answers = await _case_files(store, [row["id"] for row in page])
                cases += [DueCase(row["id"], row["tracking_code"], max(row["updated_at"], row["last_event"] or 0.0),
                                  tuple(recordings[row["id"]]), tuple(answers[row["id"]])) for row in page]
                if len(cases) == limit:
                    break
    with_cases = {r.id for case in cases for r in case.recordings}
    if recording_cutoff is not None:
        async with aclosing(_pages(store, f"SELECT {_RECORDING_COLUMNS} {_RECORDING_FROM}", _RECORDING_DUE,
                                   (recording_cutoff, recording_cutoff, CLOSED), "r.id")) as pages:
            async for page in pages:
                alone += [_due_recording(row) for row in page if row["id"] not in with_cases]
                if limit is not None and len(alone) >= limit:
                    del alone[limit:]
                    break
    if call_cutoff is not None:
        going_cases = {case.id for case in cases}
        going_recordings = with_cases | {r.id for r in alone}
        async with aclosing(_pages(store, "SELECT k.id AS id, k.arrived_at AS arrived_at FROM calls k", _CALL_DUE,
                                   (call_cutoff,), "k.id")) as pages:
            async for page in pages:
                ids = [row["id"] for row in page]
                held = {row["call_id"] for row in await store._fetchall(
                    f"SELECT call_id, id FROM cases WHERE call_id IN ({_marks(ids)})", ids)
                    if row["id"] not in going_cases}
                held |= {row["call_id"] for row in await store._fetchall(
                    f"SELECT call_id, id FROM recordings WHERE call_id IN ({_marks(ids)})", ids)
                    if row["id"] not in going_recordings}
                # A callback it booked holds it while the callback is not over or has a case that stays.
                held |= {row["call_id"] for row in await store._fetchall(
                    f"SELECT call_id, case_id, status FROM callbacks WHERE call_id IN ({_marks(ids)})", ids)
                    if row["status"] not in ("done", "unreached")
                    or (row["case_id"] is not None and row["case_id"] not in going_cases)}
                calls += [DueCall(row["id"], row["arrived_at"]) for row in page if row["id"] not in held]
                if limit is not None and len(calls) >= limit:
                    del calls[limit:]
                    break
    complete = limit is None or max(len(cases), len(alone), len(calls)) < limit
    return RetentionPlan(now, windows, tuple(cases), tuple(alone), tuple(calls), complete)


def _unlink(paths: Sequence[str]) -> list[str | None]:
    """Remove each file: None when it is gone (removed now or already missing: ``"missing"``), else why not.

    A relative path is refused: it would be taken from this process's working directory, which may not be
    the service's."""
    outcomes: list[str | None] = []
    for path in paths:
        if not os.path.isabs(path):
            outcomes.append("not an absolute path")
            continue
        try:
            os.unlink(path)
            outcomes.append(None)
        except FileNotFoundError:
            outcomes.append("missing")
        except OSError as exc:
            outcomes.append(exc.strerror or str(exc))
    return outcomes


async def _remove_files(paths: Sequence[str]) -> dict[str, str | None]:
    """Unlink off the event loop (a slow disk must not stall calls); path -> None, "missing" or the reason."""
    outcomes = await asyncio.to_thread(_unlink, paths)
    return dict(zip(paths, outcomes))


def _tally(result: RetentionResult, kind: str, item: str, path: str, outcome: str | None) -> bool:
    """Count one file's outcome; whether it is gone (so its row may go)."""
    if outcome is None:
        return True
    if outcome == "missing":
        result.missing[kind] += 1
        return True
    result.failures.append(Failure(kind, item, path, outcome))
    return False


async def _delete_recordings(store: Store, recordings: Sequence[DueRecording], result: RetentionResult) -> set[int]:
    """Files, then the rows of those whose file is gone; the ids deleted."""
    outcomes = await _remove_files([r.path for r in recordings])
    gone = [r.id for r in recordings if _tally(result, "recording", str(r.id), r.path, outcomes[r.path])]
    if gone:
        result.deleted["recording"] += await store._update(f"DELETE FROM recordings WHERE id IN ({_marks(gone)})",
                                                           gone)
    return set(gone)


async def _apply_cases(store: Store, due: RetentionPlan, result: RetentionResult) -> None:
    case_cutoff = _cutoff(due.now, due.windows.closed_cases_days)
    for batch in _batches(due.cases):
        ids = [case.id for case in batch]
        still = [row["id"] for row in await store._fetchall(
            f"SELECT c.id AS id FROM cases c WHERE {_CASE_DUE} AND c.id IN ({_marks(ids)})",
            (CLOSED, case_cutoff, case_cutoff, *ids))]
        result.kept["case"] |= set(ids) - set(still)
        # Read again: a recording's path may have changed since the plan (e.g. copied to shared storage).
        recordings, answers = await _case_files(store, still)
        removed = await _delete_recordings(store, [r for rs in recordings.values() for r in rs], result)
        files = await _remove_files([path for paths in answers.values() for path in paths])
        codes = {case.id: case.tracking_code for case in batch}
        whole = []
        for case_id in still:
            result.deleted["answer_audio"] += sum(files[path] is None for path in answers[case_id])
            gone = [_tally(result, "answer_audio", codes[case_id], path, files[path]) for path in answers[case_id]]
            if not all(gone) or any(r.id not in removed for r in recordings[case_id]):
                result.kept["case"].add(case_id)
            else:
                whole.append(case_id)
        if whole:
            # History first (it refers to the case). Should the process stop between the two statements, the
            # closed case is left without its history, still past its time: the next run deletes it.
            result.deleted["case_event"] += await store._update(
                f"DELETE FROM case_events WHERE case_id IN ({_marks(whole)})", whole)
            # Its SMS messages hold the caller's number: they go with the case (counted only when there are any).
            if sms := await store._update(f"DELETE FROM sms_outbox WHERE case_id IN ({_marks(whole)})", whole):
                result.deleted["sms_message"] += sms
            # So do the callbacks given up on that became these cases (a number, the IDs sealed).
            if callbacks := await store._update(
                    f"DELETE FROM callbacks WHERE case_id IN ({_marks(whole)}) AND {_CALLBACK_OVER}", whole):
                result.deleted["callback"] += callbacks
            result.deleted["case"] += await store._update(
                f"DELETE FROM cases WHERE id IN ({_marks(whole)}) AND status = ?", (*whole, CLOSED))


async def _apply_recordings(store: Store, due: RetentionPlan, result: RetentionResult) -> None:
    cutoff = _cutoff(due.now, due.windows.recordings_days)
    for batch in _batches(due.recordings):
        ids = [recording.id for recording in batch]
        current = [_due_recording(row) for row in await store._fetchall(
            f"SELECT {_RECORDING_COLUMNS} {_RECORDING_FROM} WHERE {_RECORDING_DUE} AND r.id IN ({_marks(ids)})",
            (cutoff, cutoff, CLOSED, *ids))]
        result.kept["recording"] |= set(ids) - {r.id for r in current}
        await _delete_recordings(store, current, result)


async def _apply_calls(store: Store, due: RetentionPlan, result: RetentionResult) -> None:
    cutoff = _cutoff(due.now, due.windows.calls_days)
    for batch in _batches(due.calls):
        ids = [call.id for call in batch]
        # The callbacks these calls booked, once over and with no case of their own, go with their CDR.
        if callbacks := await store._update(
                f"DELETE FROM callbacks WHERE call_id IN ({_marks(ids)}) AND case_id IS NULL AND {_CALLBACK_OVER}"
                " AND call_id IN (SELECT k.id FROM calls k WHERE " + _CALL_DUE + ")", (*ids, cutoff)):
            result.deleted["callback"] += callbacks
        # Checked on what is there now: a recording whose file could not be removed keeps its CDR.
        await store._update(
            f"DELETE FROM calls AS k WHERE k.id IN ({_marks(ids)}) AND {_CALL_DUE} AND {_CALL_UNREFERENCED}",
            (*ids, cutoff))
        left = {row["id"] for row in await store._fetchall(f"SELECT id FROM calls WHERE id IN ({_marks(ids)})", ids)}
        result.deleted["call"] += len(ids) - len(left)
        result.kept["call"] |= left


async def apply(store: Store, due: RetentionPlan) -> RetentionResult:
    """Delete what the plan names and is still due: closed cases with theirs, then recordings, then CDRs."""
    result = RetentionResult()
    await _apply_cases(store, due, result)
    await _apply_recordings(store, due, result)
    await _apply_calls(store, due, result)
    return result
