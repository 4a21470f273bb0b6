"""Storage layer: the SMS outbox, each message's text, recipient and delivery, on SQLite or PostgreSQL.

A message is ``pending`` until a sender claims it (``sending``: its attempt
counted, a lease on it until ``next_attempt_at``), then ``sent`` (the gateway
took it), ``failed`` (the gateway refused it for good), ``pending`` again for
a retry, or ``gave_up`` after the configured attempts. The claim is one
``UPDATE ... RETURNING`` whose condition is checked again on every row it
changes, so two senders on one database (two hosts) never hold one message at
once; every later change names the attempt it closes, so a sender whose lease
ran out (and whose message another sender took) changes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from softswitch.domain.sms import ANSWER_READY, SMS_KINDS, TRACKING_CODE
from storage.engines import Executor, Row

PENDING, SENDING, SENT, FAILED, GAVE_UP = "pending", "sending", "sent", "failed", "gave_up"
SMS_STATUSES = (PENDING, SENDING, SENT, FAILED, GAVE_UP)
# Written word for word as the condition of the partial index sms_outbox_due, so SQLite uses it.
_DUE = "status IN ('pending', 'sending') AND next_attempt_at <= ?"
_COLUMNS = ("id, case_id, kind, recipient, text, status, attempts, last_error, next_attempt_at, created_at,"
            " updated_at, sent_at")
LOST_ATTEMPT = "the sender stopped during the attempt; its outcome is not known"


@dataclass(frozen=True, slots=True)
class SmsMessage:
    """One message of the outbox; ``recipient`` is a caller's number: personal data, never logged."""

    id: int
    case_id: int
    kind: str  # tracking_code | answer_ready
    recipient: str
    text: str
    status: str  # pending | sending | sent | failed | gave_up
    attempts: int
    last_error: str | None
    next_attempt_at: float
    created_at: float
    updated_at: float
    sent_at: float | None


def _message(row: Row) -> SmsMessage:
    return SmsMessage(*row)


class SmsOutbox:
    """The outbox's statements on one executor: the engine, or a transaction (``Store.sms``)."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def queue(self, case_id: int, kind: str, recipient: str, text: str, now: float | None = None) -> int:
        """A new pending message, due at once; its id."""
        if kind not in SMS_KINDS:
            raise ValueError(f"SMS kind must be one of {', '.join(SMS_KINDS)}, not {kind!r}")
        at = time.time() if now is None else now
        return await self._db.insert(
            "INSERT INTO sms_outbox (case_id, kind, recipient, text, status, attempts, next_attempt_at, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)", (case_id, kind, recipient, text, PENDING, at, at, at))

    async def queue_answer_ready(self, case_id: int, text: str, now: float | None = None) -> bool:
        """"Your answer is ready" to the number the case's caller last asked the tracking code at, once per case;
        False when nobody asked for one, or it is queued already."""
        at = time.time() if now is None else now
        # One statement: whichever host answers the case, the unique index lets one message in. The casts
        # give PostgreSQL the parameters' types (a SELECT list does not take them from the columns).
        changed = await self._db.execute(
            "INSERT INTO sms_outbox (case_id, kind, recipient, text, status, attempts, next_attempt_at, created_at,"
            " updated_at) SELECT case_id, CAST(? AS TEXT), recipient, CAST(? AS TEXT), CAST(? AS TEXT), 0,"
            " CAST(? AS DOUBLE PRECISION), CAST(? AS DOUBLE PRECISION), CAST(? AS DOUBLE PRECISION) FROM sms_outbox"
            " WHERE id = (SELECT max(id) FROM sms_outbox WHERE case_id = ? AND kind = ?)"
            " ON CONFLICT DO NOTHING",
            (ANSWER_READY, text, PENDING, at, at, at, case_id, TRACKING_CODE))
        return changed == 1

    async def claim(self, now: float, lease_s: float, limit: int, max_attempts: int) -> list[SmsMessage]:
        """Up to ``limit`` messages due at ``now``, oldest due first, now ``sending`` with one more attempt,
        each leased for ``lease_s``: no other claim takes them before then."""
        rows = await self._db.fetchall(
            f"UPDATE sms_outbox SET status = ?, attempts = attempts + 1, next_attempt_at = ?, updated_at = ?"
            f" WHERE id IN (SELECT id FROM sms_outbox WHERE {_DUE} AND attempts < ? ORDER BY next_attempt_at, id"
            f" LIMIT ?) AND {_DUE} AND attempts < ? RETURNING {_COLUMNS}",
            (SENDING, now + lease_s, now, now, max_attempts, limit, now, max_attempts))
        return sorted((_message(row) for row in rows), key=lambda m: (m.created_at, m.id))

    async def give_up_spent(self, now: float, max_attempts: int) -> list[SmsMessage]:
        """Messages due that have had every attempt allowed, given up: one whose last attempt was leased to a
        sender that never said how it went (it stopped), or one left pending when the count was lowered."""
        rows = await self._db.fetchall(
            f"UPDATE sms_outbox SET status = ?, last_error = CASE WHEN status = ? THEN ? ELSE last_error END,"
            f" updated_at = ? WHERE {_DUE} AND attempts >= ? RETURNING {_COLUMNS}",
            (GAVE_UP, SENDING, LOST_ATTEMPT, now, now, max_attempts))
        return [_message(row) for row in rows]

    async def _close(self, message: SmsMessage, assignments: str, params: tuple[object, ...]) -> bool:
        changed = await self._db.execute(
            f"UPDATE sms_outbox SET {assignments}, updated_at = ? WHERE id = ? AND status = ? AND attempts = ?",
            (*params, time.time(), message.id, SENDING, message.attempts))
        return changed == 1

    async def sent(self, message: SmsMessage, now: float) -> bool:
        """The gateway took the claimed attempt; False if the claim had lapsed and another sender holds it."""
        return await self._close(message, "status = ?, sent_at = ?, last_error = NULL", (SENT, now))

    async def failed(self, message: SmsMessage, error: str) -> bool:
        """The gateway refused the message for good."""
        return await self._close(message, "status = ?, last_error = ?", (FAILED, error))

    async def gave_up(self, message: SmsMessage, error: str) -> bool:
        """The last allowed attempt failed."""
        return await self._close(message, "status = ?, last_error = ?", (GAVE_UP, error))

    async def retry_at(self, message: SmsMessage, error: str, at: float) -> bool:
        """Pending again, due at ``at``."""
        return await self._close(message, "status = ?, last_error = ?, next_attempt_at = ?", (PENDING, error, at))

    async def waiting(self) -> int:
        """Messages not yet sent, failed or given up."""
        row = await self._db.fetchone("SELECT count(*) FROM sms_outbox WHERE status IN ('pending', 'sending')")
        return 0 if row is None else int(row[0])

    async def for_case(self, case_id: int) -> list[SmsMessage]:
        rows = await self._db.fetchall(f"SELECT {_COLUMNS} FROM sms_outbox WHERE case_id = ? ORDER BY id", (case_id,))
        return [_message(row) for row in rows]

    async def get(self, message_id: int) -> SmsMessage | None:
        row = await self._db.fetchone(f"SELECT {_COLUMNS} FROM sms_outbox WHERE id = ?", (message_id,))
        return None if row is None else _message(row)
