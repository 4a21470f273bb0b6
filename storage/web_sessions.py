"""Storage layer: the console's and the agency page's sessions, in the database every host shares.

The browser's cookie holds a random token; the row holds only its SHA-256, the
user, the role, its CSRF secret and three times: opened, last seen and the
absolute end. A session is live while it is younger than its lifetime and was
seen within the idle timeout, on whichever host; ending a user's sessions
deletes their rows, so every host refuses the cookies at the next request.
Checking a request is one read by the unique token index (plus, at most once a
``TOUCH_S``, the write of its last-seen time).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from storage.engines import Executor

# The last-seen time is written at most this often per session: the idle timeout is that much coarse.
TOUCH_S = 60.0
# A user who never logs out keeps the newest this many sessions.
MAX_PER_USER = 20
# Expired rows removed by each new session: more than it adds, so the table holds the live ones.
PURGE_BATCH = 200


@dataclass(frozen=True, slots=True)
class WebSession:
    """A live session: who, as which role, and the secret its state-changing requests must carry."""

    role: str
    login_id: str
    csrf: str
    token_hash: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class WebSessions:
    """Sessions by the hash of their cookie's token; times are wall time (every host's clock)."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def open(self, role: str, login_id: str, *, now: float, lifetime_s: float, idle_s: float
                   ) -> tuple[str, WebSession]:
        """A new session: the cookie's token (not stored) and the session."""
        token = secrets.token_urlsafe(32)
        session = WebSession(role, login_id, secrets.token_urlsafe(32), token_hash(token))
        async with self._db.transaction() as tx:
            await tx.insert(
                "INSERT INTO web_sessions (token_hash, role, login_id, csrf, created_at, last_seen_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (session.token_hash, role, login_id, session.csrf, now, now, now + lifetime_s))
            await tx.execute(
                "DELETE FROM web_sessions WHERE role = ? AND login_id = ? AND id NOT IN"
                " (SELECT id FROM web_sessions WHERE role = ? AND login_id = ? ORDER BY id DESC LIMIT ?)",
                (role, login_id, role, login_id, MAX_PER_USER))
            await _purge(tx, now, idle_s)
        return token, session

    async def find(self, token: str, *, now: float, idle_s: float) -> WebSession | None:
        """The live session of a cookie's token, else None; notes that it was seen."""
        hashed = token_hash(token)
        row = await self._db.fetchone(
            "SELECT role, login_id, csrf, last_seen_at FROM web_sessions"
            " WHERE token_hash = ? AND expires_at > ? AND last_seen_at > ?", (hashed, now, now - idle_s))
        if row is None:
            return None
        if now - row["last_seen_at"] >= TOUCH_S:
            await self._db.execute("UPDATE web_sessions SET last_seen_at = ? WHERE token_hash = ?"
                                   " AND last_seen_at < ?", (now, hashed, now))
        return WebSession(row["role"], row["login_id"], row["csrf"], hashed)

    async def end(self, session: WebSession) -> None:
        await self._db.execute("DELETE FROM web_sessions WHERE token_hash = ?", (session.token_hash,))

    async def end_all(self, role: str, login_id: str) -> int:
        """End every session of this user, on every host; how many there were."""
        return await self._db.execute("DELETE FROM web_sessions WHERE role = ? AND login_id = ?", (role, login_id))

    async def purge(self, now: float, idle_s: float) -> int:
        """Remove up to PURGE_BATCH ended sessions; how many went."""
        return await _purge(self._db, now, idle_s)


async def _purge(db: Executor, now: float, idle_s: float) -> int:
    return await db.execute(
        "DELETE FROM web_sessions WHERE id IN (SELECT id FROM web_sessions"
        " WHERE expires_at <= ? OR last_seen_at <= ? LIMIT ?)", (now, now - idle_s, PURGE_BATCH))
