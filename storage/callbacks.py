"""Storage layer: callbacks callers asked for instead of waiting, on SQLite or PostgreSQL.

A callback is ``pending`` from its booking until the softswitch calls
(``calling``: its attempt counted), then ``connected`` to an agent, ``pending``
again for a retry when it was not answered, and at last ``done`` (the
conversation took place) or ``unreached`` (every attempt failed; a case says
so). A number has at most one callback that is not over: a partial unique
index refuses a second, on every host alike. The IDs the caller keyed are
kept encrypted, as a case's are, so that the call-back caller reaches an
agent who sees them and a case is filed under them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from storage.crypto import IdProtector
from storage.engines import Executor, Row
from storage.errors import NotFound
from storage.models import PersonId

PENDING, CALLING, CONNECTED, DONE, UNREACHED = "pending", "calling", "connected", "done", "unreached"
OPEN = (PENDING, CALLING, CONNECTED)
_COLUMNS = ("id, number, status, host, call_id, created_at, next_at, attempts, priority, skills, language, topic,"
            " caller_id_enc, caller_id_key_id, caller_id_source, caller_id_status,"
            " subject_id_enc, subject_id_key_id, subject_id_source, subject_id_status, outcome, case_id")


@dataclass(frozen=True, slots=True)
class Callback:
    """One callback; ``number`` is the caller's: personal data, never logged."""

    id: int
    number: str
    status: str
    host: str  # the host that calls: the one it was booked on
    call_id: int | None  # the call that asked for it
    created_at: float
    next_at: float  # its next attempt is not made before this
    attempts: int
    priority: int
    skills: tuple[str, ...]
    language: str | None
    topic: str | None
    caller: PersonId | None
    subject: PersonId | None  # the person the matter concerns, when not the caller
    outcome: str | None = None
    case_id: int | None = None

    @property
    def queue_key(self) -> str:
        return queue_key(self.id)


def queue_key(callback_id: int) -> str:
    """A callback's entry's key in the queue: one name on every host."""
    return f"callback-{callback_id}"


class Callbacks:
    """The callbacks' statements on one executor (``Store.callbacks``)."""

    def __init__(self, db: Executor, protector: IdProtector) -> None:
        self._db = db
        self._protector = protector

    async def book(self, number: str, host: str, call_id: int | None, *, priority: int = 0,
                   skills: Sequence[str] = (), language: str | None = None, topic: str | None = None,
                   caller: PersonId | None = None, subject: PersonId | None = None,
                   now: float | None = None) -> Callback:
        """A new pending callback, due at once. Conflict (a UniqueViolation) when the number has one already."""
        at = time.time() if now is None else now
        callback_id = await self._db.insert(
            "INSERT INTO callbacks (number, status, host, call_id, created_at, updated_at, next_at, priority, skills,"
            " language, topic, caller_id_enc, caller_id_key_id, caller_id_source, caller_id_status,"
            " subject_id_enc, subject_id_key_id, subject_id_source, subject_id_status)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (number, PENDING, host, call_id, at, at, at, priority, json.dumps(sorted(skills)), language, topic,
             *self._seal(caller), *self._seal(subject)))
        return await self.get(callback_id)

    async def get(self, callback_id: int) -> Callback:
        row = await self._db.fetchone(f"SELECT {_COLUMNS} FROM callbacks WHERE id = ?", (callback_id,))
        if row is None:
            raise NotFound(f"no callback with id {callback_id}")
        return self._callback(row)

    async def open_for(self, host: str) -> list[Callback]:
        """The host's callbacks not over yet, in the order they were booked."""
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM callbacks WHERE host = ? AND status IN ('pending', 'calling', 'connected')"
            " ORDER BY id", (host,))
        return [self._callback(row) for row in rows]

    async def adopt(self, from_host: str, to_host: str) -> int:
        """A lost host's callbacks not over yet become ``to_host``'s (the survivor that took it over); how many."""
        return await self._db.execute(
            "UPDATE callbacks SET host = ?, updated_at = ? WHERE host = ?"
            " AND status IN ('pending', 'calling', 'connected')", (to_host, time.time(), from_host))

    async def calling(self, callback_id: int) -> int:
        """An attempt starts: counted, whatever comes of it. The attempts made so far."""
        await self._change(callback_id, "status = ?, attempts = attempts + 1", (CALLING,))
        return (await self.get(callback_id)).attempts

    async def connected(self, callback_id: int) -> None:
        await self._change(callback_id, "status = ?", (CONNECTED,))

    async def retry(self, callback_id: int, next_at: float, outcome: str) -> None:
        """Not answered this time: pending again, not before ``next_at``."""
        await self._change(callback_id, "status = ?, next_at = ?, outcome = ?", (PENDING, next_at, outcome))

    async def finish(self, callback_id: int, status: str, outcome: str, case_id: int | None = None) -> None:
        """Over: ``done`` or ``unreached``, with why and the case it went to."""
        if status not in (DONE, UNREACHED):
            raise ValueError(f"a callback ends done or unreached, not {status!r}")
        await self._change(callback_id, "status = ?, outcome = ?, case_id = ?", (status, outcome, case_id))

    async def _change(self, callback_id: int, assignments: str, params: tuple[object, ...]) -> None:
        changed = await self._db.execute(f"UPDATE callbacks SET {assignments}, updated_at = ? WHERE id = ?",
                                         (*params, time.time(), callback_id))
        if not changed:
            raise NotFound(f"no callback with id {callback_id}")

    def _seal(self, person: PersonId | None) -> tuple[bytes | None, str | None, str | None, str | None]:
        if person is None:
            return None, None, None, None
        if person.national_id is None:
            return None, None, person.source, person.status
        key_id, sealed = self._protector.encrypt(person.national_id)
        return sealed, key_id, person.source, person.status

    def _person(self, sealed: bytes | None, key_id: str | None, source: str | None,
                status: str | None) -> PersonId | None:
        if source is None or status is None:
            return None
        national_id = self._protector.decrypt(key_id, bytes(sealed)) if sealed is not None and key_id else None
        return PersonId(national_id, source, status)

    def _callback(self, row: Row) -> Callback:
        return Callback(
            id=row["id"], number=row["number"], status=row["status"], host=row["host"], call_id=row["call_id"],
            created_at=row["created_at"], next_at=row["next_at"], attempts=row["attempts"], priority=row["priority"],
            skills=tuple(json.loads(row["skills"])), language=row["language"], topic=row["topic"],
            caller=self._person(row["caller_id_enc"], row["caller_id_key_id"], row["caller_id_source"],
                                row["caller_id_status"]),
            subject=self._person(row["subject_id_enc"], row["subject_id_key_id"], row["subject_id_source"],
                                 row["subject_id_status"]),
            outcome=row["outcome"], case_id=row["case_id"])
