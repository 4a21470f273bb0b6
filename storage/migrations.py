"""Storage layer: numbered schema migrations for SQLite and PostgreSQL, the same steps for both.

SQLite tracks the version in PRAGMA user_version, PostgreSQL in the one-row
table schema_version; either way it commits with the step it counts.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass

from storage.engines import Engine, Transaction
from storage.errors import StoreError


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step; ``version`` is the schema version the database has after it."""

    version: int
    description: str
    statements: tuple[str, ...]


# Append only: a released migration is never edited, because databases in the
# field have already applied it. PostgreSQL runs the same steps (POSTGRESQL_MIGRATIONS).
MIGRATIONS: list[Migration] = [
    Migration(
        version=1,
        description="calls, cases and recordings",
        statements=(
            """
            CREATE TABLE calls (
                id          INTEGER PRIMARY KEY,
                sip_call_id TEXT    NOT NULL,
                from_uri    TEXT    NOT NULL,
                to_uri      TEXT    NOT NULL,
                source      TEXT    NOT NULL,
                worker_id   INTEGER,
                arrived_at  REAL    NOT NULL,
                answered_at REAL,
                ended_at    REAL,
                disposition TEXT,
                ivr_path    TEXT    NOT NULL DEFAULT '[]'
            )
            """,
            # Not unique: a UAC may reuse a Call-ID, and the CDR must keep both calls.
            "CREATE INDEX calls_sip_call_id ON calls (sip_call_id)",
            "CREATE INDEX calls_unfinished ON calls (id) WHERE ended_at IS NULL",
            """
            CREATE TABLE cases (
                id                 INTEGER PRIMARY KEY,
                tracking_code      TEXT    NOT NULL UNIQUE,
                status             TEXT    NOT NULL,
                created_at         REAL    NOT NULL,
                updated_at         REAL    NOT NULL,
                call_id            INTEGER REFERENCES calls (id),
                national_id_enc    BLOB,
                national_id_key_id TEXT,
                national_id_hmac   TEXT,
                national_id_masked TEXT,
                id_source          TEXT    NOT NULL
                    CHECK (id_source IN ('keypad', 'speech', 'none')),
                -- 'speech' without an ID is legal: the utterance recording
                -- can still be transcribed by an operator.
                CHECK (
                    (id_source <> 'none' OR national_id_enc IS NULL)
                    AND (national_id_enc IS NULL) = (national_id_key_id IS NULL)
                    AND (national_id_enc IS NULL) = (national_id_hmac IS NULL)
                    AND (national_id_enc IS NULL) = (national_id_masked IS NULL)
                )
            )
            """,
            # Unique so that a retried IVR step cannot give one call two tracking codes.
            "CREATE UNIQUE INDEX cases_call_id ON cases (call_id)",
            "CREATE INDEX cases_national_id_hmac ON cases (national_id_hmac)",
            """
            CREATE TABLE recordings (
                id         INTEGER PRIMARY KEY,
                call_id    INTEGER NOT NULL REFERENCES calls (id),
                case_id    INTEGER REFERENCES cases (id),
                kind       TEXT    NOT NULL,
                path       TEXT    NOT NULL,
                duration_s REAL    NOT NULL,
                sha256     TEXT    NOT NULL,
                complete   INTEGER NOT NULL CHECK (complete IN (0, 1)),
                created_at REAL    NOT NULL
            )
            """,
            "CREATE INDEX recordings_call_id ON recordings (call_id)",
            "CREATE INDEX recordings_case_id ON recordings (case_id)",
        ),
    ),
    Migration(
        version=2,
        description="the subject's ID status and the caller's own ID when they call for someone else",
        statements=(
            # national_id_* stay the ID the case is filed under: the subject's.
            "ALTER TABLE cases ADD COLUMN id_status TEXT NOT NULL DEFAULT 'none'"
            " CHECK (id_status IN ('verified', 'unverified', 'to_transcribe', 'none'))",
            "ALTER TABLE cases ADD COLUMN subject_is_caller INTEGER NOT NULL DEFAULT 1"
            " CHECK (subject_is_caller IN (0, 1))",
            "ALTER TABLE cases ADD COLUMN caller_id_enc BLOB",
            "ALTER TABLE cases ADD COLUMN caller_id_key_id TEXT",
            "ALTER TABLE cases ADD COLUMN caller_id_hmac TEXT",
            "ALTER TABLE cases ADD COLUMN caller_id_masked TEXT",
            "ALTER TABLE cases ADD COLUMN caller_id_source TEXT"
            " CHECK (caller_id_source IS NULL OR caller_id_source IN ('keypad', 'speech', 'none'))",
            "ALTER TABLE cases ADD COLUMN caller_id_status TEXT"
            " CHECK (caller_id_status IS NULL"
            " OR caller_id_status IN ('verified', 'unverified', 'to_transcribe', 'none'))",
            "CREATE INDEX cases_caller_id_hmac ON cases (caller_id_hmac)",
        ),
    ),
    Migration(
        version=3,
        description="live mode: what the agent filed, who handled a call, and each case's history",
        statements=(
            "ALTER TABLE cases ADD COLUMN agency TEXT",
            "ALTER TABLE cases ADD COLUMN category TEXT",
            "ALTER TABLE cases ADD COLUMN summary TEXT",
            "ALTER TABLE cases ADD COLUMN channel TEXT NOT NULL DEFAULT 'phone'",
            "ALTER TABLE cases ADD COLUMN filed_by TEXT",
            "ALTER TABLE calls ADD COLUMN agent_id TEXT",
            """
            CREATE TABLE case_events (
                id      INTEGER PRIMARY KEY,
                case_id INTEGER NOT NULL REFERENCES cases (id),
                at      REAL    NOT NULL,
                actor   TEXT    NOT NULL,
                kind    TEXT    NOT NULL,
                detail  TEXT    NOT NULL DEFAULT '{}'
            )
            """,
            "CREATE INDEX case_events_case_id ON case_events (case_id)",
        ),
    ),
    Migration(
        version=4,
        description="agencies' answers, and indexes for duplicate lookups, listings and reports",
        statements=(
            "ALTER TABLE cases ADD COLUMN answer_text TEXT",
            "ALTER TABLE cases ADD COLUMN answer_audio TEXT",
            "ALTER TABLE cases ADD COLUMN answer_audio_sha256 TEXT",
            "ALTER TABLE cases ADD COLUMN answered_at REAL",
            "ALTER TABLE cases ADD COLUMN answered_by TEXT",
            # Partial: a closed case is never a duplicate, and most cases end closed. The
            # duplicate query repeats "status <> 'closed'" word for word so SQLite can use it.
            "CREATE INDEX cases_open_by_subject ON cases (national_id_hmac, agency, category, created_at)"
            " WHERE status <> 'closed'",
            "CREATE INDEX cases_agency_created_at ON cases (agency, created_at)",
            "CREATE INDEX cases_created_at ON cases (created_at)",
            "CREATE INDEX calls_arrived_at ON calls (arrived_at)",
        ),
    ),
    Migration(
        version=5,
        description="state shared by hosts and kept across restarts: web sessions, throttles, the ACD's day",
        statements=(
            # The cookie's random token is stored only as its SHA-256: a copy of the database opens no session.
            """
            CREATE TABLE web_sessions (
                id           INTEGER PRIMARY KEY,
                token_hash   TEXT    NOT NULL UNIQUE,
                role         TEXT    NOT NULL,
                login_id     TEXT    NOT NULL,
                csrf         TEXT    NOT NULL,
                created_at   REAL    NOT NULL,
                last_seen_at REAL    NOT NULL,
                expires_at   REAL    NOT NULL
            )
            """,
            "CREATE INDEX web_sessions_user ON web_sessions (role, login_id)",
            "CREATE INDEX web_sessions_expires_at ON web_sessions (expires_at)",
            "CREATE INDEX web_sessions_last_seen_at ON web_sessions (last_seen_at)",
            # One row per counted failure, under the SHA-256 of its key (a login id may be a mistyped
            # password), alive until its window has passed.
            """
            CREATE TABLE throttle_hits (
                id         INTEGER PRIMARY KEY,
                key_hash   TEXT    NOT NULL,
                expires_at REAL    NOT NULL
            )
            """,
            "CREATE INDEX throttle_hits_key_hash ON throttle_hits (key_hash, expires_at)",
            "CREATE INDEX throttle_hits_expires_at ON throttle_hits (expires_at)",
            # What each host's ACD counted, as it counted it: replayed at start to rebuild the day.
            """
            CREATE TABLE acd_day_events (
                id       INTEGER PRIMARY KEY,
                host     TEXT    NOT NULL,
                at       REAL    NOT NULL,
                kind     TEXT    NOT NULL
                    CHECK (kind IN ('offered', 'answered', 'left', 'handled', 'recorded')),
                agent_id TEXT,
                seconds  REAL,
                reason   TEXT
            )
            """,
            "CREATE INDEX acd_day_events_host_at ON acd_day_events (host, at)",
            "CREATE INDEX acd_day_events_at ON acd_day_events (at)",
        ),
    ),
    Migration(
        version=6,
        description="the post-call survey: one rating per call",
        statements=(
            # A rating holds no personal data and outlives the CDR and case it names: retention
            # deleting either only clears the link (SET NULL), so reports of past days stay whole.
            # `day` is the hotline's local date of `at` (YYYY-MM-DD), so both engines group by it alike.
            """
            CREATE TABLE ratings (
                id       INTEGER PRIMARY KEY,
                call_id  INTEGER REFERENCES calls (id) ON DELETE SET NULL,
                case_id  INTEGER REFERENCES cases (id) ON DELETE SET NULL,
                kind     TEXT    NOT NULL CHECK (kind IN ('agent', 'follow_up')),
                agent_id TEXT,
                agency   TEXT,
                score    INTEGER NOT NULL CHECK (score BETWEEN 1 AND 5),
                at       REAL    NOT NULL,
                day      TEXT    NOT NULL
            )
            """,
            # Unique: a retried survey step cannot rate one call twice.
            "CREATE UNIQUE INDEX ratings_call_id ON ratings (call_id)",
            "CREATE INDEX ratings_day ON ratings (day, agent_id)",
        ),
    ),
    Migration(
        version=7,
        description="the SMS outbox: tracking codes and answer-ready notices to callers, with their delivery",
        statements=(
            # recipient is the caller's number (E.164): personal data, deleted with its case by retention.
            # While a message is sending, next_attempt_at is when its lease ends: a host that stopped
            # mid-send leaves it to be taken again then (its attempt counted).
            """
            CREATE TABLE sms_outbox (
                id              INTEGER PRIMARY KEY,
                case_id         INTEGER NOT NULL REFERENCES cases (id),
                kind            TEXT    NOT NULL CHECK (kind IN ('tracking_code', 'answer_ready')),
                recipient       TEXT    NOT NULL,
                text            TEXT    NOT NULL,
                status          TEXT    NOT NULL
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'gave_up')),
                attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
                last_error      TEXT,
                next_attempt_at REAL    NOT NULL,
                created_at      REAL    NOT NULL,
                updated_at      REAL    NOT NULL,
                sent_at         REAL
            )
            """,
            "CREATE INDEX sms_outbox_case_id ON sms_outbox (case_id)",
            # One "your answer is ready" per case, however often its answer is replaced, on every host.
            "CREATE UNIQUE INDEX sms_outbox_answer_ready ON sms_outbox (case_id) WHERE kind = 'answer_ready'",
            # Partial: sent and failed messages pile up, the due ones stay few. The claim repeats
            # "status IN ('pending', 'sending')" word for word so SQLite can use it.
            "CREATE INDEX sms_outbox_due ON sms_outbox (next_attempt_at) WHERE status IN ('pending', 'sending')",
        ),
    ),
    Migration(
        version=8,
        description="the SIP front's registrations (Kamailio usrloc), shared by the fronts of every host",
        statements=(
            # Kamailio 5.6's own `location` table (usrloc-create.sql, table version 9: the front
            # runs with version_table 0 because this list, not Kamailio's `version` table, owns
            # the schema), with expires and last_modified as Unix seconds (usrloc expires_type 1)
            # so that no front's or server's time zone enters a comparison. Used only when
            # database_url is PostgreSQL; on SQLite it stays empty, the front keeping its
            # registrations in memory.
            """
            CREATE TABLE location (
                id            INTEGER PRIMARY KEY,
                ruid          VARCHAR(64)  NOT NULL DEFAULT '' UNIQUE,
                username      VARCHAR(64)  NOT NULL DEFAULT '',
                domain        VARCHAR(64)  DEFAULT NULL,
                contact       VARCHAR(512) NOT NULL DEFAULT '',
                received      VARCHAR(128) DEFAULT NULL,
                path          VARCHAR(512) DEFAULT NULL,
                expires       BIGINT       NOT NULL DEFAULT 0,
                q             REAL         NOT NULL DEFAULT 1.0,
                callid        VARCHAR(255) NOT NULL DEFAULT 'Default-Call-ID',
                cseq          INTEGER      NOT NULL DEFAULT 1,
                last_modified BIGINT       NOT NULL DEFAULT 0,
                flags         INTEGER      NOT NULL DEFAULT 0,
                cflags        INTEGER      NOT NULL DEFAULT 0,
                user_agent    VARCHAR(255) NOT NULL DEFAULT '',
                socket        VARCHAR(64)  DEFAULT NULL,
                methods       INTEGER      DEFAULT NULL,
                instance      VARCHAR(255) DEFAULT NULL,
                reg_id        INTEGER      NOT NULL DEFAULT 0,
                server_id     INTEGER      NOT NULL DEFAULT 0,
                connection_id INTEGER      NOT NULL DEFAULT 0,
                keepalive     INTEGER      NOT NULL DEFAULT 0,
                partition     INTEGER      NOT NULL DEFAULT 0
            )
            """,
            "CREATE INDEX location_account_contact_idx ON location (username, domain, contact)",
            "CREATE INDEX location_expires_idx ON location (expires)",
            "CREATE INDEX location_connection_idx ON location (server_id, connection_id)",
        ),
    ),
    Migration(
        version=9,
        description="several hosts on one store: their heartbeats, each call's host, a message being recorded",
        statements=(
            # One row a host, by its name (cluster.name). last_seen is the database's clock, so hosts' clocks
            # never decide who is dead; taken_over_by is the survivor that closed its calls, left_at when it
            # stopped cleanly (both NULL while it runs). recordings_dir and shared_folder say where its
            # recordings lie (its disk) and their shared copies.
            """
            CREATE TABLE hosts (
                name           TEXT PRIMARY KEY,
                started_at     REAL NOT NULL,
                last_seen      REAL NOT NULL,
                recordings_dir TEXT NOT NULL,
                shared_folder  TEXT,
                taken_over_by  TEXT,
                taken_over_at  REAL,
                left_at        REAL
            )
            """,
            # NULL for calls from before this step (a single host).
            "ALTER TABLE calls ADD COLUMN host TEXT",
            # Written once, when the message's tape starts: a host may die with the tape on its disk, and the
            # survivor must still know that this call was leaving a message.
            "ALTER TABLE calls ADD COLUMN message_started_at REAL",
            "CREATE INDEX calls_unfinished_by_host ON calls (host) WHERE ended_at IS NULL",
        ),
    ),
    Migration(
        version=10,
        description="one queue for every host: the ACD's changes in their one order, and its snapshots",
        statements=(
            # A replicated ACD's changes (storage.acd_changes): name is an ACD method, args its JSON
            # arguments (a caller's number only masked). Appended under one lock, so ids are commit order.
            """
            CREATE TABLE acd_changes (
                id   INTEGER PRIMARY KEY,
                at   REAL NOT NULL,
                host TEXT NOT NULL,
                name TEXT NOT NULL,
                args TEXT NOT NULL
            )
            """,
            """
            CREATE TABLE acd_snapshots (
                id        INTEGER PRIMARY KEY,
                change_id INTEGER NOT NULL,
                at        REAL NOT NULL,
                state     TEXT NOT NULL
            )
            """,
        ),
    ),
    Migration(
        version=11,
        description="where each host's web server is: an agent's console relays to the host of their call",
        statements=(
            # NULL for a host of before this step: nothing is relayed to it.
            "ALTER TABLE hosts ADD COLUMN console_url TEXT",
        ),
    ),
    Migration(
        version=12,
        description="callbacks callers asked for instead of waiting (storage.callbacks)",
        statements=(
            # The IDs encrypted as a case's are; number is the caller's, never logged.
            """
            CREATE TABLE callbacks (
                id                INTEGER PRIMARY KEY,
                number            TEXT    NOT NULL,
                status            TEXT    NOT NULL,
                host              TEXT    NOT NULL,
                call_id           INTEGER REFERENCES calls (id),
                created_at        REAL    NOT NULL,
                updated_at        REAL    NOT NULL,
                next_at           REAL    NOT NULL,
                attempts          INTEGER NOT NULL DEFAULT 0,
                priority          INTEGER NOT NULL DEFAULT 0,
                skills            TEXT    NOT NULL DEFAULT '[]',
                language          TEXT,
                topic             TEXT,
                caller_id_enc     BLOB,
                caller_id_key_id  TEXT,
                caller_id_source  TEXT,
                caller_id_status  TEXT,
                subject_id_enc    BLOB,
                subject_id_key_id TEXT,
                subject_id_source TEXT,
                subject_id_status TEXT,
                outcome           TEXT,
                case_id           INTEGER REFERENCES cases (id)
            )
            """,
            # One callback not over per number, whichever host booked it.
            "CREATE UNIQUE INDEX callbacks_one_per_number ON callbacks (number)"
            " WHERE status IN ('pending', 'calling', 'connected')",
            "CREATE INDEX callbacks_open ON callbacks (host, id) WHERE status IN ('pending', 'calling', 'connected')",
        ),
    ),
]


