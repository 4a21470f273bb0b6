"""Storage layer: the case store for call records, cases and recordings, on SQLite or PostgreSQL."""

from __future__ import annotations

import functools
import hmac
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from softswitch.domain.cases import CASE_STATUSES, ID_STATUSES, OPEN_STATUSES, arrival_status
from softswitch.domain.tracking_code import new_tracking_code
from storage.acd_changes import AcdChanges
from storage.acd_days import AcdDayEvents
from storage.callbacks import Callbacks
from storage.counters import WindowCounters
from storage.crypto import IdProtector
from storage.engines import Engine, Executor, Row, open_engine
from storage.errors import Conflict, ForeignKeyViolation, NotFound, StoreError, UniqueViolation
from storage.migrations import migrate
from storage.models import (CallRecord, Case, CaseEvent, HostRecord, IntakeResult, PersonId, Rating, Recording,
                            TakeOver)
from storage.outbox import SmsOutbox
from storage.web_sessions import WebSessions

ID_SOURCES = frozenset({"keypad", "speech", "none"})
# With 9 * 10^7 possible codes a collision is rare; several in a row means
# something other than bad luck (for example a broken random source), so stop.
_TRACKING_CODE_ATTEMPTS = 8

_CALL_COLUMNS = (
    "id, sip_call_id, from_uri, to_uri, source, worker_id,"
    " arrived_at, answered_at, ended_at, disposition, ivr_path, agent_id, host, message_started_at"
)
_HOST_COLUMNS = ("name, started_at, last_seen, recordings_dir, shared_folder, taken_over_by, taken_over_at,"
                 " left_at, console_url")
_CASE_COLUMNS = (
    "id, tracking_code, status, created_at, call_id, national_id_masked, id_source, id_status,"
    " subject_is_caller, caller_id_masked, caller_id_source, caller_id_status,"
    " agency, category, summary, channel, filed_by,"
    " answer_text, answer_audio, answer_audio_sha256, answered_at, answered_by"
)
_RECORDING_COLUMNS = "id, call_id, case_id, kind, path, duration_s, sha256, complete, created_at"
_RATING_COLUMNS = "id, call_id, case_id, kind, agent_id, agency, score, at, day"
RATING_KINDS = ("agent", "follow_up")
# What the survey's results are grouped by (``Store.rating_counts``), and the column of each.
RATING_GROUPS = {"agent": "agent_id", "agency": "agency", "day": "day"}


def _call_from_row(row: Row) -> CallRecord:
    return CallRecord(
        id=row["id"],
        sip_call_id=row["sip_call_id"],
        from_uri=row["from_uri"],
        to_uri=row["to_uri"],
        source=row["source"],
        worker_id=row["worker_id"],
        arrived_at=row["arrived_at"],
        answered_at=row["answered_at"],
        ended_at=row["ended_at"],
        disposition=row["disposition"],
        ivr_path=tuple(json.loads(row["ivr_path"])),
        agent_id=row["agent_id"],
        host=row["host"],
        message_started_at=row["message_started_at"],
    )


def _host_from_row(row: Row) -> HostRecord:
    return HostRecord(name=row["name"], started_at=row["started_at"], last_seen=row["last_seen"],
                      recordings_dir=row["recordings_dir"], shared_folder=row["shared_folder"],
                      taken_over_by=row["taken_over_by"], taken_over_at=row["taken_over_at"],
                      left_at=row["left_at"], silent_s=max(0.0, row["now"] - row["last_seen"]),
                      console_url=row["console_url"])


def _case_from_row(row: Row) -> Case:
    return Case(
        id=row["id"],
        tracking_code=row["tracking_code"],
        status=row["status"],
        created_at=row["created_at"],
        call_id=row["call_id"],
        national_id_masked=row["national_id_masked"],
        id_source=row["id_source"],
        id_status=row["id_status"],
        subject_is_caller=bool(row["subject_is_caller"]),
        caller_national_id_masked=row["caller_id_masked"],
        caller_id_source=row["caller_id_source"],
        caller_id_status=row["caller_id_status"],
        agency=row["agency"],
        category=row["category"],
        summary=row["summary"],
        channel=row["channel"],
        filed_by=row["filed_by"],
        answer_text=row["answer_text"],
        answer_audio=row["answer_audio"],
        answer_audio_sha256=row["answer_audio_sha256"],
        answered_at=row["answered_at"],
        answered_by=row["answered_by"],
    )


def _check_status(status: str) -> None:
    if status not in CASE_STATUSES:
        raise ValueError(f"case status must be one of {', '.join(CASE_STATUSES)}, not {status!r}")


