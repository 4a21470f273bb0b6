"""Backups of the embedded store while the softswitch runs, and their restore into a fresh data directory.

A backup is a folder: ``softswitch.db`` made with SQLite's online backup (a
consistent copy while the service goes on writing), the files the store points to
(recordings, agencies' answer audio; each checked against its sha256), and ``manifest.json`` (when, how
many cases and recordings, and the national-ID key ids the copy needs). The
key file itself is never in a backup: it is the one secret that makes the
copy readable, kept apart (README, "Backups").

Restore refuses to overwrite: the data directory must hold no store yet. It
checks the copy's integrity, copies the recordings back (sha256 again), and
refuses a key file that lacks a key id the copy needs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from storage.errors import StoreError
from storage.shared_recordings import SharedLayout, is_under

DATABASE = "softswitch.db"
MANIFEST = "manifest.json"
FILES = "files"
_KEY_ID_COLUMNS = ("national_id_key_id", "caller_id_key_id")


class BackupError(StoreError):
    """A backup or a restore that cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class BackupSummary:
    directory: Path
    cases: int
    files: int
    key_ids: tuple[str, ...]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _evidence(db: sqlite3.Connection) -> list[tuple[str, str]]:
    """(path, sha256) of every file the store points to: the recordings and the agencies' answer audio."""
    files = [(str(path), str(sha or "")) for path, sha in db.execute("SELECT path, sha256 FROM recordings ORDER BY id")]
    files += [(str(path), str(sha or "")) for path, sha in db.execute(
        "SELECT answer_audio, answer_audio_sha256 FROM cases WHERE answer_audio IS NOT NULL ORDER BY id")]
    return files


def _key_ids(db: sqlite3.Connection) -> tuple[str, ...]:
    ids: set[str] = set()
    for column in _KEY_ID_COLUMNS:
        ids.update(str(row[0]) for row in db.execute(f"SELECT DISTINCT {column} FROM cases WHERE {column} IS NOT NULL"))
    return tuple(sorted(ids))


def _under(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        raise BackupError(f"{path} is not under the data directory {root}: back it up by hand") from None


def backup(database: Path, data_dir: Path, target: Path, *, shared: SharedLayout | None = None) -> BackupSummary:
    """Copy the store (online, consistent) and the files it points to into the new folder ``target``.

    With ``shared``, a recording in the shared directory is kept in the backup as if it were still
    local, so that a restore puts it back into the recordings directory, whence the shared store
    takes it again; one copied there after the store was copied is taken from there.
    """
    if not database.exists():
        raise BackupError(f"no store at {database}")
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target} is not empty: a backup goes into a new folder")
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    copy = target / DATABASE
    source = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        with closing(sqlite3.connect(copy)) as out:
            source.backup(out)  # pages copied under SQLite's own locking: writers go on meanwhile
    finally:
        source.close()
    copy.chmod(0o600)
    with closing(sqlite3.connect(copy)) as db:
        cases = int(db.execute("SELECT count(*) FROM cases").fetchone()[0])
        evidence = _evidence(db)
        key_ids = _key_ids(db)
    files = []
    for path_text, sha in evidence:
        path = Path(path_text)
        if shared is not None and is_under(path, shared.recordings_dir) and not path.exists():
            path = shared.copy_of(path)  # moved to the shared directory since the store was copied
        # Evidence is copied whole and checked; a file the store knows but the disk lacks is an error.
        if not path.exists():
            raise BackupError(f"{path} is in the store but not on disk")
        if shared is not None and is_under(path, shared.shared_dir):
            relative = _under(shared.local_of(path), data_dir)
        else:
            relative = _under(path, data_dir)
        kept = target / FILES / relative
        kept.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(path, kept)
        if sha and _sha256(kept) != sha:
            raise BackupError(f"{path} does not match its sha256 (changed while copied?)")
        files.append({"path": path_text, "relative": relative, "sha256": sha})
    manifest = {"made_at": time.time(), "cases": cases, "key_ids": list(key_ids), "files": files}
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return BackupSummary(target, cases, len(files), key_ids)


def restore(source: Path, database: Path, data_dir: Path, key_ids_available: set[str]) -> BackupSummary:
    """Put the backup ``source`` back as ``database`` and its files under ``data_dir``; no store may be there."""
    try:
        manifest = json.loads((source / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupError(f"{source} is not a backup ({MANIFEST}: {exc})") from None
    if database.exists():
        raise BackupError(f"{database} exists: restore into a fresh data directory (or move the store aside)")
    missing = sorted(set(manifest["key_ids"]) - key_ids_available)
    if missing:
        raise BackupError(f"the key file lacks key id(s) {', '.join(missing)} that this backup needs")
    with closing(sqlite3.connect(f"file:{source / DATABASE}?mode=ro", uri=True)) as db:
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise BackupError(f"{source / DATABASE} is damaged")
    database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    moved = []
    for entry in manifest["files"]:
        back = data_dir / entry["relative"]
        back.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(source / FILES / entry["relative"], back)
        if entry["sha256"] and _sha256(back) != entry["sha256"]:
            raise BackupError(f"{entry['relative']} in the backup does not match its sha256")
        if str(back) != entry["path"]:
            moved.append((str(back), entry["path"]))
    restored = database.with_name(database.name + ".restoring")
    shutil.copyfile(source / DATABASE, restored)
    # The files' new places, if the data directory moved. Closed before the rename: the
    # last connection's close folds its WAL back into the file.
    with closing(sqlite3.connect(restored)) as db:
        with db:
            db.executemany("UPDATE recordings SET path = ? WHERE path = ?", moved)
            db.executemany("UPDATE cases SET answer_audio = ? WHERE answer_audio = ?", moved)
    restored.chmod(0o600)
    restored.rename(database)
    return BackupSummary(database.parent, int(manifest["cases"]), len(manifest["files"]), tuple(manifest["key_ids"]))