# PostgreSQL runs the same steps, in its own types. These rules are part of every
# released step: change none of them, add a rule only for what a new step needs.
_POSTGRES_TYPES = (
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER(\s+NOT NULL)?\s+REFERENCES\b"), r"BIGINT\1 REFERENCES"),  # ids are BIGINT
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
)


def _for_postgres(statement: str) -> str:
    for pattern, replacement in _POSTGRES_TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


# Flags stay INTEGER 0/1, so that one SQL serves both engines.
POSTGRESQL_MIGRATIONS: list[Migration] = [
    Migration(m.version, m.description, tuple(_for_postgres(statement) for statement in m.statements))
    for m in MIGRATIONS
]

# Held by the migrating transaction on PostgreSQL, so that hosts starting together apply each step once.
# (On SQLite BEGIN IMMEDIATE does the same.)
_MIGRATION_LOCK = "softswitch-111 schema migration"


async def _schema_version(tx: Transaction) -> int:
    if tx.dialect == "sqlite":
        row = await tx.fetchone("PRAGMA user_version")
    else:
        await tx.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                         " only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row), version INTEGER NOT NULL)")
        row = await tx.fetchone("SELECT version FROM schema_version")
    return 0 if row is None else int(row[0])


async def _set_schema_version(tx: Transaction, version: int) -> None:
    if tx.dialect == "sqlite":
        # PRAGMA user_version is transactional, so it commits with the step.
        await tx.execute(f"PRAGMA user_version = {version:d}")
    else:
        await tx.execute("INSERT INTO schema_version (version) VALUES (?)"
                         " ON CONFLICT (only_row) DO UPDATE SET version = excluded.version", (version,))


def migrations_for(dialect: str) -> Sequence[Migration]:
    return MIGRATIONS if dialect == "sqlite" else POSTGRESQL_MIGRATIONS


async def migrate(engine: Engine) -> int:
    """Apply the missing migrations, one transaction each; return the schema version."""
    steps = migrations_for(engine.dialect)
    latest = len(steps)
    # Each round applies one step or returns: the version only grows.
    for _ in range(latest + 1):
        async with engine.transaction() as tx:
            await tx.lock(_MIGRATION_LOCK)
            version = await _schema_version(tx)
            if version > latest:
                raise StoreError(f"database schema version {version} is newer than this code ({latest})")
            if version == latest:
                return version
            step = steps[version]
            for statement in step.statements:
                await tx.execute(statement)
            await _set_schema_version(tx, step.version)
    raise StoreError(f"the schema did not reach version {latest}")