def _where(conditions: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """A WHERE clause joining the conditions ("column op ?" -> value) whose value is not None."""
    used = {clause: value for clause, value in conditions.items() if value is not None}
    return (" WHERE " + " AND ".join(used) if used else ""), list(used.values())


def _recording_from_row(row: Row) -> Recording:
    return Recording(
        id=row["id"],
        call_id=row["call_id"],
        case_id=row["case_id"],
        kind=row["kind"],
        path=row["path"],
        duration_s=row["duration_s"],
        sha256=row["sha256"],
        complete=bool(row["complete"]),
        created_at=row["created_at"],
    )


_T = TypeVar("_T")


# Set while an observed operation runs in this task: the operations it calls are its own time.
_observing: ContextVar[bool] = ContextVar("store_observing", default=False)


def _observed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        observe = self.observe
        if observe is None or _observing.get():
            return await method(self, *args, **kwargs)
        token = _observing.set(True)
        started = time.perf_counter()
        try:
            return await method(self, *args, **kwargs)
        finally:
            observe(name, time.perf_counter() - started)
            _observing.reset(token)
    return timed


def _timed(cls: type[_T]) -> type[_T]:
    """Every public coroutine method of the class tells ``self.observe`` (when set) its name and how long
    it took, failures included: the store's latency, by operation, for the metrics."""
    for name, method in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(method):
            setattr(cls, name, _observed(name, method))
    return cls


@_timed
class Store:
    """Async access to one store database; obtain it from :func:`open_store`.

    Outside a transaction every write is committed before the method returns.
    SQL has ``?`` placeholders on either engine.
    """

    def __init__(self, db: Executor, protector: IdProtector) -> None:
        self._db = db
        self._protector = protector
        # (operation, seconds) of each public call, when set (the control process's metrics).
        self.observe: Callable[[str, float], None] | None = None
        # State the hosts share and a restart keeps, in tables of their own.
        self.sessions = WebSessions(db)
        self.counters = WindowCounters(db)
        self.acd_days = AcdDayEvents(db)

    @property
    def acd_changes(self) -> AcdChanges:
        """The replicated ACD's order of changes (needs the store itself, not a transaction of it)."""
        assert isinstance(self._db, Engine)
        return AcdChanges(self._db)

    @property
    def callbacks(self) -> Callbacks:
        """The callbacks callers booked, on this store's connection."""
        return Callbacks(self._db, self._protector)

    @property
    def sms(self) -> SmsOutbox:
        """The SMS outbox, on this store's connection (inside a transaction: in that transaction)."""
        return SmsOutbox(self._db)

    async def _insert(self, sql: str, params: Sequence[Any]) -> int:
        return await self._db.insert(sql, params)

    async def _update(self, sql: str, params: Sequence[Any]) -> int:
        return await self._db.execute(sql, params)

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._db.fetchall(sql, params)

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await self._db.fetchone(sql, params)

    async def add_call(
        self,
        sip_call_id: str,
        from_uri: str,
        to_uri: str,
        source: str,
        worker_id: int | None,
        arrived_at: float,
        host: str | None = None,
    ) -> int:
        """Record an arriving call, carried by ``host``'s workers, and return its id."""
        call_id = await self._insert(
            "INSERT INTO calls (sip_call_id, from_uri, to_uri, source, worker_id, arrived_at, host)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (sip_call_id, from_uri, to_uri, source, worker_id, arrived_at, host),
        )
        return call_id

    async def message_started(self, call_id: int, at: float) -> None:
        """The call's message tape has started (one write a call): should its host die now, the survivor
        still files the message's case."""
        await self._update("UPDATE calls SET message_started_at = ? WHERE id = ? AND message_started_at IS NULL",
                           (at, call_id))

    async def answer_call(self, call_id: int, answered_at: float) -> None:
        """Mark a call answered; Conflict if it was already answered or has ended."""
        changed = await self._update(
            "UPDATE calls SET answered_at = ?"
            " WHERE id = ? AND answered_at IS NULL AND ended_at IS NULL",
            (answered_at, call_id),
        )
        if not changed:
            await self.get_call(call_id)
            raise Conflict(f"call {call_id} was already answered or has ended")

    async def end_call(
        self, call_id: int, ended_at: float, disposition: str, ivr_path: Sequence[str]
    ) -> None:
        """Close a call record; Conflict if it has already ended."""
        changed = await self._update(
            "UPDATE calls SET ended_at = ?, disposition = ?, ivr_path = ?"
            " WHERE id = ? AND ended_at IS NULL",
            (ended_at, disposition, json.dumps(list(ivr_path), ensure_ascii=False), call_id),
        )
        if not changed:
            await self.get_call(call_id)
            raise Conflict(f"call {call_id} has already ended")

    async def get_call(self, call_id: int) -> CallRecord:
        row = await self._fetchone(f"SELECT {_CALL_COLUMNS} FROM calls WHERE id = ?", (call_id,))
        if row is None:
            raise NotFound(f"no call with id {call_id}")
        return _call_from_row(row)

    async def get_call_by_sip_id(self, sip_call_id: str) -> CallRecord:
        """Return the most recent call with this SIP Call-ID."""
        row = await self._fetchone(
            f"SELECT {_CALL_COLUMNS} FROM calls WHERE sip_call_id = ? ORDER BY id DESC LIMIT 1",
            (sip_call_id,),
        )
        if row is None:
            raise NotFound(f"no call with SIP Call-ID {sip_call_id!r}")
        return _call_from_row(row)

    async def unfinished_calls(self, host: str | None = None) -> list[CallRecord]:
        """Return calls never ended, oldest first, so they can be closed after a crash: every one, or
        ``host``'s (and those from before several hosts, which have none)."""
        if host is None:
            return await self._unfinished("1 = 1", ())
        return await self._unfinished("(host = ? OR host IS NULL)", (host,))

    async def calls_lost_with_host(self, host: str, since: float) -> list[CallRecord]:
        """The host's calls arrived since a time that a survivor closed as host_lost, oldest first."""
        return await self._calls_where("host = ? AND disposition = 'host_lost' AND arrived_at >= ?", (host, since))

    async def _unfinished(self, condition: str, params: Sequence[Any]) -> list[CallRecord]:
        return await self._calls_where(f"ended_at IS NULL AND {condition}", params)

    async def _calls_where(self, condition: str, params: Sequence[Any]) -> list[CallRecord]:
        rows = await self._fetchall(f"SELECT {_CALL_COLUMNS} FROM calls WHERE {condition} ORDER BY id", params)
        return [_call_from_row(row) for row in rows]

    async def open_cut_message_case(self, call_id: int, *, spoken_id: bool, actor: str) -> Case:
        """A message cut short by a crash or a lost host becomes a received_incomplete case with the call's
        recordings. The ID was in the lost process's memory: the case has none, to be transcribed from its
        tape when one was spoken."""
        async with self._db.transaction() as tx:
            store = Store(tx, self._protector)
            subject = PersonId(None, "speech", "to_transcribe") if spoken_id else PersonId(None, "none", "none")
            case = await store.open_call_case(call_id, subject, complete=False, actor=actor)
            await store.attach_recordings(call_id, case.id)
            return case

    async def probe(self) -> None:
        """A read of the newest row: raises StoreError when the database cannot be read."""
        await self._fetchall("SELECT id FROM calls ORDER BY id DESC LIMIT 1")

    async def open_call_case(self, call_id: int, subject: PersonId, caller: PersonId | None = None, *,
                             complete: bool = True, actor: str = "ivr") -> Case:
        """A call's case, under its subject's ID (and the caller's, who asked for someone else).

        ``complete`` False: the caller's message was cut short (received_incomplete).
        """
        return await self.create_case(call_id, arrival_status(complete), subject.national_id, subject.source,
                                      id_status=subject.status, caller=caller, actor=actor)

    async def create_case(
        self, call_id: int | None, status: str, national_id: str | None, id_source: str,
        *, id_status: str | None = None, caller: PersonId | None = None, actor: str = "ivr",
        channel: str = "phone", agency: str | None = None, category: str | None = None,
        summary: str | None = None,
    ) -> Case:
        """Open a case with a fresh tracking code, filed under the subject's ID.

        ``caller`` is the ID of whoever asked for someone else: the caller, or the
        submitter on another channel (where ``call_id`` is None). With ``agency``
        the case is filed from the start, by ``actor``. IDs are stored only
        encrypted and hashed.
        """
        _check_status(status)
        subject = PersonId(national_id, id_source, id_status or _default_status(national_id, id_source))
        sealed_subject = self._seal(subject)
        sealed_caller = self._seal(caller) if caller is not None else (None, None, None, None)
        filed_by = actor if agency is not None else None
        now = time.time()
        # The case with its "created" event, or neither.
        async with self._db.transaction() as tx:
            for _ in range(_TRACKING_CODE_ATTEMPTS):
                code = new_tracking_code()
                try:
                    # A savepoint: a collision undoes this insert only (PostgreSQL would spoil the whole transaction).
                    async with tx.transaction() as attempt:
                        case_id = await attempt.insert(
                            "INSERT INTO cases (tracking_code, status, created_at, updated_at, call_id,"
                            " national_id_enc, national_id_key_id, national_id_hmac, national_id_masked,"
                            " id_source, id_status, subject_is_caller, caller_id_enc, caller_id_key_id,"
                            " caller_id_hmac, caller_id_masked, caller_id_source, caller_id_status,"
                            " channel, agency, category, summary, filed_by)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (code, status, now, now, call_id, *sealed_subject, subject.source, subject.status,
                             int(caller is None), *sealed_caller, caller.source if caller else None,
                             caller.status if caller else None, channel, agency, category, summary, filed_by),
                        )
                except UniqueViolation as exc:
                    if exc.where == "cases.tracking_code":
                        continue
                    if exc.where == "cases.call_id":
                        raise Conflict(f"call {call_id} already has a case") from exc
                    raise
                except ForeignKeyViolation as exc:
                    raise NotFound(f"no call with id {call_id}") from exc
                store = Store(tx, self._protector)
                filing = {"agency": agency, "category": category} if agency is not None else {}
                await store.add_case_event(case_id, actor, "created", status=status, channel=channel, **filing)
                return await store.get_case_by_id(case_id)
        raise Conflict(f"no free tracking code after {_TRACKING_CODE_ATTEMPTS} attempts")

    def _seal(self, person: PersonId) -> tuple[bytes | None, str | None, str | None, str | None]:
        """(ciphertext, key id, lookup hash, masked) of an ID; all None when there is none."""
        if person.source not in ID_SOURCES:
            raise ValueError(f"id_source must be one of {sorted(ID_SOURCES)}, not {person.source!r}")
        if person.status not in ID_STATUSES:
            raise ValueError(f"id_status must be one of {sorted(ID_STATUSES)}, not {person.status!r}")
        if person.national_id is None:
            return None, None, None, None
        if person.source == "none":
            raise ValueError("a national ID was given with id_source 'none'")
        key_id, sealed = self._protector.encrypt(person.national_id)
        return sealed, key_id, self._protector.lookup_hash(person.national_id), IdProtector.mask(person.national_id)

    async def cases_for_national_id(self, national_id: str) -> list[Case]:
        """Cases filed under this ID or raised by it for someone else, oldest first."""
        lookup = self._protector.lookup_hash(national_id)
        rows = await self._fetchall(
            f"SELECT {_CASE_COLUMNS} FROM cases WHERE national_id_hmac = ? OR caller_id_hmac = ? ORDER BY id",
            (lookup, lookup),
        )
        return [_case_from_row(row) for row in rows]

    async def has_open_case(self, national_id: str, since: float) -> bool:
        """Whether a case filed under this ID, or raised by it for someone else, since ``since`` (wall
        time) is still being handled (received or referred)."""
        lookup = self._protector.lookup_hash(national_id)
        marks = ", ".join("?" * len(OPEN_STATUSES))
        row = await self._fetchone(
            f"SELECT 1 FROM cases WHERE (national_id_hmac = ? OR caller_id_hmac = ?) AND created_at >= ? "
            f"AND status IN ({marks}) LIMIT 1", (lookup, lookup, since, *OPEN_STATUSES))
        return row is not None

    async def set_case_status(self, case_id: int, status: str, actor: str = "system") -> Case:
        """Change the status (one of CASE_STATUSES), kept in the history with from and to."""
        _check_status(status)
        return await self._change_case(case_id, actor, "status", {"status": status},
                                       lambda before: {"from": before.status, "to": status})

    async def refer_case(self, case_id: int, agency: str, actor: str) -> Case:
        """Refer the case to an agency (first time or again): status referred, history from/to agency."""
        return await self._change_case(
            case_id, actor, "referred", {"agency": agency, "status": "referred"},
            lambda before: {"from": before.agency, "to": agency, "status_from": before.status})

    async def set_answer(self, case_id: int, actor: str, *, text: str | None = None,
                         audio_path: str | None = None, audio_sha256: str | None = None,
                         also: Callable[[Store, Case], Awaitable[None]] | None = None) -> Case:
        """The agency's answer, written, recorded or both; it replaces any earlier answer.

        ``audio_path`` is an 8 kHz WAV: the recorded answer, or ``text`` synthesized. ``also`` runs in
        the same transaction once the case is answered (the answer-ready SMS is queued with it, or neither).
        """
        if text is None and audio_path is None:
            raise ValueError("an answer needs a text or an audio file")
        changes = {"status": "answered", "answer_text": text, "answer_audio": audio_path,
                   "answer_audio_sha256": audio_sha256, "answered_at": time.time(), "answered_by": actor}
        return await self._change_case(
            case_id, actor, "answered", changes,
            lambda before: {"from": before.status, "to": "answered", "text": text, "audio": audio_path,
                            "audio_sha256": audio_sha256}, also)

    async def _change_case(self, case_id: int, actor: str, kind: str, changes: Mapping[str, Any],
                           detail: Callable[[Case], dict[str, Any]],
                           also: Callable[[Store, Case], Awaitable[None]] | None = None) -> Case:
        """Set columns of a case and add its history row, whose detail is made from the case before;
        then ``also`` with the case after, in the same transaction."""
        # One transaction, the case's row locked (SQLite: the database) from the read on: the history's
        # "from" is what the change replaced, whichever process or host changes the case too.
        async with self._db.transaction() as tx:
            row = await tx.fetchone(f"SELECT {_CASE_COLUMNS} FROM cases WHERE id = ?{tx.for_update}", (case_id,))
            if row is None:
                raise NotFound(f"no case with id {case_id}")
            before = _case_from_row(row)
            store = Store(tx, self._protector)
            assignments = "".join(f"{column} = ?, " for column in changes)
            await store._update(f"UPDATE cases SET {assignments}updated_at = ? WHERE id = ?",
                                (*changes.values(), time.time(), case_id))
            await store.add_case_event(case_id, actor, kind, **detail(before))
            after = await store.get_case_by_id(case_id)
            if also is not None:
                await also(store, after)
            return after

    async def find_duplicate(self, subject_national_id: str, agency: str, category: str, window_s: float,
                             now: float | None = None) -> Case | None:
        """The oldest open case of this subject (by keyed hash), agency and category created within the window."""
        earliest = (time.time() if now is None else now) - window_s
        # "status <> 'closed'" is the condition of the partial index cases_open_by_subject.
        row = await self._fetchone(
            f"SELECT {_CASE_COLUMNS} FROM cases WHERE national_id_hmac = ? AND agency = ? AND category = ?"
            " AND status <> 'closed' AND created_at >= ? ORDER BY created_at, id LIMIT 1",
            (self._protector.lookup_hash(subject_national_id), agency, category, earliest))
        return None if row is None else _case_from_row(row)

    async def record_contact(self, case_id: int, actor: str, channel: str, *,
                             submitter_national_id: str | None = None, **detail: Any) -> None:
        """A repeated request linked to an existing case; the submitter's ID is kept only masked."""
        if submitter_national_id is not None:
            detail["submitter"] = IdProtector.mask(submitter_national_id)
        await self.add_case_event(case_id, actor, "contact", channel=channel, **detail)

    async def intake(
        self, subject: PersonId, *, channel: str, agency: str, category: str, summary: str | None,
        actor: str, window_s: float, submitter: PersonId | None = None, call_id: int | None = None,
        override_reason: str | None = None, now: float | None = None,
    ) -> IntakeResult:
        """The one duplicate rule, for every channel: link a repeated request, or open a referred case.

        A request whose subject has a verified ID and an open case with the same
        agency and category created within ``window_s`` is a duplicate: it is
        recorded as a contact of that (oldest) case and no case is created. An
        unverified ID may be someone else's, so it never links. ``submitter`` is
        whoever asked for the subject (None, or the subject's own ID: themselves).
        ``override_reason`` (an agent's decision) opens a new case anyway, noting
        the case it duplicates and why.
        """
        if submitter is not None and submitter.national_id == subject.national_id:
            submitter = None
        contact: dict[str, Any] = {key: value for key, value in
                                   (("call_id", call_id), ("summary", summary)) if value is not None}
        async with self._db.transaction() as tx:
            store = Store(tx, self._protector)
            existing = None
            if subject.national_id is not None and subject.status == "verified":
                # One decision at a time per subject, agency and category, on every host: a second
                # request waits here until the first one's case is committed, then finds it.
                await tx.lock(f"intake {self._protector.lookup_hash(subject.national_id)} {agency} {category}")
                existing = await store.find_duplicate(subject.national_id, agency, category, window_s, now)
            if existing is not None and override_reason is None:
                await store.record_contact(existing.id, actor, channel,
                                           submitter_national_id=(submitter or subject).national_id, **contact)
                return IntakeResult(existing, duplicate=True)
            case = await store.create_case(
                call_id, "referred", subject.national_id, subject.source, id_status=subject.status,
                caller=submitter, actor=actor, channel=channel, agency=agency, category=category, summary=summary)
            if existing is not None:
                await store.add_case_event(case.id, actor, "duplicate_override", of=existing.tracking_code,
                                           reason=override_reason)
            return IntakeResult(case, duplicate=False)

    async def list_cases(self, *, agency: str | None = None, status: str | None = None,
                         since: float | None = None, limit: int | None = 1000) -> list[Case]:
        """Cases, newest first, optionally of one agency, in one status, or created since a time."""
        if status is not None:
            _check_status(status)
        rows = await self._newest_first(_CASE_COLUMNS, "cases", "created_at", limit, {
            "agency = ?": agency, "status = ?": status, "created_at >= ?": since})
        return [_case_from_row(row) for row in rows]

    async def list_calls(self, *, since: float | None = None, limit: int | None = None) -> list[CallRecord]:
        """Call records, newest first, optionally those arrived since a time."""
        rows = await self._newest_first(_CALL_COLUMNS, "calls", "arrived_at", limit, {"arrived_at >= ?": since})
        return [_call_from_row(row) for row in rows]

    async def _newest_first(self, columns: str, table: str, time_column: str, limit: int | None,
                            conditions: Mapping[str, Any]) -> list[Row]:
        where, params = _where(conditions)
        bounded = "" if limit is None else " LIMIT ?"
        return await self._fetchall(
            f"SELECT {columns} FROM {table}{where} ORDER BY {time_column} DESC, id DESC{bounded}",
            (*params, *(() if limit is None else (limit,))))

    async def tracking_codes_by_call(self, *, since: float | None = None) -> dict[int, str]:
        """Call id -> the tracking code of its case, for calls arrived since a time."""
        where, params = _where({"calls.arrived_at >= ?": since})
        rows = await self._fetchall(
            f"SELECT cases.call_id, cases.tracking_code FROM cases JOIN calls ON calls.id = cases.call_id{where}",
            params)
        return {row[0]: row[1] for row in rows}

    async def person_matches(self, case_id: int, national_id: str) -> bool:
        """Whether the ID is the case's subject or whoever asked for them, compared by keyed hash."""
        row = await self._fetchone("SELECT national_id_hmac, caller_id_hmac FROM cases WHERE id = ?", (case_id,))
        if row is None:
            raise NotFound(f"no case with id {case_id}")
        try:
            lookup = self._protector.lookup_hash(national_id)
        except ValueError:
            return False
        # Both compared, in constant time, so the answer's timing says nothing of which matched.
        matches = [stored is not None and hmac.compare_digest(stored, lookup) for stored in row]
        return any(matches)

    async def get_case(self, tracking_code: str) -> Case:
        row = await self._fetchone(
            f"SELECT {_CASE_COLUMNS} FROM cases WHERE tracking_code = ?", (tracking_code,)
        )
        if row is None:
            raise NotFound(f"no case with tracking code {tracking_code!r}")
        return _case_from_row(row)

    async def case_for_call(self, call_id: int) -> Case | None:
        row = await self._fetchone(
            f"SELECT {_CASE_COLUMNS} FROM cases WHERE call_id = ?", (call_id,)
        )
        return None if row is None else _case_from_row(row)

    async def national_id_of(self, case_id: int) -> str | None:
        """Return the decrypted national ID of a case; only for authorised callers."""
        row = await self._fetchone(
            "SELECT national_id_key_id, national_id_enc FROM cases WHERE id = ?", (case_id,)
        )
        if row is None:
            raise NotFound(f"no case with id {case_id}")
        if row["national_id_enc"] is None:
            return None
        try:
            return self._protector.decrypt(row["national_id_key_id"], row["national_id_enc"])
        except ValueError as exc:
            raise StoreError(f"cannot decrypt the national ID of case {case_id}: {exc}") from exc

    async def add_recording(
        self,
        call_id: int,
        case_id: int | None,
        kind: str,
        path: str,
        duration_s: float,
        sha256: str,
        complete: bool,
    ) -> Recording:
        now = time.time()
        try:
            recording_id = await self._insert(
                "INSERT INTO recordings"
                " (call_id, case_id, kind, path, duration_s, sha256, complete, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (call_id, case_id, kind, path, duration_s, sha256, int(complete), now),
            )
        except ForeignKeyViolation as exc:
            raise NotFound(f"no call {call_id} or no case {case_id}") from exc
        return Recording(
            id=recording_id,
            call_id=call_id,
            case_id=case_id,
            kind=kind,
            path=path,
            duration_s=duration_s,
            sha256=sha256,
            complete=complete,
            created_at=now,
        )

    async def attach_recordings(self, call_id: int, case_id: int) -> int:
        """Give the call's unattached recordings to the case; return how many moved."""
        if await self._fetchone("SELECT 1 FROM cases WHERE id = ?", (case_id,)) is None:
            raise NotFound(f"no case with id {case_id}")
        changed = await self._update(
            "UPDATE recordings SET case_id = ? WHERE call_id = ? AND case_id IS NULL",
            (case_id, call_id),
        )
        return changed

    async def recordings_for_call(self, call_id: int) -> list[Recording]:
        rows = await self._fetchall(
            f"SELECT {_RECORDING_COLUMNS} FROM recordings WHERE call_id = ? ORDER BY id",
            (call_id,),
        )
        return [_recording_from_row(row) for row in rows]

    async def add_case_event(self, case_id: int, actor: str, kind: str, **detail: Any) -> None:
        try:
            await self._insert("INSERT INTO case_events (case_id, at, actor, kind, detail) VALUES (?, ?, ?, ?, ?)",
                               (case_id, time.time(), actor, kind, json.dumps(detail, ensure_ascii=False)))
        except ForeignKeyViolation as exc:
            raise NotFound(f"no case with id {case_id}") from exc

    async def case_events(self, case_id: int) -> list[CaseEvent]:
        rows = await self._fetchall(
            "SELECT id, case_id, at, actor, kind, detail FROM case_events WHERE case_id = ? ORDER BY id", (case_id,))
        return [CaseEvent(row["id"], row["case_id"], row["at"], row["actor"], row["kind"], json.loads(row["detail"]))
                for row in rows]

    async def file_case(self, case_id: int, agency: str, category: str, summary: str, actor: str) -> Case:
        """The agent's filing: responsible agency, category and summary, kept in the case's history."""
        return await self._change_case(
            case_id, actor, "filed", {"agency": agency, "category": category, "summary": summary, "filed_by": actor},
            lambda before: {"agency": agency, "category": category})

    async def get_case_by_id(self, case_id: int) -> Case:
        row = await self._fetchone(f"SELECT {_CASE_COLUMNS} FROM cases WHERE id = ?", (case_id,))
        if row is None:
            raise NotFound(f"no case with id {case_id}")
        return _case_from_row(row)

    async def set_call_agent(self, call_id: int, agent_id: str) -> None:
        await self._update("UPDATE calls SET agent_id = ? WHERE id = ?", (agent_id, call_id))

    async def get_recording(self, recording_id: int) -> Recording:
        row = await self._fetchone(f"SELECT {_RECORDING_COLUMNS} FROM recordings WHERE id = ?", (recording_id,))
        if row is None:
            raise NotFound(f"no recording with id {recording_id}")
        return _recording_from_row(row)

    async def recordings_for_case(self, case_id: int) -> list[Recording]:
        rows = await self._fetchall(
            f"SELECT {_RECORDING_COLUMNS} FROM recordings WHERE case_id = ? ORDER BY id",
            (case_id,),
        )
        return [_recording_from_row(row) for row in rows]

    async def recordings_under(self, prefix: str) -> list[Recording]:
        """Recordings whose path starts with ``prefix`` (a directory with its trailing separator), oldest first."""
        # substr rather than LIKE: a path may hold "_" or "%", and both engines count characters alike.
        rows = await self._fetchall(
            f"SELECT {_RECORDING_COLUMNS} FROM recordings WHERE substr(path, 1, ?) = ? ORDER BY id",
            (len(prefix), prefix),
        )
        return [_recording_from_row(row) for row in rows]

    async def recording_at(self, path: str) -> Recording | None:
        """The recording whose row names this path, if any."""
        row = await self._fetchone(f"SELECT {_RECORDING_COLUMNS} FROM recordings WHERE path = ?", (path,))
        return None if row is None else _recording_from_row(row)

    # -- several hosts on one store -------------------------------------------------------------------
    async def join_cluster(self, name: str, recordings_dir: str, shared_folder: str | None,
                           console_url: str | None = None) -> HostRecord | None:
        """This host starts (or starts again): its row fresh and alive. Returns the row as it was (None the
        first time): ``taken_over_by`` set if a survivor closed its calls while it was down."""
        async with self._db.transaction() as tx:
            row = await tx.fetchone(f"SELECT {_HOST_COLUMNS}, {tx.clock} AS now FROM hosts WHERE name = ?"
                                    f"{tx.for_update}", (name,))
            await tx.execute(
                f"INSERT INTO hosts ({_HOST_COLUMNS}) VALUES (?, {tx.clock}, {tx.clock}, ?, ?, NULL, NULL, NULL, ?)"
                " ON CONFLICT (name) DO UPDATE SET started_at = excluded.started_at, last_seen = excluded.last_seen,"
                " recordings_dir = excluded.recordings_dir, shared_folder = excluded.shared_folder,"
                " taken_over_by = NULL, taken_over_at = NULL, left_at = NULL, console_url = excluded.console_url",
                (name, recordings_dir, shared_folder, console_url))
            return None if row is None else _host_from_row(row)

    async def heartbeat(self, name: str) -> bool:
        """This host is alive now; False when it was taken over meanwhile (it then has to join again)."""
        return await self._update(f"UPDATE hosts SET last_seen = {self._db.clock}"
                                  " WHERE name = ? AND taken_over_by IS NULL AND left_at IS NULL", (name,)) == 1

    async def leave_cluster(self, name: str) -> None:
        """This host stops cleanly, its calls closed: nobody is to take it over."""
        await self._update(f"UPDATE hosts SET left_at = {self._db.clock} WHERE name = ? AND taken_over_by IS NULL",
                           (name,))

    async def console_url(self, name: str) -> str | None:
        """Where host ``name``'s web server is, for the others (None: unknown, or no such host)."""
        row = await self._fetchone("SELECT console_url FROM hosts WHERE name = ?", (name,))
        return None if row is None else row["console_url"]

    async def hosts(self) -> list[HostRecord]:
        """Every host that has joined the store, by name."""
        rows = await self._fetchall(f"SELECT {_HOST_COLUMNS}, {self._db.clock} AS now FROM hosts ORDER BY name")
        return [_host_from_row(row) for row in rows]

    async def take_over(self, dead: str, by: str, timeout_s: float) -> TakeOver | None:
        """If host ``dead`` has been silent for ``timeout_s`` (the database's clock), did not leave, and nobody
        has taken it over, claim it for ``by`` and, in the same transaction, close its open calls as host_lost (ended at
        its last heartbeat) and make each cut message a received_incomplete case. None: it is alive, or
        another survivor has it; of two survivors trying at once exactly one gets it."""
        async with self._db.transaction() as tx:
            # The claim is a conditional UPDATE: a second survivor's waits on the row and then finds it taken.
            claimed = await tx.execute(
                f"UPDATE hosts SET taken_over_by = ?, taken_over_at = {tx.clock}"
                " WHERE name = ? AND name <> ? AND taken_over_by IS NULL AND left_at IS NULL"
                f" AND last_seen < {tx.clock} - ?",
                (by, dead, by, timeout_s))
            if not claimed:
                return None
            row = await tx.fetchone(f"SELECT {_HOST_COLUMNS}, {tx.clock} AS now FROM hosts WHERE name = ?", (dead,))
            assert row is not None
            host = _host_from_row(row)
            store = Store(tx, self._protector)
            closed, opened = [], []
            for call in await store._unfinished("host = ?", (dead,)):
                kinds = {recording.kind for recording in await store.recordings_for_call(call.id)}
                case = await store.case_for_call(call.id)
                if case is not None:
                    await store.attach_recordings(call.id, case.id)  # tapes stored after its case was opened
                elif call.message_started_at is not None or "message" in kinds:
                    case = await store.open_cut_message_case(call.id, spoken_id="national_id_utterance" in kinds,
                                                             actor=f"takeover:{by}")
                    opened.append((call.id, case.tracking_code))
                await store.end_call(call.id, max(host.last_seen, call.arrived_at), "host_lost", call.ivr_path)
                closed.append(call.id)
            return TakeOver(host, tuple(closed), tuple(opened))

    async def move_recording(self, recording_id: int, from_path: str, to_path: str) -> bool:
        """Point a recording's row at its verified copy; False (nothing changed) unless it named ``from_path``."""
        changed = await self._update(
            "UPDATE recordings SET path = ? WHERE id = ? AND path = ?", (to_path, recording_id, from_path))
        return changed == 1

    async def add_rating(self, call_id: int, kind: str, score: int, *, at: float, day: str,
                         case_id: int | None = None, agent_id: str | None = None,
                         agency: str | None = None) -> bool:
        """The call's survey rating (1-5); False, and nothing changed, when the call has one already."""
        if kind not in RATING_KINDS:
            raise ValueError(f"a rating's kind must be one of {', '.join(RATING_KINDS)}, not {kind!r}")
        if not 1 <= score <= 5:
            raise ValueError(f"a rating is 1 to 5, not {score}")
        try:
            await self._insert(
                "INSERT INTO ratings (call_id, case_id, kind, agent_id, agency, score, at, day)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (call_id, case_id, kind, agent_id, agency, score, at, day))
        except UniqueViolation as exc:
            if exc.where == "ratings.call_id":
                return False
            raise
        except ForeignKeyViolation as exc:
            raise NotFound(f"no call {call_id} or no case {case_id}") from exc
        return True

    async def rating_for_call(self, call_id: int) -> Rating | None:
        row = await self._fetchone(f"SELECT {_RATING_COLUMNS} FROM ratings WHERE call_id = ?", (call_id,))
        return None if row is None else Rating(*(row[column] for column in _RATING_COLUMNS.split(", ")))

    async def rating_counts(self, by: str, *, since_day: str | None = None, until_day: str | None = None
                            ) -> list[tuple[str | None, int, int]]:
        """(agent id, agency or day; score; how many) of the ratings of the days from ``since_day`` to
        ``until_day`` (YYYY-MM-DD, both included), grouped by ``by`` (a key of RATING_GROUPS)."""
        column = RATING_GROUPS.get(by)
        if column is None:
            raise ValueError(f"ratings are grouped by one of {', '.join(RATING_GROUPS)}, not {by!r}")
        where, params = _where({"day >= ?": since_day, "day <= ?": until_day})
        rows = await self._fetchall(
            f"SELECT {column}, score, COUNT(*) FROM ratings{where} GROUP BY {column}, score", params)
        return [(row[0], int(row[1]), int(row[2])) for row in rows]

    async def registered_sip_users(self, now: float) -> set[str]:
        """SIP users with a registration unexpired at ``now`` in the SIP fronts' shared ``location`` table.

        Only PostgreSQL stores hold registrations (every host's front keeps them
        there); on SQLite the table stays empty and the front keeps them in memory.
        """
        rows = await self._fetchall("SELECT DISTINCT username FROM location WHERE expires > ?", (int(now),))
        return {str(row["username"]) for row in rows}

    async def registered_contacts(self, server_id: int, now: float) -> int:
        """Phones registered at the front numbered ``server_id`` (unexpired at ``now``) in the shared table."""
        row = await self._fetchone("SELECT count(*) FROM location WHERE server_id = ? AND expires > ?",
                                   (server_id, int(now)))
        return int(row[0]) if row is not None else 0


@asynccontextmanager
async def open_store(target: Path | str, protector: IdProtector) -> AsyncIterator[Store]:
    """Open (creating and migrating if needed) the store at ``target``: a SQLite file's path,
    or a ``postgresql://`` URL."""
    async with open_engine(target) as engine:
        await migrate(engine)
        yield Store(engine, protector)


def _default_status(national_id: str | None, id_source: str) -> str:
    if national_id is not None:
        return "verified"
    return "to_transcribe" if id_source == "speech" else "none"
